"""The broker's configuration file: which clouds are enabled, and how to launch on each.

TOML at ``BROKER_CONFIG`` or ``$XDG_CONFIG_HOME/burst-broker/config.toml``
(``~/.config/burst-broker/config.toml``). Credentials never go here: each cloud's own chain
provides them (boto3: environment, profile, SSO, instance role).

    [broker]
    providers = ["aws"]                 # enabled clouds; the simulated cloud is never listed

    [aws]
    regions = ["us-east-1", "us-west-2"]
    image_ssm_parameter = "/aws/service/..."   # or per-region AMIs under [aws.images]
    key_name = "ml-key"                 # optional
    security_group_ids = ["sg-0123"]    # optional (default: the VPC's default group)
    placement_group = true              # cluster placement group for multi-node gangs
    [aws.images]
    us-east-1 = "ami-0123456789abcdef0"
    [aws.subnets]                       # optional, per AZ id or name (default: default VPC)
    use1-az4 = "subnet-0123"
    [aws.tags]                          # added to every resource
    team = "ml"

    [gcp]                               # credentials: Application Default Credentials only
    project = "my-project"
    regions = ["us-central1"]
    image = "projects/deeplearning-platform-release/global/images/family/..."

    [azure]                             # credentials: DefaultAzureCredential only
    subscription_id = "00000000-0000-0000-0000-000000000000"
    resource_group = "ml-burst"
    regions = ["eastus"]

Each cloud section may name an ``endpoint`` (an emulator's URL); the adapters use it instead
of the cloud's own API host. Tests and the README's try-outs point it at 127.0.0.1.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from providers.errors import ConfigError

KNOWN_PROVIDERS = ("aws", "gcp", "azure")


class AwsConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    regions: tuple[str, ...] = Field(min_length=1)
    images: dict[str, str] = Field(default_factory=dict)  # region -> AMI id
    image_ssm_parameter: str | None = None  # used where no AMI is given for the region
    subnets: dict[str, str] = Field(default_factory=dict)  # AZ id or name -> subnet id
    security_group_ids: tuple[str, ...] = ()
    key_name: str | None = None
    placement_group: bool = True
    tags: dict[str, str] = Field(default_factory=dict)


class GcpConfig(BaseModel):
    """``[gcp]``: Compute Engine. Credentials come from Application Default Credentials."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    project: str = Field(min_length=1)
    regions: tuple[str, ...] = Field(min_length=1)
    zones: tuple[str, ...] = ()  # restrict launches to these zones (default: every zone)
    image: str = Field(min_length=1)  # image or image-family URL for the boot disk
    boot_disk_gb: int = Field(default=200, ge=10)
    network: str = "global/networks/default"
    subnetworks: dict[str, str] = Field(default_factory=dict)  # region -> subnetwork URL
    service_account: str | None = None  # e-mail of the VMs' service account
    compact_placement: bool = True  # compact placement policy for multi-node gangs
    labels: dict[str, str] = Field(default_factory=dict)  # added to every resource
    endpoint: str | None = None  # Compute API root override (an emulator), full http(s) URL
    billing_endpoint: str | None = None  # Cloud Billing Catalog API override


class AzureConfig(BaseModel):
    """``[azure]``: Azure Resource Manager. Credentials come from DefaultAzureCredential."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    subscription_id: str = Field(min_length=1)
    resource_group: str = Field(min_length=1)
    regions: tuple[str, ...] = Field(min_length=1)
    image: str = "Canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2:latest"  # URN or id
    subnets: dict[str, str] = Field(default_factory=dict)  # region -> subnet resource id
    admin_username: str = "azureuser"
    ssh_public_key: str | None = None  # the public key text (never a private key)
    os_disk_gb: int = Field(default=200, ge=30)
    proximity_placement_group: bool = True  # for multi-node gangs
    tags: dict[str, str] = Field(default_factory=dict)  # added to every resource
    endpoint: str | None = None  # ARM root override (an emulator), https URL
    ca_bundle: str | None = None  # CA certificate file that verifies ``endpoint``
    prices_endpoint: str | None = None  # Retail Prices API override


class BrokerSection(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    providers: tuple[str, ...] = ()


class BrokerConfig(BaseModel):
    """The whole file; unknown sections and keys are refused, naming the key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    broker: BrokerSection = Field(default_factory=BrokerSection)
    aws: AwsConfig | None = None
    gcp: GcpConfig | None = None
    azure: AzureConfig | None = None
    path: str | None = None  # where it was read from (not a key of the file)

    def enabled(self, provider: str) -> bool:
        return provider in self.broker.providers

    def regions(self, provider: str) -> frozenset[str] | None:
        """The regions an enabled cloud is configured for (None: not enabled)."""
        if not self.enabled(provider):
            return None
        section = getattr(self, provider, None)
        return frozenset(section.regions) if section is not None else None


def default_config_path() -> Path:
    env = os.environ.get("BROKER_CONFIG")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "burst-broker" / "config.toml"


def load_config(path: str | os.PathLike[str] | None = None) -> BrokerConfig:
    """Read the configuration; a missing default file means "nothing enabled"."""
    explicit = path is not None or "BROKER_CONFIG" in os.environ
    where = Path(path) if path is not None else default_config_path()
    if not where.exists():
        if explicit:
            raise ConfigError(f"configuration file {where} does not exist")
        return BrokerConfig(path=None)
    try:
        data = tomllib.loads(where.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {where}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: invalid TOML: {exc}") from exc
    try:
        config = BrokerConfig.model_validate({**data, "path": str(where)})
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{where}: {key}: {first['msg']}") from exc
    for name in config.broker.providers:
        if name not in KNOWN_PROVIDERS:
            raise ConfigError(
                f"{where}: broker.providers: unknown provider {name!r} "
                f"(known: {', '.join(KNOWN_PROVIDERS)})"
            )
        if getattr(config, name) is None:
            raise ConfigError(f"{where}: {name} is enabled but there is no [{name}] section")
    return config

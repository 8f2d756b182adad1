"""The broker's configuration file: which clouds are enabled, and how to launch on each.

TOML; where it is (``BROKER_CONFIG``, else ``$XDG_CONFIG_HOME/burst-broker/config.toml``) is
the caller's business (``broker.settings``): :func:`load_config` takes the path. Credentials
never go here: each cloud's own chain provides them (boto3: environment, profile, SSO,
instance role).

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

    [node]                              # how experiments run on the nodes (optional)
    image = "nvcr.io/nvidia/pytorch:24.05-py3"  # default container for the command

    [service]                           # `broker serve` (optional)
    public_url = "https://broker.example.com"   # where cloud nodes reach the service

    [gcp]                               # credentials: Application Default Credentials only
    project = "my-project"
    regions = ["us-central1"]
    image = "projects/deeplearning-platform-release/global/images/family/..."

    [azure]                             # credentials: DefaultAzureCredential only
    subscription_id = "00000000-0000-0000-0000-000000000000"
    resource_group = "ml-burst"
    regions = ["eastus"]

The cloud sections are the :data:`providers.clouds.CLOUDS` table's: each cloud's section
model lives in ``providers/<cloud>/config.py``. Values are strictly typed: a string where a
boolean, a number or an array belongs is refused, never coerced; the error names the file
and the key. Each cloud section may name an ``endpoint`` (an emulator's URL); the adapters
use it instead of the cloud's own API host. Tests and the README's try-outs point it at
127.0.0.1.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from providers.clouds import CLOUDS, KNOWN_PROVIDERS
from providers.errors import ConfigError
from providers.spec import CloudSection, StrTuple

C = TypeVar("C", bound=CloudSection)

# pydantic's error types -> what a TOML author should write instead
_EXPECTED = {
    "tuple_type": "must be an array",
    "list_type": "must be an array",
    "bool_type": "must be true or false",
    "int_type": "must be an integer",
    "string_type": "must be a string",
    "dict_type": "must be a table",
    "model_type": "must be a table",
    "extra_forbidden": "unknown key",
    "missing": "missing (required)",
}
_TOML_TYPES = {
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a float",
    list: "an array",
    dict: "a table",
}


class BrokerSection(BaseModel):
    """``[broker]``."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    providers: StrTuple = ()


class NodeSection(BaseModel):
    """``[node]``: how an experiment's command runs on its nodes. ``image``: the container
    a command runs in when its request names none (unset: on the host)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    image: str | None = None

    @field_validator("image")
    @classmethod
    def _image(cls, value: str | None) -> str | None:
        from providers.images import image_problem

        problem = None if value is None else image_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value


class ServiceSection(BaseModel):
    """``[service]``: ``public_url`` is where nodes on a real cloud reach ``broker serve``
    (its agents call out to it); without it no command runs on a real cloud."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    public_url: str | None = None

    @field_validator("public_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        problem = None if value is None else url_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return None if value is None else value.rstrip("/")


def url_problem(url: str) -> str | None:
    """Why ``url`` is not a base URL nodes can call (http or https, a host, no query), or
    None."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        _ = parts.port  # a port that is not a number raises
    except ValueError as exc:
        return f"{url!r} is not a URL: {exc}"
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        return f"{url!r} must be an http:// or https:// URL with a host"
    if any(c.isspace() for c in url) or not all(c.isalnum() or c in ".-:[]" for c in host):
        return f"{url!r} has a character no URL host or path may hold"
    if parts.query or parts.fragment or parts.username or parts.password:
        return f"{url!r} must not carry a query, a fragment or credentials"
    return None


class ArtifactsSection(BaseModel):
    """``[artifacts]``: where experiments' artifacts and datasets live. ``url``:
    ``file:///path`` (default: ``<state dir>/artifacts``), ``s3://bucket/prefix``,
    ``gs://bucket/prefix`` or ``az://account/container/prefix``; ``endpoint``: an emulator's
    URL instead of the cloud's (tests, try-outs); ``region``: the bucket's region (S3)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    url: str | None = None
    endpoint: str | None = None
    region: str | None = None

    @field_validator("url")
    @classmethod
    def _store_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from providers.storage.base import parse_store_url

        try:
            return parse_store_url(value).text
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        problem = None if value is None else url_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value


@dataclass(frozen=True)
class BrokerConfig:
    """The whole file: ``[broker]`` and the section of each cloud it holds (by name).

    ``path`` is where it was read from (None: no file, nothing enabled). Build one in code
    with :meth:`enabling`.
    """

    broker: BrokerSection = field(default_factory=BrokerSection)
    sections: Mapping[str, CloudSection] = field(default_factory=dict)
    path: str | None = None
    node: NodeSection = field(default_factory=NodeSection)
    service: ServiceSection = field(default_factory=ServiceSection)
    artifacts: ArtifactsSection = field(default_factory=ArtifactsSection)

    def __post_init__(self) -> None:
        for name, section in self.sections.items():
            if section.cloud != name:
                raise ConfigError(f"the [{name}] section holds a [{section.cloud}] model")
        for name in self.broker.providers:
            if name not in KNOWN_PROVIDERS:
                raise ConfigError(
                    f"unknown provider {name!r} (known: {', '.join(KNOWN_PROVIDERS)})"
                )
            if name not in self.sections:
                raise ConfigError(f"{name} is enabled but there is no [{name}] section")
        object.__setattr__(self, "sections", MappingProxyType(dict(self.sections)))

    @classmethod
    def enabling(cls, *sections: CloudSection, path: str | None = None) -> BrokerConfig:
        """A configuration that enables exactly these clouds, with these sections."""
        return cls(
            broker=BrokerSection(providers=tuple(s.cloud for s in sections)),
            sections={s.cloud: s for s in sections},
            path=path,
        )

    def enabled(self, provider: str) -> bool:
        return provider in self.broker.providers

    def section(self, provider: str) -> CloudSection | None:
        """The ``[provider]`` section, None if the file has none."""
        return self.sections.get(provider)

    def section_of(self, model: type[C]) -> C | None:
        """The section of ``model``'s cloud, typed: ``config.section_of(AwsConfig)``."""
        section = self.sections.get(model.cloud)
        if section is not None and not isinstance(section, model):
            raise TypeError(f"[{model.cloud}] holds a {type(section).__name__}")
        return section

    def regions(self, provider: str) -> frozenset[str] | None:
        """The regions an enabled cloud is configured for (None: not enabled)."""
        section = self.sections.get(provider) if self.enabled(provider) else None
        return frozenset(section.regions) if section is not None else None


def load_config(path: Path, *, required: bool) -> BrokerConfig:
    """Read the configuration file at ``path``. A missing file is a ConfigError when
    ``required`` (the user named it), else it means "nothing enabled". Every error is a
    ConfigError naming the file and the key."""
    if not path.exists():
        if required:
            raise ConfigError(f"configuration file {path} does not exist")
        return BrokerConfig()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    known = ("broker", "node", "service", "artifacts", *KNOWN_PROVIDERS)
    for key in data:
        if key not in known:
            raise ConfigError(
                f"{path}: {key}: unknown section (known: {', '.join(f'[{k}]' for k in known)})"
            )
    broker = _validate(path, "broker", BrokerSection, data.get("broker", {}))
    sections = {
        name: _validate(path, name, spec.section, data[name])
        for name, spec in CLOUDS.items()
        if name in data
    }
    node = _validate(path, "node", NodeSection, data.get("node", {}))
    service = _validate(path, "service", ServiceSection, data.get("service", {}))
    artifacts = _validate(path, "artifacts", ArtifactsSection, data.get("artifacts", {}))
    try:
        return BrokerConfig(
            broker=broker,
            sections=sections,
            path=str(path),
            node=node,
            service=service,
            artifacts=artifacts,
        )
    except ConfigError as exc:
        where = "broker.providers: " if "unknown provider" in str(exc) else ""
        raise ConfigError(f"{path}: {where}{exc}") from None


M = TypeVar("M", bound=BaseModel)


def _validate(path: Path, name: str, model: type[M], value: Any) -> M:
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in (name, *first["loc"]))
        raise ConfigError(f"{path}: {key}: {_explain(first)}") from None


def _explain(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    if kind == "value_error" and "error" in error.get("ctx", {}):
        return str(error["ctx"]["error"])
    if kind not in _EXPECTED or kind in ("extra_forbidden", "missing"):
        return _EXPECTED.get(kind) or str(error["msg"])
    got = _TOML_TYPES.get(type(error["input"]), type(error["input"]).__name__)
    return f"{_EXPECTED[kind]}, got {got}"


__all__ = [
    "ArtifactsSection",
    "BrokerConfig",
    "BrokerSection",
    "ConfigError",
    "NodeSection",
    "ServiceSection",
    "load_config",
    "url_problem",
]

"""The configuration file: enabled clouds, per-cloud launch settings, clear errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from broker.cli import main
from providers import config as config_module
from providers.aws.config import AwsConfig
from providers.azure.config import AzureConfig
from providers.clouds import CLOUDS, KNOWN_PROVIDERS
from providers.config import BrokerConfig, ConfigError, load_config
from providers.errors import ConfigError as RootConfigError
from providers.gcp.config import GcpConfig
from shapes.errors import BrokerError

AWS = """
[broker]
providers = ["aws"]

[aws]
regions = ["us-east-1", "us-west-2"]
image_ssm_parameter = "/aws/service/ami"
key_name = "ml"
security_group_ids = ["sg-1"]
[aws.images]
us-east-1 = "ami-0123456789abcdef0"
[aws.subnets]
use1-az4 = "subnet-1"
[aws.tags]
team = "ml"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_a_missing_file_that_is_not_required_enables_nothing(tmp_path: Path) -> None:
    config = load_config(tmp_path / "nope.toml", required=False)
    assert config.path is None and not any(config.enabled(name) for name in KNOWN_PROVIDERS)
    assert config.regions("aws") is None


def test_a_missing_required_file_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml does not exist"):
        load_config(tmp_path / "nope.toml", required=True)


def test_config_error_is_a_broker_error_not_a_value_error() -> None:
    assert ConfigError is RootConfigError  # re-exported from providers.config
    assert issubclass(ConfigError, BrokerError) and not issubclass(ConfigError, ValueError)


def test_providers_reads_no_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings live at the edge: BROKER_CONFIG means nothing to load_config."""
    monkeypatch.setenv("BROKER_CONFIG", str(write(tmp_path, AWS)))
    assert not load_config(tmp_path / "other.toml", required=False).enabled("aws")
    assert not hasattr(config_module, "default_config_path")
    for source in Path(config_module.__file__).parent.rglob("*.py"):
        assert "os.environ" not in source.read_text(), source


def test_aws_section(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, AWS), required=True)
    aws = config.section_of(AwsConfig)
    assert config.enabled("aws") and aws is not None and config.section("aws") is aws
    assert aws.regions == ("us-east-1", "us-west-2")
    assert aws.images["us-east-1"].startswith("ami-")
    assert aws.subnets == {"use1-az4": "subnet-1"} and aws.tags == {"team": "ml"}
    assert aws.placement_group is True and aws.security_group_ids == ("sg-1",)
    assert config.path == str(tmp_path / "config.toml")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[broker]\nproviders = ["oracle"]\n', "broker.providers: unknown provider 'oracle'"),
        ('[broker]\nproviders = ["aws"]\n', "aws is enabled but there is no [aws] section"),
        ("[aws]\nregions = []\n", "aws.regions"),
        ('[aws]\nregions = ["us-east-1"]\nsecret_key = "x"\n', "aws.secret_key: unknown key"),
        ("[broker]\nproviders = [\n", "invalid TOML"),
        ("[gcp]\nproject = 'p'\n", "gcp.regions: missing"),
        ("[oracle]\nregions = ['x']\n", "oracle: unknown section"),
    ],
)
def test_config_errors_name_the_file_and_key(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=re.escape(str(path)) + ".*" + re.escape(fragment)):
        load_config(path, required=True)


AWS_OK = '[aws]\nregions = ["us-east-1"]\n'
GCP_OK = '[gcp]\nproject = "p"\nregions = ["us-central1"]\nimage = "img"\n'
AZURE_OK = '[azure]\nsubscription_id = "s"\nresource_group = "rg"\nregions = ["eastus"]\n'


@pytest.mark.parametrize(
    ("text", "key", "why"),
    [
        (
            AWS_OK + 'placement_group = "yes"\n',
            "aws.placement_group",
            "true or false, got a string",
        ),
        (AWS_OK + "placement_group = 1\n", "aws.placement_group", "true or false, got an integer"),
        ('[aws]\nregions = "us-east-1"\n', "aws.regions", "must be an array, got a string"),
        (AWS_OK + 'security_group_ids = "sg-1"\n', "aws.security_group_ids", "an array"),
        ("[aws]\nregions = [1]\n", "aws.regions.0", "must be a string, got an integer"),
        (AWS_OK + "[aws.tags]\nteam = 7\n", "aws.tags.team", "must be a string"),
        (AWS_OK + 'images = "ami-1"\n', "aws.images", "must be a table, got a string"),
        (GCP_OK + 'boot_disk_gb = "200"\n', "gcp.boot_disk_gb", "an integer, got a string"),
        (GCP_OK + "boot_disk_gb = 200.0\n", "gcp.boot_disk_gb", "an integer, got a float"),
        (GCP_OK + "boot_disk_gb = -200\n", "gcp.boot_disk_gb", "greater than or equal to 10"),
        (GCP_OK + "boot_disk_gb = inf\n", "gcp.boot_disk_gb", "an integer, got a float"),
        (GCP_OK + "boot_disk_gb = nan\n", "gcp.boot_disk_gb", "an integer, got a float"),
        (GCP_OK + 'compact_placement = "false"\n', "gcp.compact_placement", "true or false"),
        (GCP_OK + 'zones = "us-central1-a"\n', "gcp.zones", "must be an array"),
        (AZURE_OK + 'os_disk_gb = "64"\n', "azure.os_disk_gb", "must be an integer"),
        (AZURE_OK + "os_disk_gb = -1\n", "azure.os_disk_gb", "greater than or equal to 30"),
        (AZURE_OK + "proximity_placement_group = 0\n", "azure.proximity", "true or false"),
        ('[broker]\nproviders = "aws"\n' + AWS_OK, "broker.providers", "must be an array"),
    ],
)
def test_values_of_the_wrong_type_are_refused_never_coerced(
    tmp_path: Path, text: str, key: str, why: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, required=True)
    message = str(caught.value)
    assert message.startswith(f"{path}: {key}") and why in message, message


def test_the_sections_come_from_the_table_of_clouds(tmp_path: Path) -> None:
    assert KNOWN_PROVIDERS == tuple(CLOUDS) == ("aws", "gcp", "azure")
    assert {spec.section for spec in CLOUDS.values()} == {AwsConfig, GcpConfig, AzureConfig}
    text = '[broker]\nproviders = ["aws", "gcp", "azure"]\n' + AWS_OK + GCP_OK + AZURE_OK
    config = load_config(write(tmp_path, text), required=True)
    for name, spec in CLOUDS.items():
        section = config.section(name)
        assert isinstance(section, spec.section) and config.enabled(name)


def test_enabling_builds_a_consistent_config() -> None:
    aws = AwsConfig(regions=("us-west-2",))
    config = BrokerConfig.enabling(aws)
    assert config.broker.providers == ("aws",) and config.section_of(AwsConfig) is aws
    assert config.regions("aws") == frozenset({"us-west-2"}) and config.section("gcp") is None
    with pytest.raises(ConfigError, match=r"no \[gcp\] section"):
        BrokerConfig(
            broker=config.broker.model_copy(update={"providers": ("aws", "gcp")}),
            sections={"aws": aws},
        )
    with pytest.raises(ConfigError, match=r"\[gcp\] section holds a \[aws\] model"):
        BrokerConfig(sections={"gcp": aws})


def test_providers_command_without_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["providers", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["config_exists"] is False
    by_name = {p["provider"]: p for p in doc["providers"]}
    assert set(by_name) == {"aws", "gcp", "azure", "sim"}
    assert by_name["aws"]["usable"] is False and "not enabled" in by_name["aws"]["detail"]
    assert by_name["sim"]["usable"] is True


def test_bad_config_is_a_clear_cli_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BROKER_CONFIG", str(write(tmp_path, "[broker]\nproviders = [1]\n")))
    code = main(["providers"])
    err = capsys.readouterr().err
    assert code == 2 and "broker.providers" in err and "Traceback" not in err


def test_gcp_and_azure_sections(tmp_path: Path) -> None:
    config = load_config(
        required=True,
        path=write(
            tmp_path,
            '[broker]\nproviders = ["gcp", "azure"]\n'
            '[gcp]\nproject = "p"\nregions = ["us-central1"]\nimage = "img"\n'
            'endpoint = "http://127.0.0.1:8480"\n'
            '[azure]\nsubscription_id = "s"\nresource_group = "rg"\nregions = ["eastus"]\n',
        ),
    )
    gcp, azure = config.section_of(GcpConfig), config.section_of(AzureConfig)
    assert gcp is not None and gcp.project == "p"
    assert gcp.endpoint == "http://127.0.0.1:8480" and gcp.compact_placement
    assert azure is not None and azure.resource_group == "rg"
    assert config.regions("gcp") == frozenset({"us-central1"})
    assert config.regions("azure") == frozenset({"eastus"})


@pytest.mark.parametrize("name", ["gcp", "azure"])
def test_enabled_cloud_needs_its_section(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match=rf"no \[{name}\] section"):
        load_config(write(tmp_path, f'[broker]\nproviders = ["{name}"]\n'), required=True)


def test_the_suite_never_resolves_a_name_outside_this_machine() -> None:
    """tests/conftest.py refuses every host but loopback, so a forgotten endpoint fails."""
    import socket

    with pytest.raises(socket.gaierror, match="only loopback"):
        socket.getaddrinfo("compute.googleapis.com", 443)
    assert socket.getaddrinfo("127.0.0.1", 80)

"""The configuration file: enabled clouds, per-cloud launch settings, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker.cli import main
from providers.config import ConfigError, default_config_path, load_config

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


def test_missing_default_file_enables_nothing() -> None:
    config = load_config()
    assert config.path is None and not config.enabled("aws")
    assert default_config_path().name == "config.toml"


def test_explicit_missing_file_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config()


def test_aws_section(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, AWS))
    assert config.enabled("aws") and config.aws is not None
    assert config.aws.regions == ("us-east-1", "us-west-2")
    assert config.aws.images["us-east-1"].startswith("ami-")
    assert config.aws.subnets == {"use1-az4": "subnet-1"} and config.aws.tags == {"team": "ml"}
    assert config.aws.placement_group is True


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[broker]\nproviders = ["oracle"]\n', "unknown provider 'oracle'"),
        ('[broker]\nproviders = ["aws"]\n', "no [aws] section"),
        ("[aws]\nregions = []\n", "aws.regions"),
        ('[aws]\nregions = ["us-east-1"]\nsecret_key = "x"\n', "aws.secret_key"),
        ("[broker]\nproviders = [\n", "invalid TOML"),
        ("[gcp]\nproject = 'p'\n", "gcp"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[")):
        load_config(write(tmp_path, text))


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
        write(
            tmp_path,
            '[broker]\nproviders = ["gcp", "azure"]\n'
            '[gcp]\nproject = "p"\nregions = ["us-central1"]\nimage = "img"\n'
            'endpoint = "http://127.0.0.1:8480"\n'
            '[azure]\nsubscription_id = "s"\nresource_group = "rg"\nregions = ["eastus"]\n',
        )
    )
    assert config.gcp is not None and config.gcp.project == "p"
    assert config.gcp.endpoint == "http://127.0.0.1:8480" and config.gcp.compact_placement
    assert config.azure is not None and config.azure.resource_group == "rg"
    assert config.regions("gcp") == frozenset({"us-central1"})
    assert config.regions("azure") == frozenset({"eastus"})


@pytest.mark.parametrize("name", ["gcp", "azure"])
def test_enabled_cloud_needs_its_section(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match=rf"no \[{name}\] section"):
        load_config(write(tmp_path, f'[broker]\nproviders = ["{name}"]\n'))


def test_the_suite_never_resolves_a_name_outside_this_machine() -> None:
    """tests/conftest.py refuses every host but loopback, so a forgotten endpoint fails."""
    import socket

    with pytest.raises(socket.gaierror, match="only loopback"):
        socket.getaddrinfo("compute.googleapis.com", 443)
    assert socket.getaddrinfo("127.0.0.1", 80)

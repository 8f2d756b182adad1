"""What an experiment runs in and where its nodes call: the request's ``image`` (API field,
``--image``), the configuration's ``[node] image`` and ``[service] public_url``, and the
launch file's dataset ids (each becomes a path on the node)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from broker.api import Broker
from broker.cli import main
from broker.client import request_body
from broker.diagnostics import InvalidRequest
from broker.inputs import RequestInputs, build_request
from broker.launchfile import parse_launch_text
from broker.quote import QuoteRequest
from broker.ranking import RankRequest
from providers.config import ConfigError, load_config
from providers.images import image_problem
from shapes.catalog import load_catalog

CATALOG = load_catalog()
LAUNCH = (
    'isc_project_id = "p"\nexperiment_name = "e"\ngpus = 8\ncompute_mode = "burst"\n'
    'command = "python train.py"\ndataset_id_list = ["imagenet-1k"]\n'
)


def build(**fields: Any) -> tuple[QuoteRequest, dict[str, Any] | None]:
    inputs = RequestInputs(names={"image": "--image", "launch_file": "FILE.isc"}, **fields)
    return build_request(inputs, burst_max_gpus=48, catalog=CATALOG)


@pytest.mark.parametrize(
    "image",
    [
        "ubuntu",
        "python:3.11-slim",
        "nvcr.io/nvidia/pytorch:24.05-py3",
        "localhost:5000/team/train:V2",
        "ghcr.io/org/train@sha256:" + "0" * 64,
        "registry.example.com/a/b/c:latest@sha256:" + "f" * 64,
    ],
)
def test_image_references_docker_takes_are_accepted(image: str) -> None:
    assert image_problem(image) is None


@pytest.mark.parametrize(
    ("image", "fragment"),
    [
        ("Ubuntu", "repository names are lower case"),
        ("ubuntu latest", "is not a container image reference"),
        ("--privileged", "is not a container image reference"),
        ("ubuntu:", "is not a container image reference"),
        ("ghcr.io/org/x@sha256:abc", "is not a container image reference"),
        ("a" * 600, "at most 512 characters"),
    ],
)
def test_bad_image_references_are_refused_with_the_reason(image: str, fragment: str) -> None:
    problem = image_problem(image)
    assert problem is not None and fragment in problem


def test_the_image_travels_with_the_experiment_and_an_empty_one_means_the_host() -> None:
    _, experiment = build(launch_text=LAUNCH, image="python:3.11")
    assert experiment is not None and experiment["image"] == "python:3.11"
    _, experiment = build(launch_text=LAUNCH, image="")
    assert experiment is not None and experiment["image"] == ""
    _, experiment = build(launch_text=LAUNCH)
    assert experiment is not None and "image" not in experiment


def test_an_image_needs_a_launch_file_and_a_valid_reference() -> None:
    with pytest.raises(InvalidRequest) as caught:
        build(gpus=8, image="python:3.11")
    assert caught.value.errors[0].field == "image"
    assert "give FILE.isc too" in caught.value.errors[0].message
    with pytest.raises(InvalidRequest) as caught:
        build(launch_text=LAUNCH, image="Python")
    assert "lower case" in caught.value.errors[0].message


def test_the_client_sends_the_image_as_a_field_not_as_a_launch_file_key() -> None:
    request, experiment = build(launch_text=LAUNCH, image="python:3.11")
    assert experiment is not None
    body = request_body(request, experiment=experiment)
    assert body["image"] == "python:3.11"
    assert "\nimage =" not in "\n" + body["launch_file"]
    assert parse_launch_text(body["launch_file"], source="x", burst_max_gpus=48).errors == ()


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_node_and_service_sections(tmp_path: Path) -> None:
    config = load_config(
        write_config(
            tmp_path,
            '[node]\nimage = "nvcr.io/nvidia/pytorch:24.05-py3"\n'
            '[service]\npublic_url = "https://broker.example.com:8443/"\n',
        ),
        required=True,
    )
    assert config.node.image == "nvcr.io/nvidia/pytorch:24.05-py3"
    assert config.service.public_url == "https://broker.example.com:8443"
    empty = load_config(write_config(tmp_path, ""), required=True)
    assert empty.node.image is None and empty.service.public_url is None


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[node]\nimage = "Bad Image"\n', "node.image: 'Bad Image' is not a container image"),
        ("[node]\nimage = 3\n", "node.image: must be a string, got an integer"),
        ('[node]\nimagen = "x"\n', "node.imagen: unknown key"),
        ('[service]\npublic_url = "ftp://x"\n', "service.public_url: 'ftp://x' must be an http"),
        ('[service]\npublic_url = "https://h/?a=1"\n', "must not carry a query"),
        ('[service]\npublic_url = "http://u:pw@h"\n', "must not carry a query"),
        ('[service]\npublic_url = "http://a b"\n', "has a character no URL host"),
        ('[service]\npublic_url = "http://h:port"\n', "is not a URL"),
    ],
)
def test_bad_node_and_service_values_name_the_key(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, text), required=True)
    assert fragment in str(caught.value)


def sim_broker(tmp_path: Path, config: str) -> Broker:
    from broker.settings import Settings

    path = write_config(tmp_path, config)
    settings = Settings(state_dir=tmp_path / "state", config_path=path, config_explicit=True)
    return Broker(settings, backend="sim", catalog=CATALOG)


def test_the_configured_image_is_the_default_and_the_request_overrides_it(
    tmp_path: Path,
) -> None:
    broker = sim_broker(tmp_path, '[node]\nimage = "registry.example.com/team/base:3"\n')
    request = QuoteRequest(rank=RankRequest(gpus=8))
    plain = broker.submit(request, experiment={"command": "x"})
    own = broker.submit(request, experiment={"command": "x", "image": "python:3.11"})
    host = broker.submit(request, experiment={"command": "x", "image": ""})
    machines = broker.submit(request)
    assert plain.experiment == {"command": "x", "image": "registry.example.com/team/base:3"}
    assert own.experiment is not None and own.experiment["image"] == "python:3.11"
    assert host.experiment is not None and host.experiment["image"] == ""
    assert machines.experiment is None


def test_serve_takes_the_public_url_from_the_configuration_and_checks_the_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("fastapi")
    import broker.server.main as server_main

    seen: list[Any] = []
    monkeypatch.setattr(server_main, "serve", lambda _settings, options: seen.append(options) or 0)
    path = write_config(tmp_path, '[service]\npublic_url = "https://b.example.com/"\n')
    monkeypatch.setenv("BROKER_CONFIG", str(path))
    monkeypatch.setenv("BROKER_STATE_DIR", str(tmp_path / "state"))
    assert main(["serve"]) == 0
    assert main(["serve", "--public-url", "http://10.0.0.5:8080/"]) == 0
    assert [o.public_url for o in seen] == ["https://b.example.com", "http://10.0.0.5:8080"]
    assert main(["serve", "--public-url", "10.0.0.5:8080"]) == 2
    err = capsys.readouterr().err
    assert "--public-url: '10.0.0.5:8080' must be an http:// or https:// URL" in err
    assert "Traceback" not in err
    path.write_text('[service]\npublic_url = "nope"\n')
    assert main(["serve"]) == 2
    assert "service.public_url: 'nope' must be an http" in capsys.readouterr().err
    assert len(seen) == 2


def test_provision_image_without_a_launch_file_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BROKER_STATE_DIR", str(tmp_path / "state"))
    code = main(["provision", "--gpus", "8", "--provider", "sim", "--image", "python:3.11"])
    assert code == 2
    assert "--image is the container a launch file's command runs in" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["../etc", "a/b", "", "x" * 129, "-rf"])
def test_dataset_and_artifact_ids_must_be_safe_path_components(bad: str) -> None:
    for key in ("dataset_id_list", "input_artifact_id_list"):
        text = LAUNCH.replace('dataset_id_list = ["imagenet-1k"]', f"{key} = [{bad!r}]")
        errors = parse_launch_text(text, source="x", burst_max_gpus=48).errors
        assert [e.field for e in errors] == [key], errors
        assert "is not an ID" in errors[0].message


def test_parser_has_image_on_provision_and_run_only() -> None:
    from broker.cli.parser import UsageError, build_parser

    parser = build_parser()
    for command in (["provision", "--gpus", "8"], ["run", "f.isc"]):
        args = parser.parse_args([*command, "--image", "python:3.11"])
        assert isinstance(args, argparse.Namespace) and args.image == "python:3.11"
    with pytest.raises(UsageError, match="unrecognized arguments: --image"):
        parser.parse_args(["quote", "--gpus", "8", "--image", "python:3.11"])


def test_the_remote_cli_sends_image_and_hours_as_fields() -> None:
    from broker.cli.parser import build_parser
    from broker.cli.remote import body_from_args

    parser = build_parser()
    args = parser.parse_args(
        ["run", "examples/hello.isc", "--image", "", "--hours", "2", "--max-hours", "1.5"]
    )
    body = body_from_args(args)
    assert body["image"] == "" and body["hours"] == 2.0 and "launch_file" in body
    assert body["max_hours"] == 1.5
    args = parser.parse_args(["provision", "--gpus", "8"])
    assert "image" not in body_from_args(args) and "hours" not in body_from_args(args)


def test_strong_cycle_time_ms_is_the_run_time_limit_and_absent_without_one(
    tmp_path: Path,
) -> None:
    broker = sim_broker(tmp_path, "")
    request = QuoteRequest(rank=RankRequest(gpus=8))
    limited = broker.provision(request, experiment={"command": "x", "max_hours": 1.5})
    unlimited = broker.provision(request, experiment={"command": "x"})
    assert broker.env(limited.id, 0)["STRONG_CYCLE_TIME_MS"] == "5400000"
    assert "STRONG_CYCLE_TIME_MS" not in broker.env(unlimited.id, 0)

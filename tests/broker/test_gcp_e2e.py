"""`broker provision --provider gcp` end to end: real `broker` processes, the real compute_v1
clients, credentials through Application Default Credentials, and the fake Compute server
(tests/fakes/gcp.py) on 127.0.0.1 standing in for Google (nothing leaves the machine: any
request to another host would go to a closed loopback proxy)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_broker
from tests.fakes.gcp import FakeServer
from tests.providers.gcp.conftest import cli_env


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    with FakeServer(require_auth=True, boot_polls=1, delete_polls=0) as server:
        yield server


def secrets(server: FakeServer, env: dict[str, str]) -> list[str]:
    """Every credential the processes could have printed: access tokens, the subject token."""
    subject = (Path(env["GOOGLE_APPLICATION_CREDENTIALS"]).parent / "subject-token").read_text()
    return [*server.state.tokens, subject]


def test_provision_providers_release_and_reconcile(fake: FakeServer, tmp_path: Path) -> None:
    env = cli_env(fake.url, tmp_path)
    outputs: list[str] = []

    done = run_broker(env, "provision", "--provider", "gcp", "--gpus", "16", "--json")
    outputs += [done.stdout, done.stderr]
    assert done.returncode == 0, done.stderr[-3000:]
    cluster = json.loads(done.stdout)
    assert cluster["status"] == "RUNNING" and cluster["shape_id"].startswith("gcp:us-central1:")
    nodes = cluster["nodes"]
    assert all(n["private_ip"] for n in nodes)
    live = fake.state.live()
    assert sorted(i["name"] for i in live) == sorted(n["provider_id"] for n in nodes)
    assert {i["labels"]["broker-cluster"] for i in live} == {cluster["cluster_id"]}
    gpus = {"a3-highgpu-8g": 8}.get(live[0]["machineType"].rsplit("/", 1)[-1])
    assert gpus is None or gpus * len(nodes) >= 16
    assert fake.state.tokens  # ADC fetched a token from the fake's endpoint

    status = run_broker(env, "providers", "--json")
    outputs += [status.stdout, status.stderr]
    gcp = next(p for p in json.loads(status.stdout)["providers"] if p["provider"] == "gcp")
    assert gcp["enabled"] and gcp["usable"], gcp
    assert "burst-test" in gcp["detail"]

    released = run_broker(env, "release", cluster["cluster_id"])
    outputs += [released.stdout, released.stderr]
    assert released.returncode == 0, released.stderr[-2000:]
    assert fake.state.instances == {} and fake.state.policies == {}

    # a VM a dead broker left behind (this deployment, no live cluster): reconcile removes it
    fake.state.add_instance(
        "us-central1-a",
        "bb-orphan-c1-a1-0",
        "g2-standard-4",
        {"broker": "default", "broker-cluster": "bb-orphan", "broker-attempt": "c1-a1"},
    )
    reconciled = run_broker(env, "reconcile", "--json")
    outputs += [reconciled.stdout, reconciled.stderr]
    assert reconciled.returncode == 0, reconciled.stderr[-2000:]
    assert fake.state.instances == {}

    text = "\n".join(outputs)
    for secret in secrets(fake, env):
        assert secret not in text  # no credential is ever printed
    assert "Traceback" not in text and "googleapis.com" not in text

"""`broker provision --provider azure` end to end: real `broker` processes, the real
ComputeManagementClient, the fake ARM server (tests/fakes/azure.py) on 127.0.0.1 over HTTPS.

The credential comes through DefaultAzureCredential itself, without leaving the machine:
``AZURE_TOKEN_CREDENTIALS=AzureCliCredential`` makes azure-identity 1.27 build only the
Azure CLI credential (``process_credential_exclusions`` in
azure/identity/_credentials/default.py), which runs ``az account get-access-token --output
json --resource ...`` (azure_cli.py ``_run_command``, found with ``shutil.which``): a fake
``az`` first on PATH prints the fake server's token. No environment, workload or managed
identity is tried (the last would probe IMDS; conftest points it at a closed loopback port
anyway). The fake refuses any other bearer token, so a run that works proves the token
travelled that way; the test checks it never appears in any output."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_broker
from tests.fakes.azure import TOKEN, FakeArm, config_toml, write_fake_az

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake_arm(tmp_path: Path) -> Iterator[FakeArm]:
    fake = FakeArm(workdir=tmp_path / "fake").start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def azure_env(fake_arm: FakeArm, tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "config.toml"
    config.write_text(config_toml(fake_arm))
    bindir = tmp_path / "bin"
    write_fake_az(bindir)
    return {
        **os.environ,
        "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
        "AZURE_TOKEN_CREDENTIALS": "AzureCliCredential",
        "BROKER_CONFIG": str(config),
        "BROKER_STATE_DIR": str(tmp_path / "state"),
        "BROKER_CATALOG_DIR": str(tmp_path / "catalog"),
        "PYTHONPATH": str(ROOT),
    }


def broker(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    done = run_broker(env, *argv)
    assert TOKEN not in done.stdout and TOKEN not in done.stderr  # never a credential
    return done


def test_provision_providers_release_reconcile(
    azure_env: dict[str, str], fake_arm: FakeArm
) -> None:
    done = broker(azure_env, "provision", "--provider", "azure", "--gpus", "16", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    cluster = json.loads(done.stdout)
    assert cluster["status"] == "RUNNING" and cluster["shape_id"].startswith("azure:")
    nodes = cluster["nodes"]
    # 16 GPUs: the cheapest configured shape is 16 x NC4as_T4_v3 spot (1 T4 each)
    assert cluster["shape_id"] == "azure:westus2:Standard_NC4as_T4_v3:spot"
    assert len(nodes) == 16 and all(n["private_ip"] for n in nodes)
    left = fake_arm.leftovers()
    assert left["vms"] == sorted(n["provider_id"] for n in nodes)
    with fake_arm.lock:
        tags = next(iter(fake_arm.vms.values())).body["tags"]
    assert tags["broker-cluster"] == cluster["cluster_id"]

    status = broker(azure_env, "providers", "--json")
    azure = next(p for p in json.loads(status.stdout)["providers"] if p["provider"] == "azure")
    assert azure["enabled"] and azure["usable"], azure
    assert "burst-rg" in azure["detail"]

    released = broker(azure_env, "release", cluster["cluster_id"])
    assert released.returncode == 0, released.stderr[-2000:]
    assert fake_arm.leftovers() == {"vms": [], "nics": [], "disks": [], "ppgs": []}
    reconciled = broker(azure_env, "reconcile", "--json")
    assert reconciled.returncode == 0, reconciled.stderr[-2000:]


def test_a_wrong_token_makes_azure_unusable(azure_env: dict[str, str], tmp_path: Path) -> None:
    write_fake_az(Path(azure_env["PATH"].split(os.pathsep)[0]), token="some-other-token")
    status = broker(azure_env, "providers", "--json")
    azure = next(p for p in json.loads(status.stdout)["providers"] if p["provider"] == "azure")
    assert azure["enabled"] and not azure["usable"]
    assert "InvalidAuthenticationToken" in azure["detail"]
    assert "some-other-token" not in status.stdout + status.stderr

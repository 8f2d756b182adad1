"""`broker provision --provider aws` end to end: real `broker` processes, the real boto3
client, a moto server on 127.0.0.1 standing in for EC2 (nothing leaves the machine)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_broker

ROOT = Path(__file__).resolve().parents[2]
REGION = "us-east-1"


@pytest.fixture
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_env(moto_endpoint: str, tmp_path: Path) -> dict[str, str]:
    import boto3

    creds = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ENDPOINT_URL": moto_endpoint,
    }
    ec2 = boto3.client(
        "ec2",
        region_name=REGION,
        endpoint_url=moto_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    image = ec2.register_image(
        Name="broker-e2e",
        Architecture="x86_64",
        RootDeviceName="/dev/sda1",
        VirtualizationType="hvm",
        BlockDeviceMappings=[{"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 100}}],
    )["ImageId"]
    config = tmp_path / "config.toml"
    config.write_text(
        '[broker]\nproviders = ["aws"]\n\n'
        f'[aws]\nregions = ["{REGION}"]\nplacement_group = false\n'
        f'[aws.images]\n{REGION} = "{image}"\n'
    )
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
        **creds,
        "BROKER_CONFIG": str(config),
        "BROKER_STATE_DIR": str(tmp_path / "state"),
        "BROKER_CATALOG_DIR": str(tmp_path / "catalog"),
        "PYTHONPATH": str(ROOT),
    }


def broker(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return run_broker(env, *argv)


def running_instances(env: dict[str, str]) -> list[dict[str, Any]]:
    import boto3

    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=env["AWS_ENDPOINT_URL"],
                       aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
    pages = ec2.describe_instances(
        Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}]
    )
    return [i for r in pages["Reservations"] for i in r["Instances"]]


def test_provision_release_and_providers_against_moto_server(aws_env: dict[str, str]) -> None:
    shape = "aws:us-east-1:p4d.24xlarge:on-demand"
    done = broker(
        aws_env, "provision", "--provider", "aws", "--gpus", "16", "--priority", shape, "--json"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    cluster = json.loads(done.stdout)
    assert cluster["status"] == "RUNNING" and cluster["shape_id"] == shape
    assert len(cluster["nodes"]) == 2 and all(n["private_ip"] for n in cluster["nodes"])
    instances = running_instances(aws_env)
    assert sorted(i["InstanceId"] for i in instances) == sorted(
        n["provider_id"] for n in cluster["nodes"]
    )
    tags = {t["Key"]: t["Value"] for t in instances[0]["Tags"]}
    assert tags["broker-cluster"] == cluster["cluster_id"]

    status = broker(aws_env, "providers", "--json")
    aws = next(p for p in json.loads(status.stdout)["providers"] if p["provider"] == "aws")
    assert aws["enabled"] and aws["usable"], aws
    assert "testing" not in status.stdout  # no credential is ever printed

    released = broker(aws_env, "release", cluster["cluster_id"])
    assert released.returncode == 0, released.stderr[-2000:]
    assert running_instances(aws_env) == []
    assert broker(aws_env, "reconcile", "--json").returncode == 0


def test_catalog_refresh_against_moto_server(aws_env: dict[str, str], tmp_path: Path) -> None:
    done = broker(aws_env, "catalog", "refresh", "--provider", "aws", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["shapes"] > 0 and summary["prices_as_of"] is not None
    assert Path(summary["path"]).parent == tmp_path / "catalog"
    quote = broker(aws_env, "quote", "--gpus", "8", "--provider", "aws", "--json")
    sources = {s["provider"]: s for s in json.loads(quote.stdout)["catalog"]["sources"]}
    assert sources["aws"]["bundled"] is False  # the refreshed file took precedence
    assert sources["aws"]["prices_as_of"] == summary["prices_as_of"]

"""The node boot script on AWS: RunInstances carries it as UserData, moto keeps it, and what
moto gives back (``DescribeInstanceAttribute userData``) is the script, which, run, starts the
agent with the right arguments. A script over 16 KB is refused before any call."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

import pytest

from broker.agent.bootstrap import agent_sha256, pinned_agent
from providers.base import TAG_ATTEMPT, TAG_BROKER, TAG_CLUSTER, LaunchRequest
from providers.errors import BootstrapTooLargeError, Reach
from tests.agent.bootrun import AGENT, agent_argv, run, script_for
from tests.providers.aws.conftest import AwsWorld, moto_instances, raw_client, record

P5 = "aws:us-east-1:p5.48xlarge:on-demand"
ZONE = "use1-az4"


def launch_request(
    aws: AwsWorld, cluster: str, bootstrap: str | None, count: int = 2
) -> LaunchRequest:
    shape = aws.catalog.get(P5)
    assert shape is not None
    return LaunchRequest(
        shape=shape,
        zone=ZONE,
        count=count,
        token=f"tok-{uuid.uuid4().hex}",
        tags={TAG_BROKER: "test", TAG_CLUSTER: cluster, TAG_ATTEMPT: "a1"},
        bootstrap=bootstrap,
    )


def user_data(instance_id: str) -> str | None:
    """What EC2 (moto) keeps as the instance's UserData, decoded."""
    found = raw_client().describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
    value = found.get("UserData", {}).get("Value")
    return None if value is None else base64.b64decode(value).decode("utf-8")


def test_every_node_boots_with_the_script_that_starts_the_agent(
    aws: AwsWorld, tmp_path: Path
) -> None:
    provider = aws.provider()
    runs = record(provider, "RunInstances")
    cluster = f"bb-{uuid.uuid4().hex[:12]}"
    script = script_for(tmp_path, cluster_id=cluster)

    nodes = provider.launch(launch_request(aws, cluster, script), timeout=60)

    assert runs.calls == 1 and len(nodes) == 2
    received = [user_data(node.provider_id) for node in nodes]
    assert received == [script, script]  # botocore base64-encoded it; EC2 keeps the bytes
    assert pinned_agent(script) == agent_sha256(AGENT)  # what the node downloads
    booted = run(script, tmp_path)  # what the node runs
    assert booted.result.returncode == 0, booted.result.stderr
    (call,) = booted.calls
    assert call.argv[1:] == agent_argv(booted.install_dir, cluster=cluster)
    provider.terminate(nodes)


def test_without_a_script_nodes_get_no_user_data(aws: AwsWorld) -> None:
    provider = aws.provider()
    runs = record(provider, "RunInstances")
    cluster = f"bb-{uuid.uuid4().hex[:12]}"

    nodes = provider.launch(launch_request(aws, cluster, None, count=1), timeout=60)

    assert "UserData" not in runs.params[0]
    assert user_data(nodes[0].provider_id) is None
    provider.terminate(nodes)


def test_a_script_over_16_kb_is_refused_before_any_call(aws: AwsWorld, tmp_path: Path) -> None:
    provider = aws.provider()
    runs = record(provider, "RunInstances")
    cluster = f"bb-{uuid.uuid4().hex[:12]}"
    # the script itself is under 4 KB (it downloads the agent): padded past the limit
    script = script_for(tmp_path, cluster_id=cluster) + "#" * 16 * 1024
    assert len(script.encode()) > 16 * 1024

    with pytest.raises(BootstrapTooLargeError) as caught:
        provider.launch(launch_request(aws, cluster, script), timeout=60)

    assert caught.value.provider == "aws" and caught.value.reach is Reach.PROVIDER
    assert "16,384" in caught.value.message
    assert runs.calls == 0 and moto_instances() == []

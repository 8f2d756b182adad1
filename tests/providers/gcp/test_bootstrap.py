"""The node boot script on GCP: bulkInsert carries it as the ``startup-script`` metadata item
of the instance properties, the fake keeps it on every VM, and what a GET of the VM gives back
is the script, which, run, starts the agent with the right arguments. A script over 256 KB is
refused before any call."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from broker.agent.bootstrap import agent_sha256, pinned_agent
from providers.errors import BootstrapTooLargeError, Reach
from providers.gcp.adapter import STARTUP_SCRIPT, GcpProvider
from tests.agent.bootrun import AGENT, agent_argv, run, script_for
from tests.fakes.gcp import PROJECT
from tests.providers.gcp.conftest import GcpWorld

A3 = "gcp:us-central1:a3-highgpu-8g:on-demand"


def metadata(provider: GcpProvider, zone: str, name: str) -> dict[str, str]:
    """The VM's metadata items, read back through the real client."""
    vm = provider.instances.get(project=PROJECT, zone=zone, instance=name, retry=None)
    return {item.key: item.value for item in vm.metadata.items}


def test_every_node_boots_with_the_script_that_starts_the_agent(
    gcp: GcpWorld, tmp_path: Path
) -> None:
    provider = gcp.provider()
    cluster = f"bb-{uuid.uuid4().hex[:12]}"
    script = script_for(tmp_path, cluster_id=cluster)
    request = gcp.request(A3, count=2, cluster=cluster).model_copy(update={"bootstrap": script})

    nodes = provider.launch(request, timeout=60)

    (body,) = gcp.fake.bodies("bulkInsert")
    items = body["instanceProperties"]["metadata"]["items"]
    assert items == [{"key": STARTUP_SCRIPT, "value": script}]  # the script itself, no base64
    for node in nodes:
        assert metadata(provider, node.zone, node.provider_id) == {STARTUP_SCRIPT: script}
    assert pinned_agent(script) == agent_sha256(AGENT)  # what the node downloads
    booted = run(script, tmp_path)  # what the node runs
    assert booted.result.returncode == 0, booted.result.stderr
    (call,) = booted.calls
    assert call.argv[1:] == agent_argv(booted.install_dir, cluster=cluster)
    provider.terminate(nodes)


def test_without_a_script_nodes_get_no_startup_script(gcp: GcpWorld) -> None:
    provider = gcp.provider()
    nodes = provider.launch(gcp.request(A3, count=1), timeout=60)

    (body,) = gcp.fake.bodies("bulkInsert")
    assert "metadata" not in body["instanceProperties"]
    assert metadata(provider, nodes[0].zone, nodes[0].provider_id) == {}
    provider.terminate(nodes)


def test_a_script_over_256_kb_is_refused_before_any_call(gcp: GcpWorld, tmp_path: Path) -> None:
    provider = gcp.provider()
    cluster = f"bb-{uuid.uuid4().hex[:12]}"
    # the script itself is under 4 KB (it downloads the agent): padded past the limit
    script = script_for(tmp_path, cluster_id=cluster) + "#" * 256 * 1024
    assert len(script.encode()) > 256 * 1024
    request = gcp.request(A3, count=2, cluster=cluster).model_copy(update={"bootstrap": script})

    with pytest.raises(BootstrapTooLargeError) as caught:
        provider.launch(request, timeout=60)

    assert caught.value.provider == "gcp" and caught.value.reach is Reach.PROVIDER
    assert "262,144" in caught.value.message
    assert gcp.fake.calls == [] and gcp.fake.instances == {}

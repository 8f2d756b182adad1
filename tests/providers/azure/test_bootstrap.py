"""The node boot script on Azure: each VM's PUT carries it base64-encoded as
``osProfile.customData``, the fake keeps it (and, like ARM, never shows it in a GET), and it
decodes to the script, which, run, starts the agent with the right arguments. A script whose
base64 is over 65,535 characters is refused before any call."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

import pytest

from broker.agent.bootstrap import agent_sha256, pinned_agent
from providers.base import TAG_ATTEMPT, TAG_BROKER, TAG_CLUSTER, LaunchRequest
from providers.errors import BootstrapTooLargeError, Reach
from tests.agent.bootrun import AGENT, agent_argv, run, script_for
from tests.fakes.azure import RESOURCE_GROUP
from tests.providers.azure.conftest import AzureWorld

SPOT = "azure:eastus:Standard_NC24ads_A100_v4:spot"


def launch_request(
    azure: AzureWorld, cluster: str, bootstrap: str | None, count: int = 2
) -> LaunchRequest:
    shape = azure.catalog.get(SPOT)
    assert shape is not None
    return LaunchRequest(
        shape=shape,
        zone=shape.zones[0],
        count=count,
        token=f"{cluster}-a1",
        tags={TAG_BROKER: "test", TAG_CLUSTER: cluster, TAG_ATTEMPT: "a1"},
        bootstrap=bootstrap,
    )


def custom_data(azure: AzureWorld, name: str) -> str | None:
    """What the fake keeps as the VM's customData, decoded (ARM itself never shows it)."""
    vm = azure.fake.vm(name)
    assert vm is not None, name
    value = vm.body["properties"]["osProfile"].get("customData")
    return None if value is None else base64.b64decode(value, validate=True).decode("utf-8")


def test_every_node_boots_with_the_script_that_starts_the_agent(
    azure: AzureWorld, tmp_path: Path
) -> None:
    provider = azure.provider()
    cluster = f"bb-{uuid.uuid4().hex[:12]}"
    script = script_for(tmp_path, cluster_id=cluster)
    request = launch_request(azure, cluster, script)

    nodes = provider.launch(request, timeout=600)

    assert len(azure.fake.puts) == 2
    for node in nodes:
        assert custom_data(azure, node.provider_id) == script
        # a GET through the SDK shows no customData, as ARM's own GET does not
        shown = provider.compute.virtual_machines.get(RESOURCE_GROUP, node.provider_id)
        assert shown.properties is not None and shown.properties.os_profile is not None
        assert shown.properties.os_profile.custom_data is None
    assert pinned_agent(script) == agent_sha256(AGENT)  # what the node downloads
    booted = run(script, tmp_path)  # what cloud-init runs on the node
    assert booted.result.returncode == 0, booted.result.stderr
    (call,) = booted.calls
    assert call.argv[1:] == agent_argv(booted.install_dir, cluster=cluster)
    # a repeated call adopts the VMs (it never needs to read customData back to do so)
    assert provider.launch(request, timeout=600) == nodes
    assert len(azure.fake.puts) == 2
    provider.terminate(nodes)


def test_without_a_script_nodes_get_no_custom_data(azure: AzureWorld) -> None:
    provider = azure.provider()
    cluster = f"bb-{uuid.uuid4().hex[:12]}"

    nodes = provider.launch(launch_request(azure, cluster, None, count=1), timeout=600)

    assert "customData" not in azure.fake.puts[0]["properties"]["osProfile"]
    assert custom_data(azure, nodes[0].provider_id) is None
    provider.terminate(nodes)


def test_a_script_over_the_custom_data_limit_is_refused_before_any_call(
    azure: AzureWorld, tmp_path: Path
) -> None:
    provider = azure.provider()
    cluster = f"bb-{uuid.uuid4().hex[:12]}"
    # the script itself is under 4 KB (it downloads the agent): padded past the limit
    script = script_for(tmp_path, cluster_id=cluster) + "#" * 50_000
    assert len(base64.b64encode(script.encode())) > 65_535

    with pytest.raises(BootstrapTooLargeError) as caught:
        provider.launch(launch_request(azure, cluster, script), timeout=600)

    assert caught.value.provider == "azure" and caught.value.reach is Reach.PROVIDER
    assert "65,535" in caught.value.message
    assert azure.fake.puts == []
    assert azure.fake.leftovers() == {"vms": [], "nics": [], "disks": [], "ppgs": []}

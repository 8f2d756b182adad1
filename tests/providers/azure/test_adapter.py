"""The Azure adapter against the fake ARM server: spot and on-demand gangs, the VM request
itself, tags, deterministic names and idempotency, proximity placement groups, LRO polling,
Failed VMs deleted with their NIC and disk, partial gangs, waits on a FakeClock, terminate,
describe and list_tagged across regions, configuration errors and health."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError

from broker.api import Broker
from broker.errors import ProvisionFailed
from broker.lifecycle import Status
from broker.provisioner import ProvisionPolicy
from broker.quote import QuoteRequest
from broker.ranking import RankRequest
from providers.azure.adapter import TAG_SHAPE, TAG_TOKEN, AzureProvider, vm_base_name
from providers.base import TAG_ATTEMPT, TAG_BROKER, TAG_CLUSTER, LaunchRequest, Node, NodeState
from providers.config import BrokerConfig
from providers.errors import (
    CallTimeoutError,
    CapacityError,
    InvalidLaunchError,
    NotConfiguredError,
    RegionConfigError,
    ThrottledError,
    TransientError,
)
from shapes.catalog import Catalog
from shapes.model import Shape
from tests.conftest import make_shape
from tests.providers.azure.conftest import CONFIG_TAGS, SSH_KEY, AzureWorld, make_config, subnet

SPOT = "azure:eastus:Standard_NC24ads_A100_v4:spot"
ON_DEMAND_WEST = "azure:westus2:Standard_NC24ads_A100_v4:on-demand"
ZONAL = make_shape(
    "Standard_ND96asr_v4",
    provider="azure",
    region="eastus",
    gpu="A100-40GB",
    gpus=8,
    price=27.2,
    zones=("1", "2", "3"),
)
NOTHING = {"vms": [], "nics": [], "disks": [], "ppgs": []}
QUOTA = (
    "Operation could not be completed as it results in exceeding approved "
    "standardNDASv4_A100Family Cores quota. Current Limit: 0, Current Usage: 0."
)


def shape(azure: AzureWorld, shape_id: str) -> Shape:
    found = azure.catalog.get(shape_id)
    assert found is not None, shape_id
    return found


def request(
    target: Shape,
    zone: str | None = None,
    count: int = 2,
    *,
    cluster: str | None = None,
    attempt: str = "c1-a1",
    token: str | None = None,
) -> LaunchRequest:
    cluster = cluster or f"bb-{uuid.uuid4().hex[:12]}"
    return LaunchRequest(
        shape=target,
        zone=zone or target.zones[0],
        count=count,
        token=token or f"{cluster}-{attempt}",
        tags={TAG_BROKER: "test", TAG_CLUSTER: cluster, TAG_ATTEMPT: attempt},
    )


def ids(nodes: list[Node]) -> list[str]:
    return [n.provider_id for n in nodes]


# -- launch ----------------------------------------------------------------------------------


def test_a_spot_gang_in_a_pseudo_zone_region(azure: AzureWorld) -> None:
    provider = azure.provider()
    req = request(shape(azure, SPOT), count=3)

    nodes = provider.launch(req, timeout=60)

    base = vm_base_name(req)
    assert base == f"{req.tags[TAG_CLUSTER]}-c1-a1"
    assert ids(nodes) == [f"{base}-0", f"{base}-1", f"{base}-2"]
    assert len({n.private_ip for n in nodes}) == 3
    for node in nodes:
        assert node.state is NodeState.RUNNING and node.private_ip
        assert (node.provider, node.region, node.zone) == ("azure", "eastus", "eastus")
        assert node.shape_id == SPOT
        assert dict(node.tags).items() >= {**req.tags, **CONFIG_TAGS}.items()
        assert node.tags[TAG_TOKEN] == req.token and node.tags[TAG_SHAPE] == SPOT
    # what Compute was asked for, VM by VM
    assert len(azure.fake.puts) == 3
    ppg = azure.fake.ppgs[("burst-rg", base.lower())]
    assert "zones" not in ppg and ppg["tags"][TAG_CLUSTER] == req.tags[TAG_CLUSTER]
    for i, body in enumerate(azure.fake.puts):
        props = body["properties"]
        assert "zones" not in body  # the region's pseudo-zone means a regional VM
        assert body["location"] == "eastus" and body["tags"][TAG_ATTEMPT] == "c1-a1"
        assert props["hardwareProfile"] == {"vmSize": "Standard_NC24ads_A100_v4"}
        assert (props["priority"], props["evictionPolicy"]) == ("Spot", "Delete")
        assert props["billingProfile"] == {"maxPrice": -1}
        assert props["proximityPlacementGroup"]["id"] == ppg["id"]
        nic = props["networkProfile"]["networkInterfaceConfigurations"][0]
        assert nic["name"] == f"{base}-{i}-nic"
        assert nic["tags"] == body["tags"]
        assert nic["properties"]["deleteOption"] == "Delete"
        ip = nic["properties"]["ipConfigurations"][0]["properties"]
        assert ip["subnet"]["id"] == subnet("eastus")
        assert props["networkProfile"]["networkApiVersion"]
        disk = props["storageProfile"]["osDisk"]
        assert (disk["deleteOption"], disk["createOption"], disk["diskSizeGB"]) == (
            "Delete",
            "FromImage",
            200,
        )
        assert props["storageProfile"]["imageReference"]["publisher"] == "Canonical"
        linux = props["osProfile"]["linuxConfiguration"]
        assert linux["disablePasswordAuthentication"] is True
        assert linux["ssh"]["publicKeys"][0]["keyData"] == SSH_KEY
        assert "adminPassword" not in props["osProfile"]
    # every create was a long-running operation, polled (InProgress, then Succeeded)
    assert azure.fake.calls("GET", "/operations/") >= 6

    provider.terminate(nodes)
    assert provider.describe(req.tags[TAG_CLUSTER]) == []
    assert azure.fake.leftovers() == NOTHING  # VMs, NICs, disks and the placement group


def test_an_on_demand_gang_in_an_availability_zone(azure: AzureWorld) -> None:
    catalog = Catalog.of([ZONAL])
    provider = azure.provider(catalog=catalog)
    req = request(ZONAL, zone="2")

    nodes = provider.launch(req, timeout=60)

    assert [n.zone for n in nodes] == ["2", "2"]
    assert all(n.shape_id == ZONAL.id for n in nodes)
    for body in azure.fake.puts:
        assert body["zones"] == ["2"]
        assert "priority" not in body["properties"]
        assert "billingProfile" not in body["properties"]
    (ppg,) = azure.fake.ppgs.values()
    assert ppg["zones"] == ["2"]
    described = provider.describe(req.tags[TAG_CLUSTER])
    assert [(n.zone, n.state, n.private_ip) for n in described] == [
        (n.zone, NodeState.RUNNING, n.private_ip) for n in nodes
    ]


def test_a_single_node_has_no_placement_group(azure: AzureWorld) -> None:
    provider = azure.provider()
    nodes = provider.launch(request(shape(azure, SPOT), count=1), timeout=60)
    assert len(nodes) == 1
    assert azure.fake.ppgs == {}
    assert "proximityPlacementGroup" not in azure.fake.puts[0]["properties"]


def test_placement_groups_can_be_turned_off(azure: AzureWorld) -> None:
    provider = azure.provider(config=make_config(azure.fake, proximity_placement_group=False))
    provider.launch(request(shape(azure, SPOT), count=2), timeout=60)
    assert azure.fake.ppgs == {}


def test_every_bundled_size_can_launch_in_the_fake(azure: AzureWorld) -> None:
    """The fake is seeded from the bundled catalog: one node of each size, where it is sold."""
    firsts: dict[str, Shape] = {}
    for candidate in azure.catalog.shapes:
        if candidate.provider == "azure":
            firsts.setdefault(candidate.instance_type, candidate)
    regions = tuple(sorted({s.region for s in firsts.values()}))
    config = make_config(azure.fake, regions=regions, subnets={r: subnet(r) for r in regions})
    provider = azure.provider(config=config)
    nodes = [
        node
        for target in firsts.values()
        for node in provider.launch(request(target, count=1), timeout=60)
    ]
    assert len(firsts) == 19  # with ND H200 v5 and ND MI300X v5
    assert sorted(n.shape_id for n in nodes) == sorted(s.id for s in firsts.values())
    assert all(n.state is NodeState.RUNNING and n.zone == n.region for n in nodes)
    provider.terminate(nodes)
    assert azure.fake.leftovers() == NOTHING


def test_names_are_short_and_valid_whatever_the_tags() -> None:
    target = make_shape(provider="azure", region="eastus", zones=("eastus",))
    long = request(
        target, cluster="Cluster_With.Odd/Chars-" + "x" * 80, attempt="c12-a345", token="t"
    )
    base = vm_base_name(long)
    assert len(base) <= 56 and base == base.lower()
    assert all(c.isalnum() or c == "-" for c in base)
    assert vm_base_name(long) == base  # deterministic
    no_tags = LaunchRequest(shape=target, zone="eastus", count=1, token="t1", tags={})
    assert vm_base_name(no_tags).startswith("bb-")


# -- idempotency ----------------------------------------------------------------------------


def test_the_same_token_adopts_the_same_vms(azure: AzureWorld) -> None:
    provider = azure.provider()
    req = request(shape(azure, SPOT), count=2)
    first = provider.launch(req, timeout=60)
    again = azure.provider().launch(req, timeout=60)  # another process, same token

    assert ids(again) == ids(first)
    assert [n.private_ip for n in again] == [n.private_ip for n in first]
    assert len(azure.fake.puts) == 2  # nothing was created twice


@pytest.mark.parametrize("change", ["count", "shape", "zone", "token"])
def test_the_same_attempt_with_other_parameters_is_a_mismatch(
    azure: AzureWorld, change: str
) -> None:
    catalog = Catalog.of([ZONAL])
    provider = azure.provider(catalog=catalog)
    req = request(ZONAL, zone="1", count=2)
    provider.launch(req, timeout=60)
    other: dict[str, Any] = {
        "count": {"count": 1},
        "shape": {"shape": dataclasses.replace(ZONAL, instance_type="Standard_ND40rs_v2")},
        "zone": {"zone": "2"},
        "token": {"token": "another-token"},
    }[change]

    with pytest.raises(InvalidLaunchError) as caught:
        provider.launch(req.model_copy(update=other), timeout=60)

    assert caught.value.code == "IdempotentParameterMismatch"
    assert len(azure.fake.puts) == 2


def test_a_transient_refusal_mid_gang_is_retried_with_the_same_token(azure: AzureWorld) -> None:
    provider = azure.provider()
    req = request(shape(azure, SPOT), count=3)
    throttled = azure.fake.inject("create", "TooManyRequests", status=429, retry_after=5)

    # the first PUT is refused: nothing exists, the placement group is removed again
    with pytest.raises(ThrottledError) as caught:
        provider.launch(req, timeout=60)
    assert caught.value.retry_after == 5 and throttled.hits == 1
    assert azure.fake.leftovers() == NOTHING

    # the second PUT of the gang is refused: the first VM stays for the retry to adopt
    azure.fake.inject("create", "ServiceUnavailable", status=503, skip=1)
    with pytest.raises(TransientError) as second:
        provider.launch(req, timeout=60)
    assert second.value.code == "ServiceUnavailable"
    assert len(azure.fake.leftovers()["vms"]) == 1

    nodes = provider.launch(req, timeout=60)
    assert len(nodes) == 3
    assert len(azure.fake.puts) == 3  # the adopted VM was not created again


# -- failures and rollbacks ------------------------------------------------------------------


def test_allocation_failure_deletes_the_failed_vm_with_its_nic_and_disk(
    azure: AzureWorld,
) -> None:
    azure.fake.cascade_failed = False  # even when Azure keeps a Failed VM's NIC and disk
    provider = azure.provider()
    req = request(shape(azure, SPOT), count=3)
    fault = azure.fake.inject("create", "AllocationFailed", kind="lro")

    with pytest.raises(CapacityError) as caught:
        provider.launch(req, timeout=60)

    assert caught.value.code == "AllocationFailed" and fault.hits == 1
    assert len(azure.fake.puts) == 3  # the other two were created, then rolled back
    assert azure.fake.leftovers() == NOTHING
    assert azure.fake.calls("DELETE", "/networkInterfaces/") >= 1
    assert azure.fake.calls("DELETE", "/disks/") >= 1
    assert provider.describe(req.tags[TAG_CLUSTER]) == []


def test_a_failed_vm_found_by_a_repeated_call_rolls_the_attempt_back(azure: AzureWorld) -> None:
    provider = azure.provider()
    req = request(shape(azure, SPOT), count=2)
    azure.fake.inject("create", "ZonalAllocationFailed", kind="lro")
    model = provider._vm_model(req, f"{vm_base_name(req)}-0", None)
    poller = provider.compute.virtual_machines.begin_create_or_update(
        "burst-rg", f"{vm_base_name(req)}-0", model
    )
    with pytest.raises(HttpResponseError, match="ZonalAllocationFailed"):  # a "crash" here
        poller.result()

    with pytest.raises(CapacityError) as caught:
        provider.launch(req, timeout=60)
    assert caught.value.code == "ZonalAllocationFailed"
    assert azure.fake.leftovers() == NOTHING


def test_a_spot_eviction_while_starting_is_a_partial_gang(azure: AzureWorld) -> None:
    provider = azure.provider()
    req = request(shape(azure, SPOT), count=3)
    azure.fake.inject("create", kind="evict")

    with pytest.raises(CapacityError) as caught:
        provider.launch(req, timeout=60)

    err = caught.value
    assert err.code == "VMEvictedDuringLaunch"
    assert "partial gang" in err.message and req.tags[TAG_CLUSTER] in err.message
    assert azure.fake.leftovers() == NOTHING  # the two survivors were rolled back


def test_sku_not_available_is_refused_before_anything_is_created(azure: AzureWorld) -> None:
    catalog = Catalog.of([ZONAL])
    provider = azure.provider(catalog=catalog)
    azure.fake.skus["eastus"] = [
        s if s["name"] != ZONAL.instance_type else {**s, "locationInfo": [
            {"location": "eastus", "zones": ["1", "2"]}]}
        for s in azure.fake.skus["eastus"]
    ]  # fmt: skip

    with pytest.raises(CapacityError) as caught:
        provider.launch(request(ZONAL, zone="3"), timeout=60)

    assert caught.value.code == "SkuNotAvailable"
    assert azure.fake.leftovers() == NOTHING


# -- waiting ---------------------------------------------------------------------------------


def test_a_gang_that_does_not_start_in_time_times_out_then_is_adopted(
    azure: AzureWorld,
) -> None:
    provider = azure.provider()
    req = request(shape(azure, SPOT), count=2)
    azure.fake.inject("create", kind="stuck", times=1)

    with pytest.raises(CallTimeoutError) as caught:
        provider.launch(req, timeout=30)

    assert caught.value.code == "LaunchWaitTimeout"
    assert "1 of 2" in caught.value.message
    assert sum(azure.clock.slept) == pytest.approx(30)
    assert max(azure.clock.slept) <= 2.0  # the poll interval bounds each wait
    starting = provider.describe(req.tags[TAG_CLUSTER])
    assert sorted(n.state for n in starting) == [NodeState.PENDING, NodeState.RUNNING]

    azure.fake.clear_faults()
    nodes = provider.launch(req, timeout=30)  # the same token: the same VMs, now running
    assert ids(nodes) == ids(starting) and all(n.private_ip for n in nodes)
    assert len(azure.fake.puts) == 2


# -- describe, list_tagged, terminate ----------------------------------------------------------


def test_describe_and_list_tagged_across_regions(azure: AzureWorld) -> None:
    provider = azure.provider()
    east = request(shape(azure, SPOT), count=2)
    west = request(shape(azure, ON_DEMAND_WEST), count=1)
    east_nodes = provider.launch(east, timeout=60)
    west_nodes = provider.launch(west, timeout=60)
    # a VM in a region this configuration does not enable, and one without broker tags
    three = ("eastus", "westus2", "southcentralus")
    wider = make_config(azure.fake, regions=three, subnets={r: subnet(r) for r in three})
    other = azure.provider(config=wider)
    south = other.catalog.get("azure:southcentralus:Standard_NC24ads_A100_v4:on-demand")
    assert south is not None
    south_nodes = other.launch(request(south, count=1), timeout=60)
    stranger = request(shape(azure, SPOT), count=1)
    untagged = stranger.model_copy(update={"tags": {}})
    provider.launch(untagged, timeout=60)

    tagged = provider.list_tagged()
    assert ids(tagged) == ids(east_nodes) + ids(west_nodes) or set(ids(tagged)) == set(
        ids(east_nodes) + ids(west_nodes)
    )
    assert {n.region for n in tagged} == {"eastus", "westus2"}
    assert ids(provider.describe(east.tags[TAG_CLUSTER])) == ids(east_nodes)
    assert provider.describe(west.tags[TAG_CLUSTER])[0].shape_id == ON_DEMAND_WEST
    assert ids(other.list_tagged()) != ids(tagged)  # the wider config sees the south VM
    assert set(ids(south_nodes)) <= set(ids(other.list_tagged()))

    other.terminate(south_nodes)
    # the untagged VM is not the broker's to find; remove it by name for the teardown
    provider.terminate([Node(provider="azure", provider_id=f"{vm_base_name(untagged)}-0",
                             shape_id=SPOT, region="eastus", zone="eastus",
                             state=NodeState.RUNNING)])  # fmt: skip


def test_terminate_waits_until_gone_and_may_be_repeated(azure: AzureWorld) -> None:
    provider = azure.provider()
    gone = request(shape(azure, SPOT), count=2)
    kept = request(shape(azure, SPOT), count=2)
    nodes = provider.launch(gone, timeout=60)
    survivors = provider.launch(kept, timeout=60)

    provider.terminate(nodes)

    assert provider.describe(gone.tags[TAG_CLUSTER]) == []
    assert ids(provider.describe(kept.tags[TAG_CLUSTER])) == ids(survivors)
    assert [p["name"] for p in azure.fake.ppgs.values()] == [vm_base_name(kept)]
    provider.terminate(nodes)  # gone already: fine
    provider.terminate([])


def test_terminate_times_out_if_vms_linger(azure: AzureWorld) -> None:
    provider = azure.provider(terminate_timeout=20)
    nodes = provider.launch(request(shape(azure, SPOT), count=1), timeout=60)
    azure.fake.inject("delete", kind="linger")

    with pytest.raises(CallTimeoutError) as caught:
        provider.terminate(nodes)

    assert caught.value.code == "TerminateWaitTimeout"
    assert [n.state for n in provider.list_tagged()] == [NodeState.TERMINATING]
    azure.fake.clear_faults()
    provider.terminate(nodes)
    assert provider.list_tagged() == []


# -- configuration and health ------------------------------------------------------------------


def test_configuration_errors(azure: AzureWorld) -> None:
    target = shape(azure, SPOT)
    with pytest.raises(RegionConfigError):
        azure.provider(config=make_config(azure.fake, subnets={})).launch(
            request(target), timeout=60
        )
    with pytest.raises(NotConfiguredError):
        azure.provider(config=make_config(azure.fake, ssh_public_key=None)).launch(
            request(target), timeout=60
        )
    with pytest.raises(RegionConfigError) as caught:
        azure.provider(config=make_config(azure.fake, regions=("westus2",))).launch(
            request(target), timeout=60
        )
    assert caught.value.code == "NotConfigured"
    assert azure.fake.puts == []


def test_list_shapes_is_the_configured_regions(azure: AzureWorld) -> None:
    shapes = azure.provider().list_shapes()
    assert shapes and {s.region for s in shapes} == {"eastus", "westus2"}
    assert all(s.provider == "azure" for s in shapes)


def test_health(azure: AzureWorld) -> None:
    ok, detail = azure.provider().health()
    assert ok and "burst-rg" in detail and "eastus, westus2" in detail
    assert "fake-arm-token" not in detail


# -- the broker's provisioner driving the adapter ------------------------------------------------

EAST = make_shape(
    "Standard_ND96asr_v4",
    provider="azure",
    region="eastus",
    gpu="A100-40GB",
    gpus=8,
    price=27.0,
    zones=("1", "2", "3"),
)
WEST = make_shape(
    "Standard_ND96asr_v4",
    provider="azure",
    region="westus2",
    gpu="A100-40GB",
    gpus=8,
    price=28.0,
    zones=("1", "2"),
)
FALLBACK = Catalog.of([EAST, WEST])


def make_broker(tmp_path: Path, azure: AzureWorld) -> tuple[Broker, AzureProvider]:
    broker = Broker(
        state_dir=tmp_path / "state",
        catalog=FALLBACK,
        config=BrokerConfig.enabling(azure.config),
        policy=ProvisionPolicy(retry_attempts=4, retry_initial_wait=1.0, retry_max_wait=4.0),
        clock=azure.clock,
        sleep=azure.clock.sleep,
    )
    provider = azure.provider(catalog=FALLBACK)
    broker._providers["azure"] = provider
    return broker, provider


def summary(broker: Broker, cluster_id: str) -> list[tuple[Any, ...]]:
    return [
        (a.shape_id, a.zone, a.outcome, a.error_code, a.reach, a.retries)
        for a in broker.store.attempts(cluster_id)
    ]


REQUEST16 = QuoteRequest(rank=RankRequest(gpus=16, priority=(EAST.id, WEST.id)))  # 2 nodes


def test_fallback_across_zones_regions_and_retries(tmp_path: Path, azure: AzureWorld) -> None:
    broker, _ = make_broker(tmp_path, azure)
    fake = azure.fake
    fake.inject("create", "ZonalAllocationFailed", kind="lro", zone="1", location="eastus")
    fake.inject("create", "OperationNotAllowed", message=QUOTA, zone="2", location="eastus")
    fake.inject("create", "InternalServerError", status=500, zone="1", location="westus2", times=4)
    throttled = fake.inject(
        "create", "TooManyRequests", status=429, retry_after=3, times=2, location="westus2"
    )

    cluster = broker.provision(REQUEST16)

    assert cluster.status is Status.RUNNING
    assert (cluster.shape_id, cluster.region, cluster.zone) == (WEST.id, "westus2", "2")
    assert summary(broker, cluster.id) == [
        # a stockout: the Failed VM and its sibling were rolled back; next zone
        (EAST.id, "1", "failed", "ZonalAllocationFailed", "zone", 0),
        # a cores quota (OperationNotAllowed): next region, eastus zone 3 is never asked
        (EAST.id, "2", "failed", "OperationNotAllowed", "region", 0),
        # 500s until tenacity gives up (4 calls): next zone
        (WEST.id, "1", "failed", "InternalServerError", "call", 3),
        # throttled twice (Retry-After honoured), then the same call works
        (WEST.id, "2", "running", None, None, 2),
    ]
    assert throttled.hits == 2
    zones_put = [(b["location"], b["zones"][0]) for b in fake.puts]
    assert zones_put == [("eastus", "1"), ("eastus", "1"), ("westus2", "2"), ("westus2", "2")]
    assert 3.0 in azure.clock.slept  # the Retry-After hint, through the broker's sleep
    left = fake.leftovers()
    assert sorted(left["vms"]) == sorted(n.provider_id for n in cluster.nodes)
    assert left["ppgs"] == [f"{cluster.id}-c1-a4"]

    released = broker.release(cluster.id)
    assert released.status is Status.COMPLETED
    assert fake.leftovers() == NOTHING


def test_a_partial_gang_is_cleaned_then_the_next_zone_runs(
    tmp_path: Path, azure: AzureWorld
) -> None:
    broker, _ = make_broker(tmp_path, azure)
    azure.fake.inject("create", kind="evict", zone="1")

    cluster = broker.provision(REQUEST16)

    assert (cluster.status, cluster.zone) == (Status.RUNNING, "2")
    first, second = broker.store.attempts(cluster.id)
    assert (first.zone, first.outcome, first.error_code, first.reach) == (
        "1",
        "failed",
        "VMEvictedDuringLaunch",
        "zone",
    )
    assert (second.zone, second.outcome) == ("2", "running")
    broker.release(cluster.id)
    assert azure.fake.leftovers() == NOTHING


def test_nothing_works_and_nothing_is_left(tmp_path: Path, azure: AzureWorld) -> None:
    broker, _ = make_broker(tmp_path, azure)
    failing = azure.fake.inject("create", "AllocationFailed", kind="lro", times=100)

    with pytest.raises(ProvisionFailed):
        broker.provision(REQUEST16)

    assert azure.fake.leftovers() == NOTHING
    (cluster,) = broker.list_clusters()
    assert (cluster.status, cluster.reason) == (Status.FAILED, "NoCapacity")
    assert len(broker.store.attempts(cluster.id)) == 5  # 3 zones east + 2 west
    assert failing.hits == 10  # both VMs of every attempt


def test_reconcile_removes_orphans_and_keeps_the_running_gang(
    tmp_path: Path, azure: AzureWorld
) -> None:
    broker, provider = make_broker(tmp_path, azure)
    cluster = broker.provision(REQUEST16)
    # a gang a crashed attempt of the same cluster left behind, in another region
    orphan = request(WEST, zone="1", count=2, cluster=cluster.id, attempt="c1-a9")
    orphan = orphan.model_copy(update={"tags": {**orphan.tags, TAG_BROKER: "default"}})
    provider.launch(orphan, timeout=60)

    report = broker.reconcile()

    assert sorted(n.provider_id for n in report.terminated) == [
        f"{cluster.id}-c1-a9-0",
        f"{cluster.id}-c1-a9-1",
    ]
    left = azure.fake.leftovers()
    assert left["vms"] == sorted(n.provider_id for n in cluster.nodes)
    assert left["ppgs"] == [f"{cluster.id}-c1-a1"]  # the orphans' group went with them
    broker.release(cluster.id)
    assert azure.fake.leftovers() == NOTHING

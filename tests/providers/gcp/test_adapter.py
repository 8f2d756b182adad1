"""The GCP adapter against the fake Compute REST server: gang launch (spot, on-demand, N1 with
attached GPUs), labels, request_id idempotency, compact placement, operation polling, partial
gangs, timeouts, terminate / describe / list_tagged across zones and regions, health."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from broker.api import Broker
from broker.errors import ProvisionFailed
from broker.lifecycle import Status
from broker.provisioner import ProvisionPolicy
from broker.quote import QuoteRequest
from broker.ranking import RankRequest
from providers.base import TAG_ATTEMPT, TAG_BROKER, TAG_CLUSTER, LaunchRequest, Node, NodeState
from providers.config import BrokerConfig
from providers.errors import (
    CallTimeoutError,
    CapacityError,
    InvalidLaunchError,
    Reach,
    RegionConfigError,
)
from providers.gcp.adapter import TAG_REQUEST, instance_names, request_id
from shapes.catalog import Catalog
from tests.conftest import FakeClock, make_shape
from tests.providers.gcp.conftest import CONFIG_LABELS, IMAGE, GcpWorld, gcp_config

A3_SPOT = "gcp:us-central1:a3-highgpu-8g:spot"
A3_EAST = "gcp:us-east4:a3-highgpu-8g:on-demand"
T4 = "gcp:us-central1:n1-standard-8+t4x1:on-demand"
V100_SPOT = "gcp:us-central1:n1-standard-16+v100x2:spot"
G2 = "gcp:us-central1:g2-standard-48:on-demand"
GCE_NAME = re.compile(r"^[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?$")


def ids(nodes: list[Node]) -> list[str]:
    return [n.provider_id for n in nodes]


# -- launch ----------------------------------------------------------------------------------


def test_launch_a_spot_gang_with_compact_placement(gcp: GcpWorld) -> None:
    provider = gcp.provider()
    req = gcp.request(A3_SPOT, count=3)

    nodes = provider.launch(req, timeout=60)

    assert len(nodes) == 3 and ids(nodes) == instance_names(req)
    assert len({n.private_ip for n in nodes}) == 3
    for node in nodes:
        assert node.state is NodeState.RUNNING and node.private_ip
        assert (node.provider, node.region, node.zone) == ("gcp", "us-central1", "us-central1-a")
        assert node.shape_id == A3_SPOT
        assert dict(node.tags).items() >= {**req.tags, **CONFIG_LABELS}.items()
        assert GCE_NAME.match(node.provider_id)
    # one bulkInsert for the whole gang: all or nothing, deterministic names
    (body,) = gcp.fake.bodies("bulkInsert")
    assert (body["count"], body["minCount"]) == ("3", "3") or (body["count"], body["minCount"]) == (
        3,
        3,
    )
    assert sorted(body["perInstanceProperties"]) == instance_names(req)
    props = body["instanceProperties"]
    assert props["machineType"] == "a3-highgpu-8g"  # a bare name, not a URL
    assert props["scheduling"] == {
        "provisioningModel": "SPOT",
        "instanceTerminationAction": "DELETE",
        "onHostMaintenance": "TERMINATE",
        "automaticRestart": False,
    }
    assert props["labels"][TAG_REQUEST] and props["labels"]["team"] == "ml"
    assert props["disks"][0]["initializeParams"]["sourceImage"] == IMAGE
    assert props["networkInterfaces"][0]["network"] == "global/networks/default"
    assert "guestAccelerators" not in props  # A3 machine types come with their GPUs
    # the request_id is the token's uuid5, remembered by Compute
    assert request_id(req.token) in gcp.fake.request_ids
    uuid.UUID(request_id(req.token))
    # a compact placement policy for the gang, named (not a URL) in the properties
    (policy,) = gcp.fake.policies.values()
    assert props["resourcePolicies"] == [policy["name"]]
    assert policy["groupPlacementPolicy"] == {"collocation": "COLLOCATED", "vmCount": 3}
    assert req.tags[TAG_CLUSTER] in policy["description"]

    provider.terminate(nodes)
    assert gcp.fake.instances == {} and gcp.fake.policies == {}
    assert gcp.fake.deleted_policies == [policy["name"]]


def test_launch_an_on_demand_n1_gang_with_attached_gpus(gcp: GcpWorld) -> None:
    provider = gcp.provider()
    req = gcp.request(T4, zone="us-central1-f", count=2)

    nodes = provider.launch(req, timeout=60)

    assert [n.shape_id for n in nodes] == [T4, T4]
    assert {n.zone for n in nodes} == {"us-central1-f"}
    props = gcp.fake.bodies("bulkInsert")[0]["instanceProperties"]
    assert props["machineType"] == "n1-standard-8"
    assert props["guestAccelerators"] == [
        {"acceleratorType": "nvidia-tesla-t4", "acceleratorCount": 1}
    ]
    assert props["scheduling"]["provisioningModel"] == "STANDARD"
    assert props["scheduling"]["onHostMaintenance"] == "TERMINATE"
    assert "resourcePolicies" not in props  # N1 gets no compact placement
    assert gcp.fake.policies == {}
    provider.terminate(nodes)


def test_spot_n1_shape_ids_are_rebuilt_exactly(gcp: GcpWorld) -> None:
    provider = gcp.provider()
    req = gcp.request(V100_SPOT, zone="us-central1-b", count=1)
    nodes = provider.launch(req, timeout=60)
    found = provider.describe(req.tags[TAG_CLUSTER])
    assert [n.shape_id for n in nodes] == [n.shape_id for n in found] == [V100_SPOT]
    provider.terminate(found)


def test_no_compact_policy_for_one_node_or_when_disabled(gcp: GcpWorld) -> None:
    single = gcp.provider().launch(gcp.request(A3_SPOT, count=1), timeout=60)
    off = gcp.provider(config=gcp_config(gcp.server.url, compact_placement=False))
    pair = off.launch(gcp.request(A3_SPOT, count=2), timeout=60)
    assert gcp.fake.count("policyInsert") == 0
    assert all(
        "resourcePolicies" not in b["instanceProperties"] for b in gcp.fake.bodies("bulkInsert")
    )
    off.terminate(single + pair)
    assert gcp.fake.count("policyDelete") == 0


def test_a_failed_launch_deletes_its_compact_policy_at_once(gcp: GcpWorld) -> None:
    provider = gcp.provider()
    gcp.fake.inject("bulkInsert", "stockout")
    with pytest.raises(CapacityError):
        provider.launch(gcp.request(A3_SPOT, count=2), timeout=60)
    assert gcp.fake.count("policyInsert") == 1
    assert gcp.fake.policies == {} and len(gcp.fake.deleted_policies) == 1


def test_operations_are_polled_until_done(gcp: GcpWorld) -> None:
    gcp.fake.op_polls = 4
    gcp.fake.boot_polls = 3
    clock = FakeClock()
    provider = gcp.provider(clock=clock)
    nodes = provider.launch(gcp.request(G2, count=2), timeout=600)
    assert all(n.state is NodeState.RUNNING for n in nodes)
    waits = [where for method, where, _ in gcp.fake.calls if method == "operationGet"]
    # ZoneOperations.wait on the bulkInsert, RegionOperations.wait on the compact policy
    assert (waits.count("us-central1-a"), waits.count("us-central1")) == (4, 4)
    assert clock.slept and max(clock.slept) <= provider.poll_interval
    provider.terminate(nodes)


# -- idempotency ------------------------------------------------------------------------------


def test_same_token_twice_returns_the_same_gang(gcp: GcpWorld) -> None:
    provider = gcp.provider()
    req = gcp.request(A3_SPOT, count=2)
    first = provider.launch(req, timeout=60)
    again = gcp.provider().launch(req, timeout=60)  # even from another process
    assert ids(again) == ids(first)
    assert gcp.fake.count("bulkInsert") == 1
    assert len(gcp.fake.instances) == 2
    provider.terminate(first)


def test_a_timed_out_launch_is_picked_up_by_the_same_token(gcp: GcpWorld) -> None:
    clock = FakeClock()
    provider = gcp.provider(clock=clock)
    req = gcp.request(G2, count=2)
    gcp.fake.inject("bulkInsert", "stuck")  # the operation never says DONE

    with pytest.raises(CallTimeoutError) as caught:
        provider.launch(req, timeout=30)
    assert caught.value.code == "OperationWaitTimeout" and caught.value.reach is Reach.CALL
    assert clock.now - 1_800_000_000.0 >= 30

    nodes = provider.launch(req, timeout=30)  # the VMs exist: awaited, not launched again
    assert ids(nodes) == instance_names(req)
    assert gcp.fake.count("bulkInsert") == 1
    provider.terminate(nodes)


def test_the_request_id_is_stable_across_calls_of_one_attempt(gcp: GcpWorld) -> None:
    provider = gcp.provider()
    req = gcp.request(G2, count=1)
    gcp.fake.inject("bulkInsert", "stockout")
    for _ in range(2):
        with pytest.raises(CapacityError):
            provider.launch(req, timeout=60)
    # Compute answered the repeat with the original (failed) operation: one request_id
    assert list(gcp.fake.request_ids) == [request_id(req.token)]
    assert gcp.fake.faults[0].used == 1


@pytest.mark.parametrize("change", ["count", "zone", "shape"])
def test_same_token_with_other_parameters_is_a_mismatch(gcp: GcpWorld, change: str) -> None:
    provider = gcp.provider()
    req = gcp.request(G2, count=2)
    nodes = provider.launch(req, timeout=60)
    changes: dict[str, dict[str, Any]] = {
        "count": {"count": 3},
        "zone": {"zone": "us-central1-b"},
        "shape": {"shape": gcp.shape("gcp:us-central1:g2-standard-48:spot")},
    }
    with pytest.raises(InvalidLaunchError) as caught:
        provider.launch(req.model_copy(update=changes[change]), timeout=60)
    assert caught.value.code == "IdempotentParameterMismatch"
    assert gcp.fake.count("bulkInsert") == 1
    # another token for the same cluster and attempt would reuse the VM names: refused too
    with pytest.raises(InvalidLaunchError, match="another token"):
        provider.launch(req.model_copy(update={"token": "tok-other"}), timeout=60)
    provider.terminate(nodes)


# -- labels and configuration -----------------------------------------------------------------


def test_invalid_labels_are_refused_by_name_never_rewritten(gcp: GcpWorld) -> None:
    bad_config = gcp.provider(config=gcp_config(gcp.server.url, labels={"team": "ML-Team"}))
    with pytest.raises(InvalidLaunchError, match="team='ML-Team'") as caught:
        bad_config.launch(gcp.request(G2, count=1), timeout=60)
    assert caught.value.code == "InvalidLabel"
    req = gcp.request(G2, count=1)
    upper = req.model_copy(update={"tags": {**req.tags, TAG_ATTEMPT: "C1.A1"}})
    with pytest.raises(InvalidLaunchError, match=r"C1\.A1"):
        gcp.provider().launch(upper, timeout=60)
    assert gcp.fake.count("bulkInsert") == 0


def test_long_cluster_ids_still_make_valid_names(gcp: GcpWorld) -> None:
    req = gcp.request(G2, count=12, cluster="bb-" + "x" * 60)
    names = instance_names(req)
    assert len(set(names)) == 12 and all(GCE_NAME.match(n) for n in names)
    assert instance_names(req) == names  # deterministic


def test_zones_and_regions_outside_the_configuration(gcp: GcpWorld) -> None:
    only_b = gcp.provider(config=gcp_config(gcp.server.url, zones=("us-central1-b",)))
    listed = {s.id: s for s in only_b.list_shapes()}
    assert listed[A3_SPOT].zones == ("us-central1-b",)
    assert all(s.region == "us-central1" for s in listed.values())
    with pytest.raises(CapacityError) as caught:
        only_b.launch(gcp.request(A3_SPOT, count=1), timeout=60)
    assert caught.value.code == "ZoneNotConfigured"
    west = gcp.provider(config=gcp_config(gcp.server.url, regions=("us-west1",)))
    with pytest.raises(RegionConfigError):
        west.launch(gcp.request(A3_SPOT, count=1), timeout=60)
    assert gcp.fake.count("bulkInsert") == 0


# -- partial gangs and timeouts ---------------------------------------------------------------


@pytest.mark.parametrize(("fault", "left"), [("dies", 3), ("deleted", 2)])
def test_a_node_that_dies_while_starting_is_a_partial_gang(
    gcp: GcpWorld, fault: str, left: int
) -> None:
    provider = gcp.provider()
    req = gcp.request(A3_SPOT, count=3)
    gcp.fake.inject("bulkInsert", fault)

    with pytest.raises(CapacityError) as caught:
        provider.launch(req, timeout=60)

    assert caught.value.code == "InstanceTerminatedDuringLaunch"
    assert caught.value.reach is Reach.ZONE
    assert req.tags[TAG_CLUSTER] in caught.value.message
    found = provider.describe(req.tags[TAG_CLUSTER])
    assert len(found) == left  # a TERMINATED VM still holds its disk: it is listed
    assert all(dict(n.tags).items() >= dict(req.tags).items() for n in found)
    if fault == "dies":
        assert sorted(n.state for n in found).count(NodeState.TERMINATING) == 1
    provider.terminate(found)
    assert provider.describe(req.tags[TAG_CLUSTER]) == []
    assert gcp.fake.policies == {}  # swept once the gang's VMs were gone


def test_nodes_that_never_run_time_out(gcp: GcpWorld) -> None:
    clock = FakeClock()
    provider = gcp.provider(clock=clock)
    req = gcp.request(G2, count=2)
    gcp.fake.inject("bulkInsert", "never-running")
    with pytest.raises(CallTimeoutError) as caught:
        provider.launch(req, timeout=45)
    assert caught.value.code == "LaunchWaitTimeout"
    found = provider.describe(req.tags[TAG_CLUSTER])
    assert [n.state for n in found] == [NodeState.PENDING] * 2
    provider.terminate(found)


# -- describe, list_tagged, terminate ---------------------------------------------------------


def test_describe_and_list_tagged_across_zones_and_regions(gcp: GcpWorld) -> None:
    provider = gcp.provider()
    a = gcp.request(A3_SPOT, zone="us-central1-c", count=2)
    b = gcp.request(A3_EAST, zone="us-east4-b", count=1)
    nodes_a, nodes_b = provider.launch(a, timeout=60), provider.launch(b, timeout=60)

    assert ids(provider.describe(a.tags[TAG_CLUSTER])) == ids(nodes_a)
    assert [(n.zone, n.region) for n in provider.describe(b.tags[TAG_CLUSTER])] == [
        ("us-east4-b", "us-east4")
    ]
    assert set(ids(provider.list_tagged())) == set(ids(nodes_a + nodes_b))
    assert provider.describe("bb-nothing-here") == []
    assert provider.describe("Not A Label") == []
    # a provider configured for one region only sees that region
    east = gcp.provider(config=gcp_config(gcp.server.url, regions=("us-east4",)))
    assert ids(east.list_tagged()) == ids(nodes_b)

    provider.terminate(nodes_a + nodes_b)
    assert provider.list_tagged() == []
    provider.terminate(nodes_a)  # already gone: fine
    provider.terminate([])
    assert gcp.fake.policies == {}


def test_terminate_waits_until_the_vms_are_gone(gcp: GcpWorld) -> None:
    gcp.fake.delete_polls = 3
    provider = gcp.provider()
    nodes = provider.launch(gcp.request(G2, count=2), timeout=60)
    provider.terminate(nodes)
    assert gcp.fake.instances == {}
    assert gcp.fake.count("get") >= 2 * 3


def test_terminate_times_out_when_vms_linger(gcp: GcpWorld) -> None:
    clock = FakeClock()
    provider = gcp.provider(clock=clock, terminate_timeout=120, poll_interval=30)
    nodes = provider.launch(gcp.request(G2, count=1), timeout=60)
    gcp.fake.delete_polls = 10**9
    with pytest.raises(CallTimeoutError) as caught:
        provider.terminate(nodes)
    assert caught.value.code == "TerminateWaitTimeout"
    assert provider.describe(nodes[0].cluster_id or "")[0].state is NodeState.TERMINATING
    gcp.fake.delete_polls = 1
    gcp.fake.instances[(nodes[0].zone, nodes[0].provider_id)]["_reads"] = 0
    provider.terminate(nodes)
    assert gcp.fake.instances == {}


def test_health_names_the_project_and_no_credential(gcp: GcpWorld) -> None:
    provider = gcp.provider()
    ok, detail = provider.health()
    assert ok and "burst-test" in detail and "us-central1" in detail
    assert "ya29" not in detail
    gcp.fake.inject("projectsGet", "403")
    ok, detail = gcp.provider().health()
    assert not ok and detail.startswith("Unauthorized: forbidden")


def test_requests_with_another_provider_shape_are_refused(gcp: GcpWorld) -> None:
    aws = gcp.catalog.get("aws:us-east-1:p5.48xlarge:spot")
    assert aws is not None
    req = LaunchRequest(shape=aws, zone="use1-az4", count=1, token="t", tags={})
    with pytest.raises(InvalidLaunchError):
        gcp.provider().launch(req, timeout=60)


# -- fallback through the broker's provisioner ------------------------------------------------

CENTRAL = make_shape(
    "a3-highgpu-8g",
    provider="gcp",
    region="us-central1",
    gpu="H100",
    price=50.0,
    provisioning="spot",
    zones=("us-central1-a", "us-central1-b", "us-central1-c"),
)
EAST = make_shape(
    "a3-highgpu-8g",
    provider="gcp",
    region="us-east4",
    gpu="H100",
    price=60.0,
    zones=("us-east4-a", "us-east4-b"),
)
FALLBACK_CATALOG = Catalog.of([CENTRAL, EAST])
SIXTEEN = QuoteRequest(rank=RankRequest(gpus=16, priority=(CENTRAL.id, EAST.id)))  # 2 nodes


def make_broker(tmp_path: Path, gcp: GcpWorld, clock: FakeClock) -> Broker:
    broker = Broker(
        state_dir=tmp_path / "state",
        catalog=FALLBACK_CATALOG,
        config=BrokerConfig.enabling(gcp.config),
        policy=ProvisionPolicy(retry_attempts=4, retry_initial_wait=1.0, retry_max_wait=4.0),
        clock=clock,
        sleep=clock.sleep,
    )
    broker._providers["gcp"] = gcp.provider(catalog=FALLBACK_CATALOG)
    return broker


def attempts(broker: Broker, cluster_id: str) -> list[tuple[Any, ...]]:
    return [
        (a.shape_id, a.zone, a.outcome, a.error_code, a.reach, a.retries)
        for a in broker.store.attempts(cluster_id)
    ]


def test_fallback_across_zones_regions_and_retries(tmp_path: Path, gcp: GcpWorld) -> None:
    clock = FakeClock()
    broker = make_broker(tmp_path, gcp, clock)
    gcp.fake.inject("bulkInsert", "stockout", zone="us-central1-a")
    gcp.fake.inject("bulkInsert", "op-quota", zone="us-central1-b")
    gcp.fake.inject("bulkInsert", "500", zone="us-east4-a", times=4)
    gcp.fake.inject("bulkInsert", "429", zone="us-east4-b", times=2)

    cluster = broker.provision(SIXTEEN)

    assert cluster.status is Status.RUNNING
    assert (cluster.shape_id, cluster.zone) == (EAST.id, "us-east4-b")
    assert attempts(broker, cluster.id) == [
        # a stockout (an operation's 503): next zone
        (CENTRAL.id, "us-central1-a", "failed", "ZONE_RESOURCE_POOL_EXHAUSTED", "zone", 0),
        # a regional GPU quota: next region (us-central1-c is never asked)
        (CENTRAL.id, "us-central1-b", "failed", "QUOTA_EXCEEDED", "region", 0),
        # 500s until tenacity gives up (4 calls): next zone
        (EAST.id, "us-east4-a", "failed", "backendError", "call", 3),
        # throttled twice, then the same call (same request_id) works
        (EAST.id, "us-east4-b", "running", None, None, 2),
    ]
    zones = [where for method, where, _ in gcp.fake.calls if method == "bulkInsert"]
    assert zones == ["us-central1-a", "us-central1-b", *["us-east4-a"] * 4, *["us-east4-b"] * 3]
    assert len(clock.slept) >= 3 + 2  # tenacity's backoffs, through the broker's sleep
    live = gcp.fake.live()
    assert sorted(i["name"] for i in live) == sorted(n.provider_id for n in cluster.nodes)
    assert {i["labels"][TAG_ATTEMPT] for i in live} == {"c1-a4"}

    released = broker.release(cluster.id)
    assert released.status is Status.COMPLETED
    assert gcp.fake.instances == {} and gcp.fake.policies == {}


def test_partial_gang_is_cleaned_then_the_next_zone_runs(tmp_path: Path, gcp: GcpWorld) -> None:
    broker = make_broker(tmp_path, gcp, FakeClock())
    gcp.fake.inject("bulkInsert", "dies", zone="us-central1-a")

    cluster = broker.provision(SIXTEEN)

    assert (cluster.status, cluster.zone) == (Status.RUNNING, "us-central1-b")
    first, second = broker.store.attempts(cluster.id)
    assert (first.outcome, first.error_code) == ("cleaned", "InstanceTerminatedDuringLaunch")
    assert (first.nodes_created, first.nodes_cleaned) == (2, 2)
    assert (second.zone, second.outcome) == ("us-central1-b", "running")
    assert len(gcp.fake.policies) == 1  # the running gang's only
    broker.release(cluster.id)
    assert gcp.fake.instances == {} and gcp.fake.policies == {}


def test_nothing_works_and_nothing_is_left(tmp_path: Path, gcp: GcpWorld) -> None:
    broker = make_broker(tmp_path, gcp, FakeClock())
    gcp.fake.inject("bulkInsert", "stockout-details", times=5)

    with pytest.raises(ProvisionFailed):
        broker.provision(SIXTEEN)

    assert gcp.fake.count("bulkInsert") == 5  # 3 zones + 2 zones, once each
    assert gcp.fake.instances == {} and gcp.fake.policies == {}
    assert [(c.status, c.reason) for c in broker.list_clusters()] == [(Status.FAILED, "NoCapacity")]


def test_the_fake_also_answers_single_inserts(gcp: GcpWorld) -> None:
    from google.cloud import compute_v1

    provider = gcp.provider()
    labels = {TAG_CLUSTER: "bb-single", TAG_ATTEMPT: "c1-a1"}
    instance = compute_v1.Instance(
        name="bb-single-c1-a1-0",
        machine_type="zones/us-central1-a/machineTypes/g2-standard-4",
        labels=labels,
    )
    op = provider.instances.insert_unary(
        project=gcp.config.project, zone="us-central1-a", instance_resource=instance, retry=None
    )
    assert op.name
    (node,) = provider.describe("bb-single")
    assert node.shape_id == "gcp:us-central1:g2-standard-4:on-demand"
    provider.terminate([node])


def test_reconcile_finds_orphans_on_an_enabled_cloud_the_store_never_used(
    tmp_path: Path, gcp: GcpWorld
) -> None:
    """A fresh store (its clusters deleted, or another state dir) still sweeps the clouds
    the configuration enables: a tagged VM of this deployment that no cluster owns goes."""
    broker = make_broker(tmp_path, gcp, FakeClock())
    assert broker.store.list_clusters() == []
    provider = gcp.provider()
    stray = gcp.request(count=2)
    stray = stray.model_copy(update={"tags": {**stray.tags, TAG_BROKER: "default"}})
    theirs = gcp.request(count=1)  # another deployment's ("test"): not ours to remove
    provider.launch(stray, timeout=60)
    kept = provider.launch(theirs, timeout=60)

    report = broker.reconcile()

    assert sorted(n.cluster_id or "" for n in report.terminated) == [stray.tags[TAG_CLUSTER]] * 2
    assert [i["name"] for i in gcp.fake.live()] == [n.provider_id for n in kept]
    assert report.problems == []

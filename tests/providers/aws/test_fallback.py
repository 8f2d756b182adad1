"""The broker's provisioner driving the AWS adapter on moto: fallback across zones, regions
and shapes, tenacity retries counted per attempt, partial-gang cleanup, and nothing left
behind but the running cluster. (Tests may import broker; the adapter never does.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from broker.api import Broker
from broker.lifecycle import Status
from broker.provisioner import ProvisionPolicy
from broker.quote import QuoteRequest
from broker.ranking import RankRequest
from providers.aws.adapter import AwsProvider
from providers.base import TAG_ATTEMPT, TAG_CLUSTER
from providers.config import BrokerConfig
from shapes.catalog import Catalog
from tests.conftest import FakeClock, make_shape
from tests.providers.aws.conftest import AwsWorld, inject, moto_instances, raw_client

EAST = make_shape(
    "p5.48xlarge",
    gpu="H100",
    price=50.0,
    region="us-east-1",
    zones=("use1-az1", "use1-az2", "use1-az3"),
)
WEST = make_shape(
    "p5.48xlarge",
    gpu="H100",
    price=60.0,
    region="us-west-2",
    zones=("usw2-az1", "usw2-az2"),
)
CATALOG = Catalog.of([EAST, WEST])
REQUEST = QuoteRequest(rank=RankRequest(gpus=16, priority=(EAST.id, WEST.id)))  # 2 nodes


def make_broker(tmp_path: Path, aws: AwsWorld, clock: FakeClock) -> tuple[Broker, AwsProvider]:
    broker = Broker(
        state_dir=tmp_path / "state",
        catalog=CATALOG,
        config=BrokerConfig.enabling(aws.config),
        policy=ProvisionPolicy(retry_attempts=4, retry_initial_wait=1.0, retry_max_wait=4.0),
        clock=clock,
        sleep=clock.sleep,
    )
    provider = aws.provider(catalog=CATALOG)
    broker._providers["aws"] = provider
    return broker, provider


def summary(broker: Broker, cluster_id: str) -> list[tuple[Any, ...]]:
    return [
        (a.shape_id, a.zone, a.outcome, a.error_code, a.reach, a.retries)
        for a in broker.store.attempts(cluster_id)
    ]


def test_fallback_across_zones_regions_and_retries(tmp_path: Path, aws: AwsWorld) -> None:
    clock = FakeClock()
    broker, provider = make_broker(tmp_path, aws, clock)
    east = inject(
        provider.client("us-east-1"),
        "RunInstances",
        ["InsufficientInstanceCapacity", "VcpuLimitExceeded"],
    )
    west = inject(
        provider.client("us-west-2"),
        "RunInstances",
        ["InternalError"] * 4 + ["RequestLimitExceeded"] * 2,
    )

    cluster = broker.provision(REQUEST)

    assert cluster.status is Status.RUNNING
    assert (cluster.shape_id, cluster.region, cluster.zone) == (WEST.id, "us-west-2", "usw2-az2")
    assert summary(broker, cluster.id) == [
        # a stockout: next zone
        (EAST.id, "use1-az1", "failed", "InsufficientInstanceCapacity", "zone", 0),
        # a regional vCPU quota: next region (use1-az3 is never asked)
        (EAST.id, "use1-az2", "failed", "VcpuLimitExceeded", "region", 0),
        # 500s until tenacity gives up (4 calls): next zone
        (WEST.id, "usw2-az1", "failed", "InternalError", "call", 3),
        # throttled twice, then the same call (same token) works
        (WEST.id, "usw2-az2", "running", None, None, 2),
    ]
    # exactly one HTTP call per launch call: botocore never retried behind tenacity's back
    assert (east.calls, west.calls) == (2, 4 + 3)
    assert east.remaining == west.remaining == 0
    zones_asked = [p["Placement"]["AvailabilityZone"] for p in east.params + west.params]
    assert zones_asked == ["us-east-1b", "us-east-1c", *["us-west-2b"] * 4, *["us-west-2a"] * 3]
    attempts = broker.store.attempts(cluster.id)
    tokens = [p["ClientToken"] for p in west.params]
    assert tokens == [attempts[2].token] * 4 + [attempts[3].token] * 3
    assert len(clock.slept) == 3 + 2  # tenacity's backoffs only, through the broker's sleep

    # moto runs the running cluster's instances and nothing else
    live = moto_instances()
    assert sorted(i["InstanceId"] for i in live) == sorted(n.provider_id for n in cluster.nodes)
    assert len(live) == 2
    for instance in live:
        tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
        assert tags[TAG_CLUSTER] == cluster.id and tags[TAG_ATTEMPT] == "c1-a4"
        assert instance["_region"] == "us-west-2"

    released = broker.release(cluster.id)
    assert released.status is Status.COMPLETED
    assert moto_instances() == []
    # every placement group the cluster's attempts made is gone too; a failed call deletes
    # its attempt's group at once, so each of the 9 launch calls made one
    assert aws.placement_groups.groups == {}
    assert len(aws.placement_groups.created) == 2 + 4 + 3


def test_partial_gang_is_cleaned_then_the_next_zone_runs(tmp_path: Path, aws: AwsWorld) -> None:
    clock = FakeClock()
    broker, provider = make_broker(tmp_path, aws, clock)
    reclaimed: list[str] = []

    def reclaim_one_instance_once(parsed: dict[str, Any], **_: Any) -> None:
        if not reclaimed:
            reclaimed.append(parsed["Instances"][0]["InstanceId"])
            raw_client("us-east-1").terminate_instances(InstanceIds=reclaimed)

    provider.client("us-east-1").meta.events.register(
        "after-call.ec2.RunInstances", reclaim_one_instance_once
    )

    cluster = broker.provision(REQUEST)

    assert (cluster.status, cluster.zone) == (Status.RUNNING, "use1-az2")
    first, second = broker.store.attempts(cluster.id)
    assert (first.zone, first.outcome, first.error_code) == (
        "use1-az1",
        "cleaned",
        "InstanceTerminatedDuringLaunch",
    )
    assert (first.nodes_created, first.nodes_cleaned) == (1, 1)
    assert (second.zone, second.outcome) == ("use1-az2", "running")
    assert sorted(i["InstanceId"] for i in moto_instances()) == sorted(
        n.provider_id for n in cluster.nodes
    )
    broker.release(cluster.id)
    assert moto_instances() == []
    assert aws.placement_groups.groups == {}


def test_nothing_works_and_nothing_is_left(tmp_path: Path, aws: AwsWorld) -> None:
    clock = FakeClock()
    broker, provider = make_broker(tmp_path, aws, clock)
    runs = inject(provider, "RunInstances", ["InsufficientInstanceCapacity"] * 5)

    try:
        broker.provision(REQUEST)
    except Exception as exc:
        assert type(exc).__name__ == "ProvisionFailed"
    else:
        raise AssertionError("provisioning should have failed")

    assert runs.calls == 5  # 3 zones east + 2 west, once each
    assert moto_instances() == []
    assert aws.placement_groups.groups == {}
    clusters = broker.list_clusters()
    assert [c.status for c in clusters] == [Status.FAILED]
    assert clusters[0].reason == "NoCapacity"

"""The AWS adapter against moto: gang launch, tags, spot, placement groups, idempotency,
partial gangs, waits, terminate, describe/list across regions, errors, health."""

from __future__ import annotations

import os
import re
import uuid
from typing import Any
from unittest import mock

import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError, ReadTimeoutError

from providers.aws import adapter as adapter_module
from providers.aws.adapter import client_config
from providers.aws.config import AwsConfig
from providers.base import TAG_ATTEMPT, TAG_BROKER, TAG_CLUSTER, LaunchRequest, Node, NodeState
from providers.errors import (
    AuthError,
    CallTimeoutError,
    CapacityError,
    InvalidLaunchError,
    ProviderError,
    QuotaError,
    Reach,
    RegionConfigError,
    ThrottledError,
    TransientError,
)
from shapes.model import Shape
from tests.providers.aws.conftest import (
    CONFIG_TAGS,
    REGIONS,
    AwsWorld,
    FakeClock,
    inject,
    moto_instances,
    new_session,
    raw_client,
    record,
)

P5_SPOT = "aws:us-east-1:p5.48xlarge:spot"
P5 = "aws:us-east-1:p5.48xlarge:on-demand"
G5_WEST = "aws:us-west-2:g5.xlarge:on-demand"
# moto's account: us-east-1a..f are use1-az6, az1, az2, az4, az3, az5
ZONE, ZONE_NAME = "use1-az4", "us-east-1d"


def shape(aws: AwsWorld, shape_id: str) -> Shape:
    found = aws.catalog.get(shape_id)
    assert found is not None, shape_id
    return found


def request(
    aws: AwsWorld,
    shape_id: str = P5_SPOT,
    zone: str = ZONE,
    count: int = 2,
    *,
    cluster: str | None = None,
    attempt: str = "c1-a1",
    token: str | None = None,
) -> LaunchRequest:
    return LaunchRequest(
        shape=shape(aws, shape_id),
        zone=zone,
        count=count,
        token=token or f"tok-{uuid.uuid4().hex}",
        tags={
            TAG_BROKER: "test",
            TAG_CLUSTER: cluster or f"bb-{uuid.uuid4().hex[:12]}",
            TAG_ATTEMPT: attempt,
        },
    )


def ids(nodes: list[Node]) -> list[str]:
    return [n.provider_id for n in nodes]


def tags_of(resource: dict[str, Any], key: str = "Tags") -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get(key, [])}


# -- launch ----------------------------------------------------------------------------------


def test_launch_a_spot_gang_in_one_zone(aws: AwsWorld) -> None:
    provider = aws.provider()
    runs = record(provider, "RunInstances")
    req = request(aws, count=3)

    nodes = provider.launch(req, timeout=60)

    assert len(nodes) == 3 and len(set(ids(nodes))) == 3
    assert len({n.private_ip for n in nodes}) == 3
    for node in nodes:
        assert node.state is NodeState.RUNNING and node.private_ip
        assert (node.provider, node.region, node.zone) == ("aws", "us-east-1", ZONE)
        assert node.shape_id == P5_SPOT
        assert dict(node.tags).items() >= dict(req.tags).items()
        assert node.tags["team"] == "ml"  # the configured tags too
    # one RunInstances for the whole gang, all or nothing, with the attempt's token
    assert runs.calls == 1
    params = runs.params[0]
    assert (params["MinCount"], params["MaxCount"]) == (3, 3)
    assert params["ClientToken"] == req.token
    assert params["Placement"]["AvailabilityZone"] == ZONE_NAME
    assert params["InstanceMarketOptions"] == {
        "MarketType": "spot",
        "SpotOptions": {
            "SpotInstanceType": "one-time",
            "InstanceInterruptionBehavior": "terminate",
        },
    }
    assert "MaxPrice" not in str(params)
    kinds = {spec["ResourceType"] for spec in params["TagSpecifications"]}
    assert kinds == {"instance", "volume", "network-interface", "spot-instances-request"}
    assert params["ImageId"] == aws.images["us-east-1"]

    live = {i["InstanceId"]: i for i in moto_instances("us-east-1")}
    assert set(live) == set(ids(nodes))
    ec2 = raw_client("us-east-1")
    for instance in live.values():
        assert instance["ClientToken"] == req.token
        assert instance["InstanceLifecycle"] == "spot"
        assert instance["Placement"]["AvailabilityZone"] == ZONE_NAME
        tags = tags_of(instance)
        assert tags.items() >= {**req.tags, **CONFIG_TAGS}.items()
        assert tags["Name"] == f"{req.tags[TAG_CLUSTER]}-c1-a1"
        volumes = ec2.describe_volumes(
            Filters=[{"Name": "attachment.instance-id", "Values": [instance["InstanceId"]]}]
        )["Volumes"]
        assert volumes and all(
            tags_of(v).items() >= req.tags.items() for v in volumes
        )  # tags on the volume too
    # ordered by AMI launch index
    assert [live[i]["AmiLaunchIndex"] for i in ids(nodes)] == [0, 1, 2]
    provider.terminate(nodes)


def test_on_demand_launch_has_no_market_options(aws: AwsWorld) -> None:
    provider = aws.provider()
    runs = record(provider, "RunInstances")
    nodes = provider.launch(request(aws, P5, count=1), timeout=60)
    assert "InstanceMarketOptions" not in runs.params[0]
    kinds = {spec["ResourceType"] for spec in runs.params[0]["TagSpecifications"]}
    assert kinds == {"instance", "volume", "network-interface"}
    assert nodes[0].shape_id == P5
    assert "InstanceLifecycle" not in moto_instances("us-east-1")[0]
    provider.terminate(nodes)


def test_a_cluster_placement_group_for_a_multi_node_gang(aws: AwsWorld) -> None:
    provider = aws.provider()
    runs = record(provider, "RunInstances")
    req = request(aws, count=2)
    nodes = provider.launch(req, timeout=60)

    name = f"{req.tags[TAG_CLUSTER]}-c1-a1"
    groups = aws.placement_groups.in_region("us-east-1")
    assert list(groups) == [name]
    assert groups[name]["Strategy"] == "cluster"
    assert tags_of(groups[name]).items() >= req.tags.items()
    assert runs.params[0]["Placement"] == {"AvailabilityZone": ZONE_NAME, "GroupName": name}

    provider.terminate(nodes)  # the cluster's empty placement group goes with it
    assert aws.placement_groups.in_region("us-east-1") == {}
    assert aws.placement_groups.deleted == [("us-east-1", name)]


def test_a_failed_call_never_leaves_its_group_behind(aws: AwsWorld) -> None:
    """Any error of RunInstances deletes the attempt's group at once (if tenacity then gives
    up, nothing else would): the retry of the same attempt makes it again."""
    provider = aws.provider()
    inject(provider, "RunInstances", ["RequestLimitExceeded"])
    east = request(aws, count=2, cluster="bb-moved", attempt="c1-a1")
    with pytest.raises(ThrottledError):
        provider.launch(east, timeout=60)
    assert aws.placement_groups.groups == {}

    nodes = provider.launch(east, timeout=60)  # the retry, same token
    assert list(aws.placement_groups.in_region("us-east-1")) == ["bb-moved-c1-a1"]
    west = request(aws, G5_WEST, "usw2-az1", count=2, cluster="bb-moved", attempt="c1-a2")
    nodes += provider.launch(west, timeout=60)
    assert list(aws.placement_groups.in_region("us-west-2")) == ["bb-moved-c1-a2"]
    provider.terminate(nodes)
    assert aws.placement_groups.groups == {}


def test_no_placement_group_for_one_node_or_when_disabled(aws: AwsWorld) -> None:
    provider = aws.provider()
    one = provider.launch(request(aws, count=1), timeout=60)
    disabled = aws.provider(aws.config.model_copy(update={"placement_group": False}))
    runs = record(disabled, "RunInstances")
    two = disabled.launch(request(aws, count=2), timeout=60)
    assert aws.placement_groups.created == []
    assert "GroupName" not in runs.params[0]["Placement"]
    sweeps = record(disabled, "DescribePlacementGroups")
    disabled.terminate(two)  # placement_group = false: no placement-group call at all
    assert sweeps.calls == 0
    provider.terminate(one)


def test_placement_group_only_where_the_type_supports_it(
    aws: AwsWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = aws.provider()
    hook_calls: list[str] = []

    def no_cluster_strategy(parsed: dict[str, Any], **_: Any) -> None:
        hook_calls.append("x")
        for info in parsed.get("InstanceTypes", []):
            info["PlacementGroupInfo"] = {"SupportedStrategies": ["spread"]}

    provider.client("us-east-1").meta.events.register(
        "after-call.ec2.DescribeInstanceTypes", no_cluster_strategy
    )
    nodes = provider.launch(request(aws, count=2), timeout=60)
    assert hook_calls and aws.placement_groups.created == []
    provider.terminate(nodes)


def test_capacity_error_is_zone_scoped_and_leaves_nothing(aws: AwsWorld) -> None:
    provider = aws.provider()
    runs = inject(provider, "RunInstances", ["InsufficientInstanceCapacity"])
    req = request(aws, count=3)

    with pytest.raises(CapacityError) as caught:
        provider.launch(req, timeout=60)

    err = caught.value
    assert (err.reach, err.code, err.provider) == (
        Reach.ZONE,
        "InsufficientInstanceCapacity",
        "aws",
    )
    assert runs.calls == 1
    assert provider.describe(req.tags[TAG_CLUSTER]) == []
    assert moto_instances() == []
    # the placement group made for the attempt was removed with the refusal
    assert aws.placement_groups.created and aws.placement_groups.groups == {}


def test_a_stockout_of_one_instance_type_only(aws: AwsWorld) -> None:
    provider = aws.provider()
    p5 = inject(provider, "RunInstances", ["InsufficientInstanceCapacity"] * 3, "p5.48xlarge")
    with pytest.raises(CapacityError):
        provider.launch(request(aws, P5, count=1), timeout=60)
    g5 = request(aws, "aws:us-east-1:g5.xlarge:on-demand", "use1-az1", count=1)
    nodes = provider.launch(g5, timeout=60)
    assert (p5.calls, p5.injected) == (1, ["InsufficientInstanceCapacity"])
    provider.terminate(nodes)


def test_quota_error_is_region_scoped(aws: AwsWorld) -> None:
    provider = aws.provider()
    inject(provider, "RunInstances", ["VcpuLimitExceeded"])
    with pytest.raises(QuotaError) as caught:
        provider.launch(request(aws, P5, count=1), timeout=60)
    assert (caught.value.reach, caught.value.code) == (Reach.REGION, "VcpuLimitExceeded")
    assert moto_instances() == []


def test_same_token_twice_returns_the_same_instances(aws: AwsWorld) -> None:
    provider = aws.provider()
    runs = record(provider, "RunInstances")
    req = request(aws, count=3)
    first = provider.launch(req, timeout=60)
    again = provider.launch(req, timeout=60)
    assert ids(again) == ids(first)
    assert runs.calls == 1  # moto ignores ClientToken: only the lookup prevents a 2nd gang
    assert len(moto_instances()) == 3
    provider.terminate(first)


def test_same_token_for_another_gang_is_a_mismatch(aws: AwsWorld) -> None:
    provider = aws.provider()
    req = request(aws, count=2)
    nodes = provider.launch(req, timeout=60)
    for other in (
        req.model_copy(update={"count": 3}),
        req.model_copy(update={"zone": "use1-az1"}),
        req.model_copy(update={"shape": shape(aws, P5)}),
    ):
        with pytest.raises(InvalidLaunchError) as caught:
            provider.launch(other, timeout=60)
        assert caught.value.code == "IdempotentParameterMismatch"
    assert len(moto_instances()) == 2
    provider.terminate(nodes)


def test_lost_response_is_recovered_with_the_same_token(aws: AwsWorld) -> None:
    """RunInstances worked but its answer was lost: the retry finds the gang by token."""
    provider = aws.provider()
    runs = record(provider, "RunInstances")

    def lose_the_answer(**_: Any) -> None:
        raise ReadTimeoutError(endpoint_url="https://ec2.us-east-1.amazonaws.com/")

    events = provider.client("us-east-1").meta.events
    events.register("after-call.ec2.RunInstances", lose_the_answer, unique_id="lose")
    req = request(aws, count=2)
    with pytest.raises(CallTimeoutError) as caught:
        provider.launch(req, timeout=60)
    assert caught.value.code == "ReadTimeoutError"
    assert len(moto_instances()) == 2  # the cloud made them

    events.unregister("after-call.ec2.RunInstances", unique_id="lose")
    nodes = provider.launch(req, timeout=60)
    assert sorted(ids(nodes)) == sorted(i["InstanceId"] for i in moto_instances())
    assert runs.calls == 1
    provider.terminate(nodes)


def test_waits_until_running_then_times_out(aws: AwsWorld, clock: FakeClock) -> None:
    provider = aws.provider(poll_interval=8.0, sleep=clock.sleep, clock=clock)
    pending_polls = {"left": 3}

    def still_pending(parsed: dict[str, Any], **_: Any) -> None:
        if pending_polls["left"] <= 0:
            return
        pending_polls["left"] -= 1
        for reservation in parsed.get("Reservations", []):
            for instance in reservation["Instances"]:
                instance["State"] = {"Code": 0, "Name": "pending"}
                instance.pop("PrivateIpAddress", None)

    provider.client("us-east-1").meta.events.register(
        "after-call.ec2.DescribeInstances", still_pending
    )
    req = request(aws, count=2)
    nodes = provider.launch(req, timeout=60)  # 1 lookup + 3 pending polls, then running
    assert [n.state for n in nodes] == [NodeState.RUNNING] * 2
    assert clock.slept == [1.0, 2.0]  # bounded backoff between polls

    pending_polls["left"] = 100
    with pytest.raises(CallTimeoutError) as caught:
        provider.launch(req, timeout=10)
    assert (caught.value.code, caught.value.reach) == ("LaunchWaitTimeout", Reach.CALL)
    assert sum(clock.slept[2:]) == pytest.approx(10.0)
    assert max(clock.slept) <= 8.0
    pending = provider.describe(req.tags[TAG_CLUSTER])
    assert {n.state for n in pending} == {NodeState.PENDING}

    pending_polls["left"] = 0
    assert ids(provider.launch(req, timeout=10)) == ids(nodes)
    provider.terminate(nodes)


def test_partial_gang_is_a_capacity_error_and_the_rest_can_be_cleaned(aws: AwsWorld) -> None:
    provider = aws.provider()

    def reclaim_one(parsed: dict[str, Any], **_: Any) -> None:
        victim = parsed["Instances"][1]["InstanceId"]  # e.g. spot capacity reclaimed
        raw_client("us-east-1").terminate_instances(InstanceIds=[victim])

    provider.client("us-east-1").meta.events.register("after-call.ec2.RunInstances", reclaim_one)
    req = request(aws, count=3)

    with pytest.raises(CapacityError) as caught:
        provider.launch(req, timeout=60)

    err = caught.value
    assert (err.code, err.reach) == ("InstanceTerminatedDuringLaunch", Reach.ZONE)
    assert "partial gang" in err.message
    left = provider.describe(req.tags[TAG_CLUSTER])
    assert len(left) == 2 and all(n.state is NodeState.RUNNING for n in left)
    assert all(dict(n.tags).items() >= dict(req.tags).items() for n in left)
    with pytest.raises(CapacityError):  # the same token again: still the partial gang
        provider.launch(req, timeout=60)

    provider.terminate(left)
    assert provider.describe(req.tags[TAG_CLUSTER]) == []
    assert moto_instances() == []
    assert aws.placement_groups.groups == {}


# -- throttling and botocore retries ----------------------------------------------------------


def test_throttling_surfaces_for_the_broker_to_retry(aws: AwsWorld) -> None:
    provider = aws.provider()
    runs = inject(provider, "RunInstances", ["RequestLimitExceeded"])
    req = request(aws, P5, count=1)
    with pytest.raises(ThrottledError) as caught:
        provider.launch(req, timeout=60)
    assert (caught.value.reach, caught.value.code) == (Reach.CALL, "RequestLimitExceeded")
    assert runs.calls == 1  # exactly one HTTP call per launch attempt: botocore did not retry
    nodes = provider.launch(req, timeout=60)  # the broker's retry, same token
    assert runs.calls == 2 and len(nodes) == 1
    provider.terminate(nodes)


class _Raw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Any:
        yield self.body


THROTTLE_XML = (
    b'<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error>'
    b"<Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message>"
    b"</Error></Errors><RequestID>r-1</RequestID></Response>"
)


def test_botocore_itself_never_retries(aws: AwsWorld) -> None:
    """A throttling answer on the wire (HTTP 503, EC2's XML): the adapter's client sends it
    once; a default client would have retried it by itself."""
    sends: list[str] = []

    def throttle_on_the_wire(request: Any, **_: Any) -> AWSResponse:
        sends.append(request.url)
        return AWSResponse(request.url, 503, {}, _Raw(THROTTLE_XML))

    provider = aws.provider()
    provider.client("us-east-1").meta.events.register_first(
        "before-send.ec2.DescribeInstances", throttle_on_the_wire
    )
    with pytest.raises(ThrottledError):
        provider.describe("bb-anything")
    assert len(sends) == 1

    default = new_session().client("ec2", region_name="us-east-1")
    default.meta.events.register_first("before-send.ec2.DescribeInstances", throttle_on_the_wire)
    with pytest.raises(ClientError, match="RequestLimitExceeded"):
        default.describe_instances()
    assert len(sends) > 2


HTML_500 = b"<!doctype html><title>500 Internal Server Error</title><h1>Server Error</h1>"


def test_an_answer_that_is_not_aws_is_transient(aws: AwsWorld) -> None:
    """A proxy's (or an emulator's) HTML error page: botocore cannot parse it and raises an
    exception that is not a BotoCoreError; it still leaves as a ProviderError."""

    def html_error(request: Any, **_: Any) -> AWSResponse:
        return AWSResponse(request.url, 500, {}, _Raw(HTML_500))

    provider = aws.provider()
    provider.client("us-east-1").meta.events.register_first(
        "before-send.ec2.DescribeInstances", html_error
    )
    with pytest.raises(ProviderError) as caught:
        provider.describe("bb-anything")
    assert type(caught.value) is TransientError
    assert (caught.value.reach, caught.value.code) == (Reach.CALL, "ResponseParserError")
    assert len(caught.value.message) <= 300


def test_client_configuration(aws: AwsWorld) -> None:
    provider = aws.provider()
    config = provider.client("us-west-2").meta.config
    assert config.retries["total_max_attempts"] == 1
    assert (config.connect_timeout, config.read_timeout) == (10, 60)
    assert provider.client("us-west-2") is provider.client("us-west-2")


# -- zones, images, subnets, regions ----------------------------------------------------------


def test_az_ids_map_to_the_accounts_zone_names(aws: AwsWorld) -> None:
    provider = aws.provider()
    runs = record(provider, "RunInstances")
    nodes = provider.launch(request(aws, G5_WEST, "usw2-az1", count=1), timeout=60)
    assert runs.params[0]["Placement"]["AvailabilityZone"] == "us-west-2b"
    assert nodes[0].zone == "usw2-az1"
    provider.terminate(nodes)


def test_unknown_az_id_is_a_zone_error(aws: AwsWorld) -> None:
    provider = aws.provider()
    runs = record(provider, "RunInstances")
    with pytest.raises(CapacityError) as caught:
        provider.launch(request(aws, zone="use1-az9"), timeout=60)
    assert (caught.value.code, caught.value.reach) == ("Unsupported", Reach.ZONE)
    assert runs.calls == 0


def test_region_outside_the_configuration_is_a_region_error(aws: AwsWorld) -> None:
    provider = aws.provider(AwsConfig(regions=("us-west-2",), images=aws.images))
    with pytest.raises(RegionConfigError) as caught:
        provider.launch(request(aws, count=1), timeout=60)
    assert (caught.value.reach, caught.value.reason) == (Reach.REGION, "NotConfigured")


def test_missing_image_is_a_region_error(aws: AwsWorld) -> None:
    provider = aws.provider(AwsConfig(regions=REGIONS, images={"us-west-2": "ami-12345678"}))
    with pytest.raises(RegionConfigError) as caught:
        provider.launch(request(aws, count=1), timeout=60)
    assert caught.value.reach is Reach.REGION
    assert "us-east-1" in caught.value.message


def test_image_from_the_ssm_parameter(aws: AwsWorld) -> None:
    parameter = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
    expected = raw_client("us-east-1", "ssm").get_parameter(Name=parameter)
    provider = aws.provider(AwsConfig(regions=REGIONS, image_ssm_parameter=parameter))
    runs = record(provider, "RunInstances")
    nodes = provider.launch(request(aws, count=1), timeout=60)
    nodes += provider.launch(request(aws, count=1), timeout=60)
    assert {p["ImageId"] for p in runs.params} == {expected["Parameter"]["Value"]}
    provider.terminate(nodes)


def test_unknown_ssm_parameter_is_a_region_error(aws: AwsWorld) -> None:
    provider = aws.provider(AwsConfig(regions=REGIONS, image_ssm_parameter="/no/such/param"))
    with pytest.raises(RegionConfigError) as caught:
        provider.launch(request(aws, count=1), timeout=60)
    assert caught.value.code == "ParameterNotFound"


def test_subnet_security_groups_and_key_from_the_configuration(aws: AwsWorld) -> None:
    ec2 = raw_client("us-east-1")
    subnets = ec2.describe_subnets(Filters=[{"Name": "availability-zone", "Values": [ZONE_NAME]}])
    subnet = subnets["Subnets"][0]["SubnetId"]
    vpc = subnets["Subnets"][0]["VpcId"]
    group = ec2.create_security_group(GroupName="gpu", Description="gpu", VpcId=vpc)["GroupId"]
    ec2.create_key_pair(KeyName="ml-key")
    config = aws.config.model_copy(
        update={
            "subnets": {ZONE: subnet},
            "security_group_ids": (group,),
            "key_name": "ml-key",
        }
    )
    provider = aws.provider(config)
    nodes = provider.launch(request(aws, count=1), timeout=60)
    instance = moto_instances("us-east-1")[0]
    assert instance["SubnetId"] == subnet
    assert instance["KeyName"] == "ml-key"
    assert [g["GroupId"] for g in instance["SecurityGroups"]] == [group]
    provider.terminate(nodes)


def test_a_subnet_that_does_not_exist_is_a_region_error(aws: AwsWorld) -> None:
    config = aws.config.model_copy(update={"subnets": {ZONE: "subnet-00000000000000000"}})
    provider = aws.provider(config)
    with pytest.raises(RegionConfigError) as caught:
        provider.launch(request(aws, count=1), timeout=60)
    assert caught.value.code == "InvalidSubnetID.NotFound"
    assert moto_instances() == []


# -- describe, list_tagged, terminate ---------------------------------------------------------


def test_describe_and_list_tagged_across_two_regions(aws: AwsWorld) -> None:
    provider = aws.provider()
    cluster = "bb-tworegions"
    east = provider.launch(request(aws, count=2, cluster=cluster), timeout=60)
    west = provider.launch(
        request(aws, G5_WEST, "usw2-az2", count=1, cluster=cluster, attempt="c1-a2"), timeout=60
    )
    other = provider.launch(request(aws, G5_WEST, "usw2-az3", count=1), timeout=60)
    untagged = raw_client("us-west-2").run_instances(
        ImageId=aws.images["us-west-2"], InstanceType="g5.xlarge", MinCount=1, MaxCount=1
    )["Instances"][0]["InstanceId"]

    found = provider.describe(cluster)
    assert ids(found) == ids(east) + ids(west)
    assert [(n.region, n.zone) for n in found] == [
        ("us-east-1", ZONE),
        ("us-east-1", ZONE),
        ("us-west-2", "usw2-az2"),
    ]
    assert found[2].shape_id == G5_WEST
    assert provider.describe("bb-nobody") == []

    tagged = provider.list_tagged()
    assert set(ids(tagged)) == set(ids(east + west + other))
    assert untagged not in ids(tagged)
    assert {n.cluster_id for n in tagged} == {cluster, other[0].cluster_id}

    provider.terminate(east + west + other)
    assert provider.list_tagged() == []
    raw_client("us-west-2").terminate_instances(InstanceIds=[untagged])


def test_describe_reports_shutting_down_as_terminating(aws: AwsWorld) -> None:
    provider = aws.provider()
    nodes = provider.launch(request(aws, count=1), timeout=60)

    def shutting_down(parsed: dict[str, Any], **_: Any) -> None:
        for reservation in parsed.get("Reservations", []):
            for instance in reservation["Instances"]:
                instance["State"] = {"Code": 32, "Name": "shutting-down"}

    events = provider.client("us-east-1").meta.events
    events.register("after-call.ec2.DescribeInstances", shutting_down, unique_id="sd")
    assert [n.state for n in provider.describe(nodes[0].cluster_id or "")] == [
        NodeState.TERMINATING
    ]
    events.unregister("after-call.ec2.DescribeInstances", unique_id="sd")
    provider.terminate(nodes)


def test_terminate_is_idempotent_and_ignores_unknown_instances(aws: AwsWorld) -> None:
    provider = aws.provider()
    nodes = provider.launch(request(aws, count=2), timeout=60)
    ghost = nodes[0].model_copy(update={"provider_id": "i-0123456789abcdef0"})
    provider.terminate([*nodes, ghost])
    assert moto_instances() == []
    provider.terminate(nodes)
    provider.terminate([ghost])
    provider.terminate([])


def test_terminate_goes_in_chunks(aws: AwsWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(adapter_module, "TERMINATE_CHUNK", 2)
    provider = aws.provider()
    nodes = provider.launch(request(aws, P5, count=5), timeout=60)
    calls = record(provider, "TerminateInstances")
    provider.terminate(nodes)
    assert [len(p["InstanceIds"]) for p in calls.params] == [2, 2, 1]
    assert moto_instances() == []


def test_terminate_waits_for_shutting_down_instances(aws: AwsWorld, clock: FakeClock) -> None:
    provider = aws.provider(poll_interval=4.0, sleep=clock.sleep, clock=clock)
    nodes = provider.launch(request(aws, count=2), timeout=60)
    slow = {"left": 2}

    def still_shutting_down(parsed: dict[str, Any], **_: Any) -> None:
        if slow["left"] <= 0:
            return
        slow["left"] -= 1
        for reservation in parsed.get("Reservations", []):
            for instance in reservation["Instances"]:
                instance["State"] = {"Code": 32, "Name": "shutting-down"}

    provider.client("us-east-1").meta.events.register(
        "after-call.ec2.DescribeInstances", still_shutting_down
    )
    provider.terminate(nodes)
    assert clock.slept == [1.0, 2.0]
    assert provider.describe(nodes[0].cluster_id or "") == []


def test_terminate_that_never_finishes_times_out(aws: AwsWorld, clock: FakeClock) -> None:
    provider = aws.provider(
        terminate_timeout=30.0, poll_interval=10.0, sleep=clock.sleep, clock=clock
    )
    nodes = provider.launch(request(aws, count=1), timeout=60)
    stuck = {"on": True}

    def stuck_shutting_down(parsed: dict[str, Any], **_: Any) -> None:
        if stuck["on"]:
            for reservation in parsed.get("Reservations", []):
                for instance in reservation["Instances"]:
                    instance["State"] = {"Code": 32, "Name": "shutting-down"}

    provider.client("us-east-1").meta.events.register(
        "after-call.ec2.DescribeInstances", stuck_shutting_down
    )
    with pytest.raises(CallTimeoutError) as caught:
        provider.terminate(nodes)
    assert caught.value.code == "TerminateWaitTimeout"
    assert sum(clock.slept) == pytest.approx(30.0)
    stuck["on"] = False
    provider.terminate(nodes)


def test_terminate_errors_are_classified(aws: AwsWorld) -> None:
    provider = aws.provider()
    nodes = provider.launch(request(aws, count=1), timeout=60)
    inject(provider, "TerminateInstances", ["UnauthorizedOperation"])
    with pytest.raises(AuthError):
        provider.terminate(nodes)
    provider.terminate(nodes)


def test_list_shapes_are_the_catalogs_aws_shapes_in_the_configured_regions(
    aws: AwsWorld,
) -> None:
    provider = aws.provider(AwsConfig(regions=("us-west-2",), images=aws.images))
    shapes = provider.list_shapes()
    assert shapes and {(s.provider, s.region) for s in shapes} == {("aws", "us-west-2")}
    expected = [s for s in aws.catalog.shapes if s.provider == "aws" and s.region == "us-west-2"]
    assert shapes == expected


def test_every_failure_is_a_provider_error(aws: AwsWorld) -> None:
    provider = aws.provider()
    for operation in ("DescribeAvailabilityZones", "DescribeInstances", "DescribeInstanceTypes"):
        inject(provider, operation, ["InternalError"])
    for _ in range(3):
        with pytest.raises(ProviderError):
            provider.launch(request(aws, count=2), timeout=60)
    nodes = provider.launch(request(aws, count=2), timeout=60)
    provider.terminate(nodes)


# -- health ----------------------------------------------------------------------------------


def test_health_names_the_account_and_never_a_credential(
    aws: AwsWorld, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    provider = aws.provider()
    ok, detail = provider.health()
    assert ok
    assert re.fullmatch(r"account …9012, 2 region\(s\): us-east-1, us-west-2", detail)
    assert "123456789012" not in detail
    secrets = [os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]]
    out = capsys.readouterr()
    for secret in secrets:
        assert secret not in detail + out.out + out.err + caplog.text


def test_health_reports_a_classified_failure(aws: AwsWorld) -> None:
    session = new_session()

    def refuse(params: dict[str, Any], **_: Any) -> Any:
        parsed = {
            "Error": {"Code": "InvalidClientTokenId", "Message": "The token is invalid."},
            "ResponseMetadata": {"HTTPStatusCode": 403},
        }
        return AWSResponse(params["url"], 403, {}, None), parsed

    session.events.register("before-call.sts.GetCallerIdentity", refuse)
    provider = aws.provider(session=session)
    ok, detail = provider.health()
    assert not ok
    assert detail.startswith("Unauthorized: InvalidClientTokenId")
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in detail


def test_health_without_credentials(aws: AwsWorld) -> None:
    credentials = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
    with mock.patch.dict(os.environ):
        for var in credentials:
            os.environ.pop(var, None)
        provider = aws.provider(session=new_session())
        ok, detail = provider.health()
    assert not ok
    assert detail.startswith("Unauthorized: NoCredentialsError")


def test_client_config_helper() -> None:
    config = client_config(connect_timeout=5, read_timeout=10)
    assert config.retries == {"total_max_attempts": 1}
    assert (config.connect_timeout, config.read_timeout) == (5, 10)

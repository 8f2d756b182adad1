"""The AWS adapter against moto: dummy credentials, registered AMIs, fault injection, and a
small fake of the EC2 placement-group API (moto 5.2.5 does not implement it).

Fault injection follows docs/testing-offline.md: a ``before-call.ec2.<Operation>`` hook
answers with an error *before* moto sees the call, so nothing is created behind the error,
and botocore raises the ClientError it would raise for the real cloud.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import botocore.loaders
import botocore.session
import moto
import pytest
from botocore.awsrequest import AWSResponse

from providers.aws.adapter import LIVE_STATES, AwsProvider, client_config
from providers.aws.config import AwsConfig
from providers.base import TAG_CLUSTER
from shapes.catalog import Catalog, load_bundled_catalog
from tests.conftest import FakeClock

REGIONS = ("us-east-1", "us-west-2")
CONFIG_TAGS = {"team": "ml"}

# HTTP statuses EC2 answers these codes with (EC2's "server errors" are 5xx, and so is
# InsufficientInstanceCapacity); every other injected code gets 400.
STATUS = {
    "InsufficientInstanceCapacity": 500,
    "InsufficientHostCapacity": 500,
    "InsufficientReservedInstanceCapacity": 500,
    "InsufficientCapacity": 500,
    "InternalError": 500,
    "InternalFailure": 500,
    "Unavailable": 503,
    "ServiceUnavailable": 503,
    "RequestLimitExceeded": 503,
    "AuthFailure": 401,
    "UnauthorizedOperation": 403,
    "InvalidClientTokenId": 403,
}


# One botocore data loader for every session the tests make: the EC2 model is parsed once.
_LOADER = botocore.loaders.create_loader()


def new_session() -> Any:
    """A fresh boto3 Session (default credential chain) sharing the parsed service models."""
    core = botocore.session.Session()
    core.register_component("data_loader", _LOADER)
    return boto3.session.Session(botocore_session=core)


def error_response(url: str, code: str, status: int | None = None) -> tuple[AWSResponse, Any]:
    """What a before-call hook returns to make botocore raise ClientError(code)."""
    status = STATUS.get(code, 400) if status is None else status
    parsed = {
        "Error": {"Code": code, "Message": f"injected {code} for the test"},
        "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": {}},
    }
    return AWSResponse(url, status, {}, None), parsed


def ok_response(url: str, body: dict[str, Any]) -> tuple[AWSResponse, Any]:
    parsed = {**body, "ResponseMetadata": {"HTTPStatusCode": 200, "HTTPHeaders": {}}}
    return AWSResponse(url, 200, {}, None), parsed


def stash_api_params(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
    """before-parameter-build: keep the call's API parameters for the before-call hooks."""
    context["api_params"] = copy.deepcopy(params)


def stash_params(client: Any) -> None:
    service = client.meta.service_model.service_id.hyphenize()
    client.meta.events.register(
        f"before-parameter-build.{service}", stash_api_params, unique_id="test-stash-api-params"
    )


def clients_of(target: Any) -> list[Any]:
    if isinstance(target, AwsProvider):
        return [target.client(region) for region in target.config.regions]
    return [target]


@dataclass
class Injection:
    """Fails the next ``len(codes)`` matching calls, one code each, then lets calls through.

    ``calls`` counts every matching call (failed or not): one per HTTP request, since the
    clients never retry. ``params`` keeps each matching call's API parameters.
    """

    operation: str
    codes: list[str]
    instance_type: str | None = None
    status: int | None = None
    calls: int = 0
    injected: list[str] = field(default_factory=list)
    params: list[dict[str, Any]] = field(default_factory=list)

    def hook(
        self, params: dict[str, Any], context: dict[str, Any], **_: Any
    ) -> tuple[AWSResponse, Any] | None:
        api = context.get("api_params", {})
        if self.instance_type is not None and api.get("InstanceType") != self.instance_type:
            return None
        self.calls += 1
        self.params.append(api)
        if len(self.injected) >= len(self.codes):
            return None
        code = self.codes[len(self.injected)]
        self.injected.append(code)
        return error_response(params["url"], code, self.status)

    @property
    def remaining(self) -> int:
        return len(self.codes) - len(self.injected)


def inject(
    provider_or_client: Any,
    operation: str,
    codes: Sequence[str],
    instance_type: str | None = None,
    *,
    status: int | None = None,
) -> Injection:
    """Register a ``before-call.ec2.<operation>`` hook on a client (or on every region's
    client of a provider) failing the next len(codes) matching calls; count the calls."""
    injection = Injection(operation, list(codes), instance_type, status)
    for client in clients_of(provider_or_client):
        stash_params(client)
        service = client.meta.service_model.service_id.hyphenize()
        client.meta.events.register(f"before-call.{service}.{operation}", injection.hook)
    return injection


def record(provider_or_client: Any, operation: str) -> Injection:
    """Count (and keep the parameters of) calls, injecting nothing."""
    return inject(provider_or_client, operation, [])


class FakePlacementGroups:
    """EC2 placement groups for moto, which has none: create (with tags), describe (by
    name or tag filter), delete (refused while an instance of the group is alive), and
    RunInstances into an unknown group refused, like EC2 does."""

    def __init__(self) -> None:
        self.groups: dict[tuple[str, str], dict[str, Any]] = {}
        self.members: dict[tuple[str, str], list[str]] = {}
        self.created: list[tuple[str, str]] = []
        self.deleted: list[tuple[str, str]] = []
        self._ids = itertools.count(1)

    def install(self, client: Any) -> None:
        region = client.meta.region_name
        stash_params(client)
        events = client.meta.events
        events.register("before-call.ec2.CreatePlacementGroup", self._create(region))
        events.register("before-call.ec2.DescribePlacementGroups", self._describe(region))
        events.register("before-call.ec2.DeletePlacementGroup", self._delete(region))
        events.register("before-call.ec2.RunInstances", self._check_run(region))
        events.register("after-call.ec2.RunInstances", self._joined(region))

    def in_region(self, region: str) -> dict[str, dict[str, Any]]:
        return {name: g for (r, name), g in self.groups.items() if r == region}

    def _create(self, region: str) -> Callable[..., Any]:
        def hook(params: dict[str, Any], context: dict[str, Any], **_: Any) -> Any:
            api = context["api_params"]
            name = api["GroupName"]
            if (region, name) in self.groups:
                return error_response(params["url"], "InvalidPlacementGroup.Duplicate")
            tags = [
                tag
                for spec in api.get("TagSpecifications", [])
                if spec["ResourceType"] == "placement-group"
                for tag in spec["Tags"]
            ]
            group = {
                "GroupName": name,
                "GroupId": f"pg-{next(self._ids):017x}",
                "Strategy": api.get("Strategy"),
                "State": "available",
                "Tags": tags,
            }
            self.groups[(region, name)] = group
            self.created.append((region, name))
            return ok_response(params["url"], {"PlacementGroup": group})

        return hook

    def _describe(self, region: str) -> Callable[..., Any]:
        def hook(params: dict[str, Any], context: dict[str, Any], **_: Any) -> Any:
            api = context["api_params"]
            found = list(self.in_region(region).values())
            if api.get("GroupNames"):
                found = [g for g in found if g["GroupName"] in api["GroupNames"]]
            for flt in api.get("Filters", []):
                if not flt["Name"].startswith("tag:"):
                    raise AssertionError(f"fake does not know filter {flt['Name']}")
                key = flt["Name"][4:]
                found = [
                    g
                    for g in found
                    if any(t["Key"] == key and t["Value"] in flt["Values"] for t in g["Tags"])
                ]
            return ok_response(params["url"], {"PlacementGroups": copy.deepcopy(found)})

        return hook

    def _delete(self, region: str) -> Callable[..., Any]:
        def hook(params: dict[str, Any], context: dict[str, Any], **_: Any) -> Any:
            name = context["api_params"]["GroupName"]
            if (region, name) not in self.groups:
                return error_response(params["url"], "InvalidPlacementGroup.Unknown")
            if self._alive_members(region, name):
                return error_response(params["url"], "InvalidPlacementGroup.InUse")
            del self.groups[(region, name)]
            self.deleted.append((region, name))
            return ok_response(params["url"], {})

        return hook

    def _check_run(self, region: str) -> Callable[..., Any]:
        def hook(params: dict[str, Any], context: dict[str, Any], **_: Any) -> Any:
            name = context["api_params"].get("Placement", {}).get("GroupName")
            if name and (region, name) not in self.groups:
                return error_response(params["url"], "InvalidPlacementGroup.Unknown")
            return None

        return hook

    def _joined(self, region: str) -> Callable[..., Any]:
        def hook(parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
            name = context["api_params"].get("Placement", {}).get("GroupName")
            if name:
                ids = [i["InstanceId"] for i in parsed.get("Instances", [])]
                self.members.setdefault((region, name), []).extend(ids)

        return hook

    def _alive_members(self, region: str, name: str) -> list[str]:
        ids = self.members.get((region, name), [])
        if not ids:
            return []
        found = raw_client(region).describe_instances(
            Filters=[{"Name": "instance-id", "Values": ids}]
        )
        return [
            i["InstanceId"]
            for r in found["Reservations"]
            for i in r["Instances"]
            if i["State"]["Name"] in LIVE_STATES
        ]


@dataclass
class AwsWorld:
    """One moto account: its AMIs, a config, the placement-group fake, providers made."""

    images: dict[str, str]
    config: AwsConfig
    catalog: Catalog
    placement_groups: FakePlacementGroups
    providers: list[AwsProvider] = field(default_factory=list)

    def provider(
        self, config: AwsConfig | None = None, catalog: Catalog | None = None, **kwargs: Any
    ) -> AwsProvider:
        """An AwsProvider on this moto account (no real sleeping, placement-group fake on)."""
        kwargs.setdefault("poll_interval", 0.01)
        kwargs.setdefault("session", new_session())
        provider = AwsProvider(config or self.config, catalog or self.catalog, **kwargs)
        for region in provider.config.regions:
            self.placement_groups.install(provider.client(region))
        self.providers.append(provider)
        return provider

    def raw(self, region: str = REGIONS[0]) -> Any:
        """A plain EC2 client on the same moto account (no hooks)."""
        return raw_client(region)

    def instances(self, region: str | None = None, *, live: bool = True) -> list[dict[str, Any]]:
        return moto_instances(region, live=live)


_RAW_CLIENTS: dict[tuple[str, str], Any] = {}  # emptied by each mock_aws


def raw_client(region: str = REGIONS[0], service: str = "ec2") -> Any:
    """A plain client (no hooks) on the current moto account."""
    key = (region, service)
    if key not in _RAW_CLIENTS:
        _RAW_CLIENTS[key] = new_session().client(
            service, region_name=region, config=client_config()
        )
    return _RAW_CLIENTS[key]


def moto_instances(region: str | None = None, *, live: bool = True) -> list[dict[str, Any]]:
    """Every instance moto holds (alive only, by default), with its region as ``_region``."""
    found: list[dict[str, Any]] = []
    for r in [region] if region else REGIONS:
        for page in raw_client(r).get_paginator("describe_instances").paginate():
            for reservation in page["Reservations"]:
                for instance in reservation["Instances"]:
                    if not live or instance["State"]["Name"] in LIVE_STATES:
                        found.append({**instance, "_region": r})
    return found


@pytest.fixture
def mock_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """moto with dummy credentials and no default AMIs. Teardown: every instance a test left
    alive must carry the broker's cluster tag (nothing leaks untagged); they are terminated
    and moto is checked to run nothing."""
    for var in (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_EC2",
        "AWS_ENDPOINT_URL_STS",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGIONS[0])
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
    _RAW_CLIENTS.clear()
    with moto.mock_aws():
        yield
        left = moto_instances()
        untagged = [i["InstanceId"] for i in left if TAG_CLUSTER not in _tags(i)]
        for region in REGIONS:
            ids = [i["InstanceId"] for i in left if i["_region"] == region]
            if ids:
                raw_client(region).terminate_instances(InstanceIds=ids)
        assert untagged == [], f"instances left without the {TAG_CLUSTER} tag: {untagged}"
        assert moto_instances() == []
    _RAW_CLIENTS.clear()


def _tags(instance: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in instance.get("Tags", [])}


def register_image(region: str) -> str:
    image = raw_client(region).register_image(
        Name="broker-test-gpu-image",
        Architecture="x86_64",
        RootDeviceName="/dev/sda1",
        VirtualizationType="hvm",
        BlockDeviceMappings=[{"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 100}}],
    )
    return str(image["ImageId"])


@pytest.fixture
def aws(mock_aws: None) -> Iterator[AwsWorld]:
    """The moto account the adapter tests run in: us-east-1 + us-west-2, an AMI in each."""
    images = {region: register_image(region) for region in REGIONS}
    config = AwsConfig(regions=REGIONS, images=images, tags=CONFIG_TAGS)
    world = AwsWorld(images, config, load_bundled_catalog(), FakePlacementGroups())
    yield world
    # Whatever the test left is cleaned through a fresh adapter (no injected faults), which
    # also removes the clusters' placement groups: none may be left behind.
    if world.providers:
        provider = world.provider()
        provider.terminate(provider.list_tagged())
        leftover = sorted(name for (_, name) in world.placement_groups.groups)
        assert leftover == [], f"placement groups left: {leftover}"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()

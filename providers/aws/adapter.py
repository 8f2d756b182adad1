"""AWS EC2 adapter: gangs of N identical GPU instances in one availability zone.

**Launch.** One ``RunInstances`` call per attempt, with ``MinCount = MaxCount = N`` in one AZ:
if EC2 cannot place all N it launches none and answers with an error code
(``InsufficientInstanceCapacity``), so the gang is all-or-nothing at request time. Why not
``CreateFleet(Type="instant")``: it needs a launch template (one more resource to create,
version and delete per attempt), and it reports capacity failures *inside a 200 response*
(``Errors[]`` next to a possibly partial ``Instances[]``) instead of raising, so every
failure would need its own parsing and a fleet to delete. RunInstances fails loudly, with
the codes :mod:`providers.aws.errors` classifies.

**Idempotency.** The request's token is the ``ClientToken``, so EC2 itself never launches a
second gang for a repeated call. Before launching, the adapter also looks for instances that
carry the token (``Instance.ClientToken``): after a lost response they are awaited instead
of launched again. This is what makes a repeated token safe on moto, which ignores
``ClientToken`` (and does not implement the ``client-token`` filter either, so the lookup
filters on the cluster tag server-side and on the token in Python; same result on AWS).

**Waiting.** Accepted is not running: the adapter polls ``DescribeInstances`` (bounded
backoff up to ``poll_interval``, within the call's ``timeout``) until every instance is
``running`` with a private address. An instance that ends ``shutting-down``/``terminated``
first (spot reclaimed, a host failure) makes a partial gang: CapacityError
``InstanceTerminatedDuringLaunch``, the rest left running for the caller to find by tag and
terminate. Running out of time is a CallTimeoutError; calling again with the same token
picks the same instances up.

**Zones.** The catalog stores AZ *ids* (``use1-az4``), which name the same physical zone in
every account; the AZ *name* (``us-east-1d``) an id maps to differs per account, so it is
read from ``DescribeAvailabilityZones`` (cached per region). Nodes report AZ ids.

**Placement.** For N > 1 (and ``placement_group = true``) a ``cluster`` placement group named
for the cluster and attempt is created first, when the type supports it
(``PlacementGroupInfo.SupportedStrategies``); placement groups of a cluster whose instances
are gone are deleted by :meth:`AwsProvider.terminate`, best effort.

**Retries.** Clients are built with ``retries={"total_max_attempts": 1}``: botocore never
retries, the broker's tenacity loop does (with the same token). Every botocore exception
goes through :func:`providers.aws.errors.classify`; only ProviderErrors leave this module.

Credentials come from boto3's default chain only (environment, profile, SSO, instance role)
and are never logged; endpoints too (``AWS_ENDPOINT_URL_EC2`` works natively).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import boto3  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]

from providers.aws.config import AwsConfig
from providers.aws.errors import (
    BOTO_ERRORS,
    PROVIDER,
    call,
    chunks,
    classify,
    error_code,
    pages,
)
from providers.base import (
    TAG_ATTEMPT,
    TAG_CLUSTER,
    LaunchRequest,
    Node,
    NodeState,
    check_bootstrap,
    check_launch_region,
    configured_shapes,
)
from providers.errors import (
    CallTimeoutError,
    CapacityError,
    InvalidLaunchError,
    ProviderError,
    ProviderUnavailableError,
    RegionConfigError,
)
from providers.polling import Backoff
from providers.quotas import (
    AWS_QUOTAS,
    QuotaReport,
    QuotaUnit,
    ReportBuilder,
    aws_quota,
    unreadable,
)
from shapes.catalog import Catalog
from shapes.model import Provisioning, Shape

if TYPE_CHECKING:
    from providers.base import Provider, QuotaSource

__all__ = ["LIVE_STATES", "AwsProvider", "client_config"]

log = logging.getLogger(__name__)
# What reading quotas and running instances needs (said when a refusal leaves the quota unread).
QUOTA_PERMISSIONS = "servicequotas:GetServiceQuota and ec2:DescribeInstances"

# Instance states that still exist and (except stopped) bill: what describe/list_tagged show.
LIVE_STATES = ("pending", "running", "stopping", "stopped", "shutting-down")
# States from which a launching instance never becomes running.
_GONE = frozenset({"shutting-down", "terminated", "stopping", "stopped"})
_STATES: Mapping[str, NodeState] = {
    "pending": NodeState.PENDING,
    "running": NodeState.RUNNING,
    # A stopped instance has left the gang (and the broker's one-time spot requests
    # terminate, never stop): it is on its way out, like shutting-down.
    "stopping": NodeState.TERMINATING,
    "stopped": NodeState.TERMINATING,
    "shutting-down": NodeState.TERMINATING,
    "terminated": NodeState.TERMINATED,
}
_NOT_FOUND = frozenset({"InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"})
TERMINATE_CHUNK = 1000  # TerminateInstances takes at most 1000 ids
FILTER_CHUNK = 200  # values per describe filter
CLUSTER_STRATEGY = "cluster"


def client_config(*, connect_timeout: float = 10, read_timeout: float = 60) -> Any:
    """botocore settings for every client: no botocore retries (tenacity owns them)."""
    return Config(
        retries={"total_max_attempts": 1},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
    )


def _tag_dict(tags: Iterable[Mapping[str, str]] | None) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in tags or ()}


def _tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def _state(instance: Mapping[str, Any]) -> str:
    return str(instance.get("State", {}).get("Name", ""))


def _launch_order(instance: Mapping[str, Any]) -> tuple[int, str]:
    return int(instance.get("AmiLaunchIndex", 0)), str(instance.get("InstanceId", ""))


def _launched_at(instance: Mapping[str, Any]) -> float:
    when = instance.get("LaunchTime")
    return when.timestamp() if isinstance(when, datetime) else 0.0


def _gang_name(request: LaunchRequest) -> str:
    """The Name tag and placement-group name of an attempt: cluster and attempt."""
    cluster, attempt = request.tags.get(TAG_CLUSTER), request.tags.get(TAG_ATTEMPT)
    if cluster and attempt:
        return f"{cluster}-{attempt}"
    return f"broker-{request.token}"


class AwsProvider:
    """EC2 gangs; implements :class:`providers.base.Provider` (plus :meth:`health`)."""

    name: str = PROVIDER

    def __init__(
        self,
        config: AwsConfig,
        catalog: Catalog,
        *,
        session: Any | None = None,
        poll_interval: float = 5.0,
        terminate_timeout: float = 600.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.catalog = catalog
        self.poll_interval = poll_interval
        self.terminate_timeout = terminate_timeout
        self._sleep = sleep
        self._clock = clock
        self._session_obj = session
        self._lock = threading.Lock()
        self._clients: dict[tuple[str, str], Any] = {}
        self._zones: dict[str, tuple[dict[str, str], dict[str, str]]] = {}
        self._images: dict[str, str] = {}
        self._strategies: dict[tuple[str, str], frozenset[str]] = {}
        self._type_vcpus: dict[str, float] = {}

    # -- clients ---------------------------------------------------------------------------

    def _session(self) -> Any:
        if self._session_obj is None:
            try:
                self._session_obj = boto3.session.Session()
            except BOTO_ERRORS as exc:
                raise classify(exc) from exc
        return self._session_obj

    def _client(self, service: str, region: str) -> Any:
        key = (service, region)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                try:
                    client = self._session().client(
                        service, region_name=region, config=client_config()
                    )
                except BOTO_ERRORS as exc:
                    raise classify(exc) from exc
                self._clients[key] = client
            return client

    def client(self, region: str) -> Any:
        """The EC2 client of a region (created once; tests register event hooks on it)."""
        return self._client("ec2", region)

    # -- the Provider interface ------------------------------------------------------------

    def list_shapes(self) -> list[Shape]:
        return configured_shapes(self.catalog, PROVIDER, self.config.regions)

    def launch(self, request: LaunchRequest, *, timeout: float) -> list[Node]:
        deadline = self._clock() + max(timeout, 0.0)
        shape = request.shape
        check_launch_region(shape, PROVIDER, self.config.regions)
        check_bootstrap(request.bootstrap, PROVIDER)
        region = shape.region
        ec2 = self.client(region)
        zone_name = self._zone_name(region, request.zone)
        found = self._token_instances(ec2, request)
        if found:
            self._check_repeat(request, zone_name, found)
            ids = [i["InstanceId"] for i in sorted(found, key=_launch_order)]
        else:
            ids = self._run(ec2, region, zone_name, request)
        return self._await_running(ec2, region, ids, request, deadline)

    def describe(self, cluster_id: str) -> list[Node]:
        nodes: list[Node] = []
        for region in self.config.regions:
            nodes += self._find(region, [{"Name": f"tag:{TAG_CLUSTER}", "Values": [cluster_id]}])
        return nodes

    def list_tagged(self) -> list[Node]:
        nodes: list[Node] = []
        for region in self.config.regions:
            nodes += self._find(region, [{"Name": "tag-key", "Values": [TAG_CLUSTER]}])
        return nodes

    def terminate(self, nodes: Sequence[Node]) -> None:
        """Terminate, wait until the instances are gone (a shutting-down instance still
        shows in :meth:`describe`), then delete the clusters' empty placement groups
        (unless ``placement_group = false``: then the adapter makes no placement-group call)."""
        by_region: dict[str, list[str]] = {}
        clusters: set[str] = set()
        for node in nodes:
            ids = by_region.setdefault(node.region, [])
            if node.provider_id not in ids:
                ids.append(node.provider_id)
            if node.cluster_id:
                clusters.add(node.cluster_id)
        if not by_region:
            return
        deadline = self._clock() + self.terminate_timeout
        for region, ids in by_region.items():
            ec2 = self.client(region)
            for chunk in chunks(ids, TERMINATE_CHUNK):
                self._terminate_chunk(ec2, chunk)
        for region, ids in by_region.items():
            self._await_gone(self.client(region), region, ids, deadline)
        if clusters and self.config.placement_group:
            # Earlier attempts of these clusters may have left groups in other regions.
            for region in dict.fromkeys([*by_region, *self.config.regions]):
                self._sweep_placement_groups(region, clusters)

    def health(self) -> tuple[bool, str]:
        """Are the credentials good? (True, "account …1234, …") or (False, why not)."""
        try:
            sts = self._session().client(
                "sts",
                region_name=self.config.regions[0],
                config=client_config(connect_timeout=5, read_timeout=10),
            )
            identity = sts.get_caller_identity()
        except BOTO_ERRORS as exc:
            err = classify(exc)
            return False, f"{err.reason}: {err.code}: {err.message}"
        except ProviderError as exc:
            return False, f"{exc.reason}: {exc.code}: {exc.message}"
        account = str(identity.get("Account", ""))
        regions = self.config.regions
        return True, (f"account …{account[-4:]}, {len(regions)} region(s): {', '.join(regions)}")

    def quotas(self, region: str) -> QuotaReport:
        """The GPU families' vCPU quotas of ``region`` (Service Quotas ``GetServiceQuota``,
        providers.quotas.AWS_QUOTAS) with their usage: the vCPUs of the pending and running
        instances counted against each (``DescribeInstances``). A quota that cannot be read
        is a warning; a missing permission stops the reading at the first refusal."""
        found = ReportBuilder(PROVIDER, region)
        try:
            usage = self._quota_usage(region)
        except ProviderError as exc:
            why = unreadable(exc, QUOTA_PERMISSIONS)
            found.warn(f"running instances in {region} could not be listed: {why}")
            return found.report()
        service = self._client("service-quotas", region)
        for quota in AWS_QUOTAS:
            try:
                answer = call(service, "get_service_quota", ServiceCode="ec2", QuotaCode=quota.code)
            except ProviderError as exc:
                why = unreadable(exc, QUOTA_PERMISSIONS)
                found.warn(f"{quota.code} ({quota.name}) could not be read: {why}")
                if isinstance(exc, ProviderUnavailableError):
                    break  # no permission for one: none of the others either
                continue
            value = answer.get("Quota", {}).get("Value")
            if not isinstance(value, int | float):
                found.warn(f"{quota.code} ({quota.name}): Service Quotas gave no value")
                continue
            found.add(
                quota.code,
                quota.name,
                QuotaUnit.VCPU,
                quota.market.value,
                float(value),
                usage.get(quota.code, 0.0),
            )
        return found.report()

    def _quota_usage(self, region: str) -> dict[str, float]:
        """vCPUs of the pending and running instances per quota code (AWS_QUOTAS)."""
        ec2 = self.client(region)
        states = {"Name": "instance-state-name", "Values": ["pending", "running"]}
        used: dict[str, float] = {}
        for page in pages(ec2, "describe_instances", Filters=[states]):
            for reservation in page.get("Reservations", []):
                for instance in reservation.get("Instances", []):
                    kind = str(instance.get("InstanceType", ""))
                    spot = instance.get("InstanceLifecycle") == "spot"
                    quota = aws_quota(kind, Provisioning.SPOT if spot else Provisioning.ON_DEMAND)
                    if quota is not None:
                        vcpus = self._vcpus(ec2, kind)
                        used[quota.code] = used.get(quota.code, 0.0) + vcpus
        return used

    def _vcpus(self, ec2: Any, instance_type: str) -> float:
        """The vCPUs EC2 counts for a type: the catalog's, else DescribeInstanceTypes'."""
        known = self._type_vcpus.get(instance_type)
        if known is None:
            shape = next((s for s in self.catalog.shapes if s.instance_type == instance_type), None)
            if shape is not None:
                known = float(shape.vcpus)
            else:
                types = call(ec2, "describe_instance_types", InstanceTypes=[instance_type])
                info = (types.get("InstanceTypes") or [{}])[0].get("VCpuInfo", {})
                known = float(info.get("DefaultVCpus", 0))
            self._type_vcpus[instance_type] = known
        return known

    # -- launch internals ------------------------------------------------------------------

    def _zone_maps(self, region: str) -> tuple[dict[str, str], dict[str, str]]:
        """(AZ id -> name, AZ name -> id) of this account in ``region``, cached."""
        cached = self._zones.get(region)
        if cached is None:
            zones = call(self.client(region), "describe_availability_zones")
            by_id = {z["ZoneId"]: z["ZoneName"] for z in zones.get("AvailabilityZones", [])}
            cached = (by_id, {name: zid for zid, name in by_id.items()})
            self._zones[region] = cached
        return cached

    def _zone_name(self, region: str, zone: str) -> str:
        """The account's AZ name for an AZ id (an AZ name is accepted as it is)."""
        by_id, by_name = self._zone_maps(region)
        if zone in by_id:
            return by_id[zone]
        if zone in by_name:
            return zone
        raise CapacityError(
            f"availability zone {zone} is not available to this account in {region} "
            f"(it has {', '.join(sorted(by_id)) or 'none'})",
            code="Unsupported",
            provider=PROVIDER,
        )

    def _zone_id(self, region: str, placement: Mapping[str, Any]) -> str:
        zone_id = placement.get("AvailabilityZoneId")
        if zone_id:
            return str(zone_id)
        name = str(placement.get("AvailabilityZone", ""))
        return self._zone_maps(region)[1].get(name, name)

    def _image(self, region: str) -> str:
        image = self.config.images.get(region) or self._images.get(region)
        if image:
            return image
        parameter = self.config.image_ssm_parameter
        if not parameter:
            raise RegionConfigError(
                f'no AMI for {region}: set [aws.images] {region} = "ami-..." or '
                "[aws] image_ssm_parameter",
                code="NotConfigured",
                provider=PROVIDER,
            )
        found = call(self._client("ssm", region), "get_parameter", Name=parameter)
        image = str(found["Parameter"]["Value"])
        self._images[region] = image
        return image

    def _tags(self, request: LaunchRequest) -> dict[str, str]:
        tags = {**self.config.tags, **request.tags}
        tags.setdefault("Name", _gang_name(request))
        return tags

    def _token_instances(self, ec2: Any, request: LaunchRequest) -> list[dict[str, Any]]:
        """Instances an earlier call with this token launched (any state)."""
        cluster = request.tags.get(TAG_CLUSTER)
        if cluster:
            filters = [{"Name": f"tag:{TAG_CLUSTER}", "Values": [cluster]}]
        else:
            filters = [{"Name": "instance-type", "Values": [request.shape.instance_type]}]
        return [
            instance
            for page in pages(ec2, "describe_instances", Filters=filters)
            for reservation in page.get("Reservations", [])
            for instance in reservation.get("Instances", [])
            if instance.get("ClientToken") == request.token
        ]

    @staticmethod
    def _check_repeat(
        request: LaunchRequest, zone_name: str, found: Sequence[Mapping[str, Any]]
    ) -> None:
        shape = request.shape
        spot = shape.provisioning is Provisioning.SPOT
        if len(found) != request.count or any(
            i.get("InstanceType") != shape.instance_type
            or i.get("Placement", {}).get("AvailabilityZone") != zone_name
            or (i.get("InstanceLifecycle") == "spot") != spot
            for i in found
        ):
            first = found[0]
            where = first.get("Placement", {}).get("AvailabilityZone")
            raise InvalidLaunchError(
                f"token {request.token!r} already launched {len(found)} x "
                f"{first.get('InstanceType')} in {where}, not {request.count} x {shape.id} "
                f"in {request.zone}",
                code="IdempotentParameterMismatch",
                provider=PROVIDER,
            )

    def _run(self, ec2: Any, region: str, zone_name: str, request: LaunchRequest) -> list[str]:
        """RunInstances for the whole gang; the instance ids by AMI launch index."""
        shape = request.shape
        image = self._image(region)
        group = self._ensure_placement_group(ec2, region, request)
        tags = _tag_list(self._tags(request))
        kinds = ["instance", "volume", "network-interface"]
        spot = shape.provisioning is Provisioning.SPOT
        if spot:
            kinds.append("spot-instances-request")
        placement = {"AvailabilityZone": zone_name}
        if group:
            placement["GroupName"] = group
        params: dict[str, Any] = {
            "ImageId": image,
            "InstanceType": shape.instance_type,
            "MinCount": request.count,
            "MaxCount": request.count,
            "ClientToken": request.token,
            "Placement": placement,
            "InstanceInitiatedShutdownBehavior": "terminate",
            "TagSpecifications": [{"ResourceType": k, "Tags": tags} for k in kinds],
        }
        if spot:
            # No MaxPrice: pay the current spot price, capped at on-demand.
            params["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {
                    "SpotInstanceType": "one-time",
                    "InstanceInterruptionBehavior": "terminate",
                },
            }
        subnet = self.config.subnets.get(request.zone) or self.config.subnets.get(zone_name)
        if subnet:
            params["SubnetId"] = subnet
        if self.config.security_group_ids:
            params["SecurityGroupIds"] = list(self.config.security_group_ids)
        if self.config.key_name:
            params["KeyName"] = self.config.key_name
        if request.bootstrap is not None:
            params["UserData"] = request.bootstrap  # botocore base64-encodes it
        try:
            reservation = call(ec2, "run_instances", **params)
        except ProviderError:
            # EC2 said no, or the call failed: the group goes now, whatever comes next (a
            # retry of the attempt makes it again; if tenacity gives up, no later terminate
            # of this cluster might ever sweep it). A group that the call did fill after all
            # (a lost response) refuses deletion: the cluster's terminate sweeps it then.
            if group:
                self._delete_placement_group(ec2, region, group)
            raise
        instances = sorted(reservation.get("Instances", []), key=_launch_order)
        ids = [str(i["InstanceId"]) for i in instances]
        if len(ids) != request.count:
            raise CapacityError(
                f"RunInstances returned {len(ids)} of {request.count} {shape.instance_type} "
                f"instances in {request.zone}; the caller must terminate them",
                code="IncompleteReservation",
                provider=PROVIDER,
            )
        return ids

    def _placement_strategies(self, ec2: Any, region: str, instance_type: str) -> frozenset[str]:
        key = (region, instance_type)
        cached = self._strategies.get(key)
        if cached is None:
            found = call(ec2, "describe_instance_types", InstanceTypes=[instance_type])
            types = found.get("InstanceTypes", [])
            info = types[0].get("PlacementGroupInfo", {}) if types else {}
            cached = frozenset(info.get("SupportedStrategies", ()))
            self._strategies[key] = cached
        return cached

    def _ensure_placement_group(self, ec2: Any, region: str, request: LaunchRequest) -> str | None:
        """A cluster placement group for a multi-node gang, where the type supports one."""
        if request.count < 2 or not self.config.placement_group:
            return None
        strategies = self._placement_strategies(ec2, region, request.shape.instance_type)
        if CLUSTER_STRATEGY not in strategies:
            return None
        group = _gang_name(request)
        try:
            ec2.create_placement_group(
                GroupName=group,
                Strategy=CLUSTER_STRATEGY,
                TagSpecifications=[
                    {"ResourceType": "placement-group", "Tags": _tag_list(self._tags(request))}
                ],
            )
        except BOTO_ERRORS as exc:
            if error_code(exc) != "InvalidPlacementGroup.Duplicate":  # a retried attempt
                raise classify(exc) from exc
        return group

    def _delete_placement_group(self, ec2: Any, region: str, group: str) -> None:
        try:
            call(ec2, "delete_placement_group", GroupName=group)
        except ProviderError as exc:
            log.warning("could not delete placement group %s in %s: %s", group, region, exc)

    def _instances_by_id(self, ec2: Any, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The instances with these ids, any state; ids EC2 does not show yet are absent."""
        found: dict[str, dict[str, Any]] = {}
        for chunk in chunks(ids, FILTER_CHUNK):
            filters = [{"Name": "instance-id", "Values": chunk}]
            for page in pages(ec2, "describe_instances", Filters=filters):
                for reservation in page.get("Reservations", []):
                    for instance in reservation.get("Instances", []):
                        found[str(instance["InstanceId"])] = instance
        return found

    def _await_running(
        self, ec2: Any, region: str, ids: Sequence[str], request: LaunchRequest, deadline: float
    ) -> list[Node]:
        waits = Backoff(self.poll_interval, deadline, self._clock, self._sleep)
        while True:
            found = self._instances_by_id(ec2, ids)
            gone = [found[i] for i in ids if i in found and _state(found[i]) in _GONE]
            if gone:
                raise self._partial_gang(request, ids, gone)
            ready = [found.get(i) for i in ids]
            if all(
                i is not None and _state(i) == "running" and i.get("PrivateIpAddress")
                for i in ready
            ):
                return [self._node(region, found[i]) for i in ids]
            if not waits.pause():
                waiting = sum(1 for i in ready if i is None or _state(i) != "running")
                raise CallTimeoutError(
                    f"{waiting} of {len(ids)} {request.shape.instance_type} instance(s) in "
                    f"{request.zone} not running with an address yet; call again with the "
                    "same token to keep waiting",
                    code="LaunchWaitTimeout",
                    provider=PROVIDER,
                )

    @staticmethod
    def _partial_gang(
        request: LaunchRequest, ids: Sequence[str], gone: Sequence[Mapping[str, Any]]
    ) -> CapacityError:
        reasons = sorted({str(i.get("StateReason", {}).get("Code") or _state(i)) for i in gone})
        cluster = request.tags.get(TAG_CLUSTER, "?")
        return CapacityError(
            f"{len(gone)} of {len(ids)} {request.shape.instance_type} instance(s) in "
            f"{request.zone} ended before running ({', '.join(reasons)}): partial gang; the "
            f"other {len(ids) - len(gone)} are left for the caller to terminate "
            f"(tag {TAG_CLUSTER}={cluster}); launch again with a new token",
            code="InstanceTerminatedDuringLaunch",
            provider=PROVIDER,
        )

    # -- describe internals ----------------------------------------------------------------

    def _node(self, region: str, instance: Mapping[str, Any]) -> Node:
        state = _STATES.get(_state(instance), NodeState.PENDING)
        address = instance.get("PrivateIpAddress") or None
        if state is NodeState.RUNNING and not address:
            state = NodeState.PENDING
        market = (
            Provisioning.SPOT
            if instance.get("InstanceLifecycle") == "spot"
            else Provisioning.ON_DEMAND
        )
        return Node(
            provider=PROVIDER,
            provider_id=str(instance["InstanceId"]),
            shape_id=f"{PROVIDER}:{region}:{instance.get('InstanceType')}:{market.value}",
            region=region,
            zone=self._zone_id(region, instance.get("Placement", {})),
            state=state,
            private_ip=address,
            tags=_tag_dict(instance.get("Tags")),
        )

    def _find_raw(self, ec2: Any, filters: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        """Live instances matching the filters, grouped by reservation, oldest first."""
        states = {"Name": "instance-state-name", "Values": list(LIVE_STATES)}
        reservations = [
            reservation.get("Instances", [])
            for page in pages(ec2, "describe_instances", Filters=[*filters, states])
            for reservation in page.get("Reservations", [])
        ]
        reservations = [r for r in reservations if r]
        reservations.sort(key=lambda r: (min(_launched_at(i) for i in r), _launch_order(r[0])))
        return [sorted(r, key=_launch_order) for r in reservations]

    def _find(self, region: str, filters: list[dict[str, Any]]) -> list[Node]:
        return [
            self._node(region, instance)
            for reservation in self._find_raw(self.client(region), filters)
            for instance in reservation
        ]

    # -- terminate internals ---------------------------------------------------------------

    def _terminate_chunk(self, ec2: Any, ids: list[str]) -> None:
        try:
            ec2.terminate_instances(InstanceIds=ids)
        except BOTO_ERRORS as exc:
            if error_code(exc) not in _NOT_FOUND:
                raise classify(exc) from exc
            if len(ids) > 1:  # one unknown id fails the whole call: go one by one
                for one in ids:
                    self._terminate_chunk(ec2, [one])

    def _await_gone(self, ec2: Any, region: str, ids: Sequence[str], deadline: float) -> None:
        waits = Backoff(self.poll_interval, deadline, self._clock, self._sleep)
        while True:
            found = self._instances_by_id(ec2, ids)
            alive = [i for i, inst in found.items() if _state(inst) in LIVE_STATES]
            if not alive:
                return
            if not waits.pause():
                raise CallTimeoutError(
                    f"{len(alive)} instance(s) in {region} still not terminated "
                    f"({', '.join(sorted(alive)[:5])}{', ...' if len(alive) > 5 else ''})",
                    code="TerminateWaitTimeout",
                    provider=PROVIDER,
                )

    def _sweep_placement_groups(self, region: str, clusters: set[str]) -> None:
        """Delete these clusters' placement groups that no live instance uses (best effort)."""
        ec2 = self.client(region)
        try:
            found = call(
                ec2,
                "describe_placement_groups",
                Filters=[{"Name": f"tag:{TAG_CLUSTER}", "Values": sorted(clusters)}],
            )
            for group in found.get("PlacementGroups", []):
                tags = _tag_dict(group.get("Tags"))
                filters = [{"Name": f"tag:{TAG_CLUSTER}", "Values": [tags.get(TAG_CLUSTER, "")]}]
                if tags.get(TAG_ATTEMPT):
                    filters.append({"Name": f"tag:{TAG_ATTEMPT}", "Values": [tags[TAG_ATTEMPT]]})
                if not self._find_raw(ec2, filters):
                    self._delete_placement_group(ec2, region, str(group["GroupName"]))
        except ProviderError as exc:
            log.warning("could not clean placement groups in %s: %s", region, exc)


if TYPE_CHECKING:

    def _implements_provider(aws: AwsProvider) -> Provider:
        return aws

    def _implements_quotas(aws: AwsProvider) -> QuotaSource:
        return aws

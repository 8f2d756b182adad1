"""GCP Compute Engine adapter: gangs of N identical GPU VMs in one zone.

**Launch: one zonal ``instances.bulkInsert`` per attempt**, with ``count = minCount = N``:
Compute creates all N or keeps none (VMs it managed to create are deleted when ``minCount``
cannot be met), so the gang is all-or-nothing inside one zone, like RunInstances
MinCount=MaxCount on AWS. Why not N ``instances.insert`` calls: a stockout in the middle
leaves a partial gang to roll back ourselves, N operations to watch, and N chances to be
throttled. Why not the *regional* bulkInsert: the broker chooses the zone (it ranks zones
by price and remembers stockouts per zone), and a compact gang must be in one zone anyway.

**Names and idempotency.** Instance names are deterministic, ``<cluster>-<attempt>-<i>``
(``per_instance_properties``), never ``name_pattern`` (its numbering continues after the
highest existing name, so a resubmission would add VMs). The operation's ``request_id`` is
``uuid5(token)``: Compute ignores a repeat of a request it has completed. Every VM also carries
a ``broker-request`` label (a digest of the token, and the gang size): before launching, the
adapter lists the VMs of the same cluster and attempt across the configured regions and, when
the gang already exists, awaits it instead of launching again; the same token with another
shape, zone or count (or another token for the same attempt, whose VM names would collide) is
an InvalidLaunchError ``IdempotentParameterMismatch``. An incomplete earlier gang is submitted
again with the same ``request_id`` (Compute answers with the original operation), and the VMs
missing from it make a partial gang.

**Labels.** ``[gcp] labels`` + the request's tags (broker, broker-cluster, broker-attempt) +
``broker-request``, on every VM and (through the instance properties) its boot disk. GCP label
keys and values allow lowercase letters, digits, ``_`` and ``-`` only (keys start with a
letter, 63 characters at most): a value outside that is an InvalidLaunchError naming it, never
rewritten, because a node's tags must be the request's.

**Spot and GPUs.** Spot shapes get ``provisioning_model=SPOT`` with
``instance_termination_action=DELETE`` (a reclaimed VM goes away instead of holding disks);
GPU VMs cannot live-migrate, so ``on_host_maintenance=TERMINATE`` on every shape. N1 shapes
(``n1-standard-8+t4x1``) attach ``guest_accelerators``; A2/A3/G2 machine types come with theirs.

**Compact placement.** For a multi-node gang of a family that supports it (A2, A3, G2) and
``compact_placement = true``, a regional resource policy ``<cluster>-<attempt>-compact``
(``COLLOCATED``, ``vm_count = N``) is created first and named (not URL) in the instance
properties. Resource policies carry no labels, so the policy's description names the cluster;
a launch that fails deletes its policy at once (a retry of the attempt makes it again), and
:meth:`GcpProvider.terminate` deletes a cluster's policies once no VM of theirs is left (both
best effort). Compact placement for spot VMs is not verified against Google's documentation.

**Waiting.** The ``*_unary`` calls return the raw Operation; the adapter waits with
``ZoneOperationsClient.wait`` (never ``ExtendedOperation.result()``: it polls the real Google
host) within the launch timeout and reads ``op.error.errors`` itself, since an operation can
end DONE with errors and no ``httpErrorStatusCode``. Then it polls the VMs until every one is
RUNNING with an internal IP. A VM that stops, is deleted or goes TERMINATED first makes a
partial gang: CapacityError ``InstanceTerminatedDuringLaunch``; the rest stay for the caller.

**Describe.** ``instances.aggregatedList`` with a label filter, kept to the configured regions
(and zones, if ``[gcp] zones`` is set). TERMINATED VMs are included (as ``terminating``): they
still hold their boot disks, which bill, until deleted. Shape ids are rebuilt from the VM
(machine type, accelerators, provisioning model) in the catalog's spelling.

**Retries and calls.** Every call passes ``retry=None`` and a timeout: the broker's tenacity
loop is the only retrier. Clients use the REST transport; ``[gcp] endpoint`` (a full
``http(s)://`` URL) replaces the Google host for emulators. Credentials come from Application
Default Credentials only (or are injected by tests) and are never logged.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from google.api_core import exceptions as core_exc
from google.api_core.client_options import ClientOptions
from google.cloud import compute_v1

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
    RegionConfigError,
)
from providers.gcp.config import GcpConfig
from providers.gcp.errors import GOOGLE_ERRORS, PROVIDER, classify
from providers.gcp.errors import operation_error as _operation_error
from providers.polling import Backoff
from providers.quotas import ANY_MARKET, GLOBAL, QuotaReport, QuotaUnit, ReportBuilder, unreadable
from shapes.catalog import Catalog
from shapes.model import Provisioning, Shape

if TYPE_CHECKING:
    from google.auth.credentials import Credentials

    from providers.base import Provider, QuotaSource

__all__ = [
    "ACCELERATORS",
    "COMPACT_FAMILIES",
    "SCOPES",
    "STARTUP_SCRIPT",
    "TAG_REQUEST",
    "GcpProvider",
    "check_label",
    "instance_names",
    "parse_instance_type",
    "request_id",
    "request_label",
]

log = logging.getLogger(__name__)
# What reading quotas needs (said when a refusal leaves the quota unread).
QUOTA_PERMISSIONS = "compute.regions.get and compute.projects.get"

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
TAG_REQUEST = "broker-request"  # label: digest of the launch token + gang size
STARTUP_SCRIPT = "startup-script"  # the metadata key of LaunchRequest.bootstrap (every boot)
_NAMESPACE = uuid.UUID("5b2f8a52-3f0e-4c59-9a55-6f7c4a1f0b6e")  # uuid5 namespace of tokens

# N1 catalog suffix -> GCE accelerator type (``n1-standard-8+t4x1``).
ACCELERATORS: Mapping[str, str] = {
    "t4": "nvidia-tesla-t4",
    "v100": "nvidia-tesla-v100",
    "p100": "nvidia-tesla-p100",
    "p4": "nvidia-tesla-p4",
}
_ACCELERATOR_SUFFIX = {v: k for k, v in ACCELERATORS.items()}
COMPACT_FAMILIES = frozenset({"a2", "a3", "g2"})  # machine series with compact placement

# GCE status -> NodeState. TERMINATED VMs still exist (and hold disks): "terminating".
_STATES: Mapping[str, NodeState] = {
    "PROVISIONING": NodeState.PENDING,
    "STAGING": NodeState.PENDING,
    "REPAIRING": NodeState.PENDING,
    "RUNNING": NodeState.RUNNING,
    "PENDING_STOP": NodeState.TERMINATING,
    "STOPPING": NodeState.TERMINATING,
    "SUSPENDING": NodeState.TERMINATING,
    "SUSPENDED": NodeState.TERMINATING,
    "TERMINATED": NodeState.TERMINATING,
    "DEPROVISIONING": NodeState.TERMINATING,
}
# Statuses from which a launching VM never becomes RUNNING by itself.
_GONE = frozenset(
    {"PENDING_STOP", "STOPPING", "SUSPENDING", "SUSPENDED", "TERMINATED", "DEPROVISIONING"}
)

_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
_NAME = re.compile(r"^[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?$")
_INSTANCE_TYPE = re.compile(r"^(?P<machine>[a-z0-9-]+?)(?:\+(?P<gpu>[a-z0-9]+)x(?P<n>\d+))?$")


def request_id(token: str) -> str:
    """The operation ``request_id`` of a launch token: a stable, non-zero UUID."""
    return str(uuid.uuid5(_NAMESPACE, token))


def _token_digest(token: str) -> str:
    return uuid.uuid5(_NAMESPACE, "label:" + token).hex[:24]


def request_label(request: LaunchRequest) -> str:
    """The ``broker-request`` label of a launch: a digest of its token, and its count."""
    return f"{_token_digest(request.token)}-{request.count}"


def check_label(key: str, value: str) -> None:
    """Raise InvalidLaunchError naming the label if GCP would refuse it."""
    if not _LABEL_KEY.match(key):
        raise InvalidLaunchError(
            f"label key {key!r} is not valid on GCP (lowercase letters, digits, '_' and '-', "
            "starting with a letter, at most 63 characters)",
            code="InvalidLabel",
            provider=PROVIDER,
        )
    if not _LABEL_VALUE.match(value):
        raise InvalidLaunchError(
            f"label {key}={value!r}: the value is not valid on GCP (lowercase letters, "
            "digits, '_' and '-', at most 63 characters)",
            code="InvalidLabel",
            provider=PROVIDER,
        )


def parse_instance_type(instance_type: str) -> tuple[str, str | None, int]:
    """(machine type, accelerator type or None, count) of a catalog instance type."""
    found = _INSTANCE_TYPE.match(instance_type.lower())
    if not found:
        raise InvalidLaunchError(
            f"{instance_type!r} is not a GCP instance type", code="InvalidShape", provider=PROVIDER
        )
    gpu = found.group("gpu")
    if gpu is None:
        return found.group("machine"), None, 0
    if gpu not in ACCELERATORS:
        raise InvalidLaunchError(
            f"{instance_type!r}: unknown attachable GPU {gpu!r} (known: "
            f"{', '.join(sorted(ACCELERATORS))})",
            code="InvalidShape",
            provider=PROVIDER,
        )
    return found.group("machine"), ACCELERATORS[gpu], int(found.group("n"))


def _valid_name(text: str) -> str:
    """A valid GCE resource name made from ``text`` (deterministic, <= 63 characters)."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    if not name or not name[0].isalpha():
        name = "bb-" + name
    if len(name) > 63:
        digest = uuid.uuid5(_NAMESPACE, text).hex[:8]
        name = name[:54].rstrip("-") + "-" + digest
    return name.rstrip("-") or "bb"


def _gang_name(request: LaunchRequest) -> str:
    cluster, attempt = request.tags.get(TAG_CLUSTER), request.tags.get(TAG_ATTEMPT)
    if cluster and attempt:
        return _valid_name(f"{cluster}-{attempt}")
    return _valid_name(f"bb-{_token_digest(request.token)[:16]}")


def instance_names(request: LaunchRequest) -> list[str]:
    """The gang's VM names, in rank order: ``<cluster>-<attempt>-<i>`` (valid GCE names)."""
    base = _gang_name(request)
    width = len(str(request.count - 1))
    suffix_room = 63 - (width + 1)
    if len(base) > suffix_room:
        base = base[: suffix_room - 9].rstrip("-") + "-" + uuid.uuid5(_NAMESPACE, base).hex[:8]
    return [f"{base}-{i:0{width}d}" for i in range(request.count)]


def _last(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def _region_of(zone: str) -> str:
    return zone.rsplit("-", 1)[0]


def _status(instance: compute_v1.Instance) -> str:
    return str(instance.status)


def _address(instance: compute_v1.Instance) -> str | None:
    for nic in instance.network_interfaces:
        if nic.network_i_p:
            return str(nic.network_i_p)
    return None


def _is_spot(instance: compute_v1.Instance) -> bool:
    scheduling = instance.scheduling
    return str(scheduling.provisioning_model) == "SPOT" or bool(scheduling.preemptible)


def _instance_type(instance: compute_v1.Instance) -> str:
    machine = _last(instance.machine_type)
    for accelerator in instance.guest_accelerators:
        short = _ACCELERATOR_SUFFIX.get(_last(accelerator.accelerator_type))
        if short:
            return f"{machine}+{short}x{accelerator.accelerator_count}"
    return machine


class GcpProvider:
    """Compute Engine gangs; implements :class:`providers.base.Provider` (plus :meth:`health`)."""

    name: str = PROVIDER

    def __init__(
        self,
        config: GcpConfig,
        catalog: Catalog,
        *,
        credentials: Credentials | None = None,
        poll_interval: float = 5.0,
        call_timeout: float = 60.0,
        terminate_timeout: float = 600.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.catalog = catalog
        self.poll_interval = poll_interval
        self.call_timeout = call_timeout
        self.terminate_timeout = terminate_timeout
        self._sleep = sleep
        self._clock = clock
        self._credentials = credentials
        self._lock = threading.Lock()
        self._clients: dict[str, Any] = {}

    # -- clients ---------------------------------------------------------------------------

    def _creds(self) -> Credentials:
        if self._credentials is None:
            import google.auth

            try:
                self._credentials, _ = google.auth.default(scopes=list(SCOPES))
            except GOOGLE_ERRORS as exc:
                raise classify(exc) from exc
        return self._credentials

    def _client(self, kind: type[Any]) -> Any:
        key = kind.__name__
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                options = (
                    ClientOptions(api_endpoint=self.config.endpoint)
                    if self.config.endpoint
                    else None
                )
                try:
                    client = kind(
                        credentials=self._creds(), transport="rest", client_options=options
                    )
                except GOOGLE_ERRORS as exc:
                    raise classify(exc) from exc
                self._clients[key] = client
            return client

    @property
    def instances(self) -> compute_v1.InstancesClient:
        client: compute_v1.InstancesClient = self._client(compute_v1.InstancesClient)
        return client

    def _call(self, method: Callable[..., Any], timeout: float | None = None, **kw: Any) -> Any:
        """One API call without the client's own retries; errors become ProviderErrors."""
        try:
            return method(retry=None, timeout=timeout or self.call_timeout, **kw)
        except GOOGLE_ERRORS as exc:
            raise classify(exc) from exc

    def _list(self, method: Callable[..., Any], **kw: Any) -> list[Any]:
        """Every item of a paged list call (the pages are fetched here, inside the try)."""
        try:
            return list(method(retry=None, timeout=self.call_timeout, **kw))
        except GOOGLE_ERRORS as exc:
            raise classify(exc) from exc

    # -- the Provider interface ------------------------------------------------------------

    def list_shapes(self) -> list[Shape]:
        shapes = configured_shapes(self.catalog, PROVIDER, self.config.regions)
        allowed = set(self.config.zones)
        if not allowed:
            return shapes
        kept: list[Shape] = []
        for shape in shapes:  # only the zones of [gcp] zones
            zones = tuple(z for z in shape.zones if z in allowed)
            if zones:
                prices = (
                    {z: p for z, p in shape.zone_prices.items() if z in allowed}
                    if shape.zone_prices
                    else None
                )
                kept.append(dataclasses.replace(shape, zones=zones, zone_prices=prices))
        return kept

    def launch(self, request: LaunchRequest, *, timeout: float) -> list[Node]:
        deadline = self._clock() + max(timeout, 0.0)
        self._check_request(request)
        labels = self._labels(request)
        names = instance_names(request)
        found = self._earlier_launch(request, labels[TAG_REQUEST])
        if len(found) < request.count:
            self._bulk_insert(request, names, labels, deadline)
        return self._await_running(request, names, labels[TAG_REQUEST], deadline)

    def describe(self, cluster_id: str) -> list[Node]:
        if not _LABEL_VALUE.match(cluster_id):
            return []  # not a label value: no VM can carry it
        return self._nodes(f'labels.{TAG_CLUSTER} = "{cluster_id}"')

    def list_tagged(self) -> list[Node]:
        return self._nodes(f"labels.{TAG_CLUSTER}:*")

    def terminate(self, nodes: Sequence[Node]) -> None:
        """Delete the VMs, wait until none of them exists any more, then delete the
        clusters' compact-placement policies that no VM uses (best effort)."""
        targets = list(dict.fromkeys((n.zone, n.provider_id) for n in nodes))
        if not targets:
            return
        clusters = {n.cluster_id for n in nodes if n.cluster_id}
        deadline = self._clock() + self.terminate_timeout
        for zone, name in targets:
            try:
                op = self._call(
                    self.instances.delete_unary,
                    project=self.config.project,
                    zone=zone,
                    instance=name,
                )
            except ProviderError as exc:
                if exc.code in ("notFound", "404", "RESOURCE_NOT_FOUND"):
                    continue  # already gone
                raise
            failure = _operation_error(op)
            if failure is not None and failure.code != 404:
                raise classify(failure)
        self._await_gone(targets, deadline)
        regions = {_region_of(zone) for zone, _ in targets}
        if clusters and self.config.compact_placement:
            for region in sorted(regions | set(self.config.regions)):
                self._sweep_policies(region, clusters)

    def health(self) -> tuple[bool, str]:
        """Can the project be read with these credentials? Never shows a credential."""
        try:
            client = self._client(compute_v1.ProjectsClient)
            project = self._call(client.get, project=self.config.project, timeout=15)
        except ProviderError as exc:
            return False, f"{exc.reason}: {exc.code}: {exc.message}"
        regions = ", ".join(self.config.regions)
        where = f" via {self.config.endpoint}" if self.config.endpoint else ""
        return True, (
            f"project {project.name or self.config.project}{where}, "
            f"{len(self.config.regions)} region(s): {regions}"
        )

    def quotas(self, region: str) -> QuotaReport:
        """The GPU and CPU quotas of ``region`` (``regions.get``) and the project's
        ``*_ALL_REGIONS`` ones (``projects.get``, region ``global``), each with its usage.
        A refused or failed read is a warning (the other one is still made)."""
        found = ReportBuilder(PROVIDER, region)
        reads: tuple[tuple[type[Any], dict[str, str], str], ...] = (
            (compute_v1.RegionsClient, {"region": region}, region),
            (compute_v1.ProjectsClient, {}, GLOBAL),
        )
        for kind, where, scope in reads:
            try:
                answer = self._call(
                    self._client(kind).get, project=self.config.project, timeout=15, **where
                )
            except ProviderError as exc:
                what = f"region {region}" if scope == region else "project-wide"
                found.warn(f"{what} quotas could not be read: {unreadable(exc, QUOTA_PERMISSIONS)}")
                continue
            for quota in answer.quotas:
                metric = str(quota.metric)
                global_ = metric.endswith("_ALL_REGIONS")
                if global_ != (scope == GLOBAL):
                    continue
                base = metric.removesuffix("_ALL_REGIONS")
                if base.endswith("GPUS"):
                    unit = QuotaUnit.GPU
                elif base.endswith("CPUS"):
                    unit = QuotaUnit.VCPU
                else:
                    continue  # disks, addresses, ...: not what a GPU gang is refused for
                market = (
                    ANY_MARKET
                    if global_
                    else "spot"
                    if metric.startswith("PREEMPTIBLE_")
                    else "on-demand"
                )
                found.add(
                    metric,
                    metric,  # GCP gives no other name
                    unit,
                    market,
                    float(quota.limit),
                    float(quota.usage),
                    region=scope,
                )
        return found.report()

    # -- launch internals ------------------------------------------------------------------

    def _check_request(self, request: LaunchRequest) -> None:
        shape, zone = request.shape, request.zone
        check_launch_region(shape, PROVIDER, self.config.regions)
        check_bootstrap(request.bootstrap, PROVIDER)
        if _region_of(zone) != shape.region:
            raise InvalidLaunchError(
                f"zone {zone} is not in region {shape.region}",
                code="InvalidZone",
                provider=PROVIDER,
            )
        if self.config.zones and zone not in self.config.zones:
            raise CapacityError(
                f"zone {zone} is not in [gcp] zones ({', '.join(self.config.zones)})",
                code="ZoneNotConfigured",
                provider=PROVIDER,
            )
        if self.config.subnetworks and shape.region not in self.config.subnetworks:
            raise RegionConfigError(
                f"no subnetwork for {shape.region} in [gcp.subnetworks]",
                code="NotConfigured",
                provider=PROVIDER,
            )
        parse_instance_type(shape.instance_type)

    def _labels(self, request: LaunchRequest) -> dict[str, str]:
        labels = {**self.config.labels, **request.tags, TAG_REQUEST: request_label(request)}
        for key, value in labels.items():
            check_label(key, value)
        if len(labels) > 64:
            raise InvalidLaunchError(
                f"{len(labels)} labels: GCP allows 64 per resource",
                code="InvalidLabel",
                provider=PROVIDER,
            )
        return labels

    def _earlier_launch(self, request: LaunchRequest, label: str) -> list[Node]:
        """The VMs an earlier call with this token created (any region, any state).

        Looked up by cluster and attempt (the VM names derive from them), so that a VM of
        the same attempt launched with another token, shape, zone or count is noticed."""
        cluster, attempt = request.tags.get(TAG_CLUSTER), request.tags.get(TAG_ATTEMPT)
        if cluster and attempt:
            filter_ = f'labels.{TAG_CLUSTER} = "{cluster}" AND labels.{TAG_ATTEMPT} = "{attempt}"'
        else:
            filter_ = f'labels.{TAG_REQUEST} = "{label}"'
        found = self._nodes(filter_)
        if not found:
            return []
        digest = _token_digest(request.token)
        shape = request.shape
        if any(
            n.tags.get(TAG_REQUEST) != label
            or n.shape_id.lower() != shape.key
            or n.zone != request.zone
            for n in found
        ):
            first = found[0]
            same_token = all(n.tags.get(TAG_REQUEST, "").startswith(digest) for n in found)
            size = first.tags.get(TAG_REQUEST, "").rsplit("-", 1)[-1]
            raise InvalidLaunchError(
                (
                    f"token {request.token!r} already launched {size} x {first.shape_id} in "
                    f"{first.zone}, not {request.count} x {shape.id} in {request.zone}"
                    if same_token
                    else f"cluster {cluster} attempt {attempt} was already launched with "
                    "another token; an attempt launches once"
                ),
                code="IdempotentParameterMismatch",
                provider=PROVIDER,
            )
        return found

    def _properties(
        self, request: LaunchRequest, labels: Mapping[str, str], policy: str | None
    ) -> compute_v1.InstanceProperties:
        shape = request.shape
        machine, accelerator, count = parse_instance_type(shape.instance_type)
        if shape.provisioning is Provisioning.SPOT:
            scheduling = compute_v1.Scheduling(
                provisioning_model="SPOT",
                instance_termination_action="DELETE",
                on_host_maintenance="TERMINATE",
                automatic_restart=False,
            )
        else:
            scheduling = compute_v1.Scheduling(
                provisioning_model="STANDARD",
                on_host_maintenance="TERMINATE",  # GPU VMs cannot live-migrate
                automatic_restart=True,
            )
        nic = compute_v1.NetworkInterface(network=self.config.network)
        subnetwork = self.config.subnetworks.get(shape.region)
        if subnetwork:
            nic.subnetwork = subnetwork
        properties = compute_v1.InstanceProperties(
            machine_type=machine,  # a bare name: a URL here fails with INTERNAL_ERROR
            labels=dict(labels),
            scheduling=scheduling,
            network_interfaces=[nic],
            disks=[
                compute_v1.AttachedDisk(
                    boot=True,
                    auto_delete=True,
                    initialize_params=compute_v1.AttachedDiskInitializeParams(
                        source_image=self.config.image,
                        disk_size_gb=self.config.boot_disk_gb,
                        labels=dict(labels),
                    ),
                )
            ],
        )
        if accelerator:
            properties.guest_accelerators = [
                compute_v1.AcceleratorConfig(accelerator_type=accelerator, accelerator_count=count)
            ]
        if self.config.service_account:
            properties.service_accounts = [
                compute_v1.ServiceAccount(email=self.config.service_account, scopes=list(SCOPES))
            ]
        if policy:
            properties.resource_policies = [policy]  # a name, not a URL
        if request.bootstrap is not None:
            properties.metadata = compute_v1.Metadata(
                items=[compute_v1.Items(key=STARTUP_SCRIPT, value=request.bootstrap)]
            )
        return properties

    def _bulk_insert(
        self,
        request: LaunchRequest,
        names: Sequence[str],
        labels: Mapping[str, str],
        deadline: float,
    ) -> None:
        policy = self._ensure_policy(request, deadline)
        resource = compute_v1.BulkInsertInstanceResource(
            count=request.count,
            min_count=request.count,  # all or nothing
            instance_properties=self._properties(request, labels, policy),
            per_instance_properties={
                name: compute_v1.BulkInsertInstanceResourcePerInstanceProperties(name=name)
                for name in names
            },
        )
        try:
            op = self._call(
                self.instances.bulk_insert_unary,
                request=compute_v1.BulkInsertInstanceRequest(
                    project=self.config.project,
                    zone=request.zone,
                    bulk_insert_instance_resource_resource=resource,
                    request_id=request_id(request.token),
                ),
            )
            self._wait(op, deadline, zone=request.zone)
        except ProviderError as exc:
            # Compute said no and kept nothing: the policy is of no use (a retry of the
            # attempt makes it again). Not after a wait that ran out of time: the operation
            # may still be creating VMs in the policy, and a repeat call adopts them.
            if policy and not isinstance(exc, CallTimeoutError):
                self._delete_policy(request.shape.region, policy)
            raise

    def _wait(
        self,
        op: compute_v1.Operation,
        deadline: float,
        *,
        zone: str | None = None,
        region: str | None = None,
    ) -> compute_v1.Operation:
        """Wait for a zonal or regional operation to be DONE; raise its error, if any."""
        waits = Backoff(self.poll_interval, deadline, self._clock, self._sleep)
        while op.status != compute_v1.Operation.Status.DONE:
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise CallTimeoutError(
                    f"operation {op.name} ({op.operation_type or 'call'}) not done in time; "
                    "call again with the same token to keep waiting",
                    code="OperationWaitTimeout",
                    provider=PROVIDER,
                )
            timeout = max(1.0, min(remaining, self.call_timeout))
            if zone is not None:
                client = self._client(compute_v1.ZoneOperationsClient)
                op = self._call(
                    client.wait,
                    timeout,
                    project=self.config.project,
                    zone=zone,
                    operation=op.name,
                )
            else:
                client = self._client(compute_v1.RegionOperationsClient)
                op = self._call(
                    client.wait,
                    timeout,
                    project=self.config.project,
                    region=region,
                    operation=op.name,
                )
            if op.status != compute_v1.Operation.Status.DONE:
                # ``wait`` returns after at most ~2 minutes server-side, or at once on an
                # emulator: back off between calls.
                waits.pause()
        failure = _operation_error(op)
        if failure is not None:
            raise classify(failure)
        return op

    def _ensure_policy(self, request: LaunchRequest, deadline: float) -> str | None:
        """A compact placement policy for a multi-node gang, where the family supports it."""
        machine = parse_instance_type(request.shape.instance_type)[0]
        family = machine.split("-", 1)[0]
        if request.count < 2 or not self.config.compact_placement:
            return None
        if family not in COMPACT_FAMILIES:
            return None
        region = request.shape.region
        name = _valid_name(f"{_gang_name(request)}-compact")
        cluster = request.tags.get(TAG_CLUSTER, "")
        attempt = request.tags.get(TAG_ATTEMPT, "")
        policy = compute_v1.ResourcePolicy(
            name=name,
            description=f"burst-broker cluster={cluster} attempt={attempt}",
            group_placement_policy=compute_v1.ResourcePolicyGroupPlacementPolicy(
                collocation="COLLOCATED", vm_count=request.count
            ),
        )
        client = self._client(compute_v1.ResourcePoliciesClient)
        try:
            # No request_id: a policy deleted after a failed call is made again by the retry,
            # which a remembered request_id would turn into a no-op.
            op = self._call(
                client.insert_unary,
                project=self.config.project,
                region=region,
                resource_policy_resource=policy,
            )
            self._wait(op, deadline, region=region)
        except ProviderError as exc:
            if exc.code not in ("alreadyExists", "RESOURCE_ALREADY_EXISTS"):  # still there
                raise
        return name

    def _delete_policy(self, region: str, name: str) -> None:
        client = self._client(compute_v1.ResourcePoliciesClient)
        try:
            op = self._call(
                client.delete_unary,
                project=self.config.project,
                region=region,
                resource_policy=name,
            )
            self._wait(op, self._clock() + self.call_timeout, region=region)
        except ProviderError as exc:
            log.warning("could not delete resource policy %s in %s: %s", name, region, exc)

    def _await_running(
        self, request: LaunchRequest, names: Sequence[str], label: str, deadline: float
    ) -> list[Node]:
        waits = Backoff(self.poll_interval, deadline, self._clock, self._sleep)
        filter_ = f'labels.{TAG_REQUEST} = "{label}"'
        while True:
            found = {
                i.name: i
                for i in self._list(
                    self.instances.list,
                    request=compute_v1.ListInstancesRequest(
                        project=self.config.project, zone=request.zone, filter=filter_
                    ),
                )
            }
            gone = [n for n in names if n not in found or _status(found[n]) in _GONE]
            if gone:
                raise self._partial_gang(request, names, gone, found)
            ready = [n for n in names if _status(found[n]) == "RUNNING" and _address(found[n])]
            if len(ready) == len(names):
                return [self._node(found[n], request.zone) for n in names]
            if not waits.pause():
                raise CallTimeoutError(
                    f"{len(names) - len(ready)} of {len(names)} {request.shape.instance_type} "
                    f"VM(s) in {request.zone} not RUNNING with an address yet; call again with "
                    "the same token to keep waiting",
                    code="LaunchWaitTimeout",
                    provider=PROVIDER,
                )

    @staticmethod
    def _partial_gang(
        request: LaunchRequest,
        names: Sequence[str],
        gone: Sequence[str],
        found: Mapping[str, compute_v1.Instance],
    ) -> CapacityError:
        states = sorted({_status(found[n]) if n in found else "DELETED" for n in gone})
        cluster = request.tags.get(TAG_CLUSTER, "?")
        return CapacityError(
            f"{len(gone)} of {len(names)} {request.shape.instance_type} VM(s) in "
            f"{request.zone} ended before running ({', '.join(states)}): partial gang; the "
            f"other {len(names) - len(gone)} are left for the caller to terminate "
            f"(label {TAG_CLUSTER}={cluster}); launch again with a new token",
            code="InstanceTerminatedDuringLaunch",
            provider=PROVIDER,
        )

    # -- describe internals ----------------------------------------------------------------

    def _in_scope(self, zone: str) -> bool:
        if self.config.zones:
            return zone in self.config.zones
        return _region_of(zone) in self.config.regions

    def _nodes(self, filter_: str) -> list[Node]:
        """Every VM matching the filter in the configured regions, oldest first."""
        found: list[tuple[str, compute_v1.Instance]] = []
        pairs: Iterable[tuple[str, compute_v1.InstancesScopedList]] = self._list(
            self.instances.aggregated_list,
            request=compute_v1.AggregatedListInstancesRequest(
                project=self.config.project, filter=filter_
            ),
        )
        for scope, scoped in pairs:
            zone = _last(scope)
            if not scope.startswith("zones/") or not self._in_scope(zone):
                continue
            found.extend((zone, i) for i in scoped.instances)

        # Oldest gang first (VMs of one bulkInsert share a creation time), rank order inside.
        def gang(instance: compute_v1.Instance) -> tuple[str, str]:
            return instance.labels.get(TAG_CLUSTER, ""), instance.labels.get(TAG_ATTEMPT, "")

        born: dict[tuple[str, str], str] = {}
        for _, instance in found:
            key = gang(instance)
            born[key] = min(born.get(key, instance.creation_timestamp), instance.creation_timestamp)
        found.sort(key=lambda zi: (born[gang(zi[1])], gang(zi[1]), zi[1].name))
        return [self._node(instance, zone) for zone, instance in found]

    def _node(self, instance: compute_v1.Instance, zone: str) -> Node:
        state = _STATES.get(_status(instance), NodeState.PENDING)
        address = _address(instance)
        if state is NodeState.RUNNING and not address:
            state = NodeState.PENDING
        region = _region_of(zone)
        market = Provisioning.SPOT if _is_spot(instance) else Provisioning.ON_DEMAND
        return Node(
            provider=PROVIDER,
            provider_id=instance.name,
            shape_id=f"{PROVIDER}:{region}:{_instance_type(instance)}:{market.value}",
            region=region,
            zone=zone,
            state=state,
            private_ip=address,
            tags=dict(instance.labels),
        )

    # -- terminate internals ---------------------------------------------------------------

    def _exists(self, zone: str, name: str) -> bool:
        try:
            self.instances.get(
                project=self.config.project,
                zone=zone,
                instance=name,
                retry=None,
                timeout=self.call_timeout,
            )
        except core_exc.NotFound:
            return False
        except GOOGLE_ERRORS as exc:
            raise classify(exc) from exc
        return True

    def _await_gone(self, targets: Sequence[tuple[str, str]], deadline: float) -> None:
        waits = Backoff(self.poll_interval, deadline, self._clock, self._sleep)
        left = list(targets)
        while True:
            left = [(zone, name) for zone, name in left if self._exists(zone, name)]
            if not left:
                return
            if not waits.pause():
                shown = ", ".join(name for _, name in left[:5])
                raise CallTimeoutError(
                    f"{len(left)} VM(s) still not deleted ({shown}"
                    f"{', ...' if len(left) > 5 else ''})",
                    code="TerminateWaitTimeout",
                    provider=PROVIDER,
                )

    def _sweep_policies(self, region: str, clusters: set[str]) -> None:
        """Delete these clusters' placement policies that no VM uses any more (best effort)."""
        client = self._client(compute_v1.ResourcePoliciesClient)
        try:
            policies = self._list(client.list, project=self.config.project, region=region)
            for policy in policies:
                marks = dict(
                    part.split("=", 1)
                    for part in policy.description.split()[1:]
                    if policy.description.startswith("burst-broker ") and "=" in part
                )
                cluster = marks.get("cluster")
                if not cluster or cluster not in clusters:
                    continue
                filter_ = f'labels.{TAG_CLUSTER} = "{cluster}"'
                if marks.get("attempt"):
                    filter_ += f' AND labels.{TAG_ATTEMPT} = "{marks["attempt"]}"'
                if not self._nodes(filter_):
                    self._delete_policy(region, policy.name)
        except ProviderError as exc:
            log.warning("could not clean resource policies in %s: %s", region, exc)


if TYPE_CHECKING:

    def _implements_provider(gcp: GcpProvider) -> Provider:
        return gcp

    def _implements_quotas(gcp: GcpProvider) -> QuotaSource:
        return gcp

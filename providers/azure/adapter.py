"""Azure adapter (azure-mgmt-compute): gangs of N identical GPU VMs in one zone of one region.

**Standalone VMs, not a scale set.** A gang is N ``virtual_machines.begin_create_or_update``
PUTs issued back to back (Azure works on them in parallel), then awaited together. Why not a
scale set with a fixed capacity: a scale set has no minimum count, so a partial allocation
must be detected by listing its instances anyway, and how it is reported is not documented;
a failed allocation of one VM of a set is harder to attribute, and the set is one more
resource to create and delete per attempt. Standalone VMs fail one by one with a clear ARM
code from their own long-running operation, their names are ours (deterministic, so a
repeated call adopts them), and each is tagged and found like any other VM. The cost: the
gang is not one placement unit (InfiniBand across standalone ND VMs is said to need a scale
set or availability set; unverified), which the proximity placement group mitigates.

**No azure-mgmt-network.** Each VM carries a ``network_interface_configurations`` entry
(``network_profile.network_api_version`` set), so Compute creates the NIC itself; the NIC
and the OS disk have ``delete_option="Delete"``, so deleting the VM deletes them. The private
IP is read from the NIC with a plain ARM GET sent through the Compute client's own pipeline
(``ComputeManagementClient.send_request``: same credential, endpoint, CA and no retries).

**All or nothing.** When any VM of the gang fails (its operation ends ``Failed``:
``AllocationFailed`` and friends, or a synchronous refusal such as ``SkuNotAvailable``), or a
spot VM is evicted before the gang runs, the adapter deletes every VM of the attempt itself,
including VMs left in ``Failed`` provisioning state, waits until they are gone, deletes the
NIC and disk a Failed VM may still hold (Azure is not relied on to cascade for them), then
raises the classified error. Two exceptions leave the VMs for a retry with the same token to
adopt: a transient error while the PUTs are being sent, and running out of ``timeout``
(CallTimeoutError). Whatever survives is tagged, and the provisioner's cleanup or
``broker reconcile`` finds it with :meth:`AzureProvider.describe`.

**Idempotency.** VM names are ``<cluster>-<attempt>-<index>`` (sanitised, at most 56
characters, so the NIC and disk names derived from them fit), and each VM carries the token
in a ``broker-token`` tag. PUT is create-or-update, so before creating anything the adapter
lists the attempt's VMs: existing ones are adopted (awaited, not re-created); one with
another token, size, location, zone or spot setting, or an index beyond ``count``, makes the
call an InvalidLaunchError ``IdempotentParameterMismatch``.

**Zones.** The bundled catalog (built from a CSV without zones) gives each region its own
name as a single pseudo-zone. A zone equal to the region name means a regional VM (no
``zones`` field); anything else ("1", "2", "3" from a live refresh) is an availability zone.
A node's ``zone`` is the request's zone either way.

**Placement.** A multi-node gang gets a proximity placement group ``<cluster>-<attempt>``
(``proximity_placement_group = true``, the default), zonal when the gang is; it is deleted
after the attempt's VMs are gone (on rollback, and by :meth:`AzureProvider.terminate` for the
clusters it terminates), best effort, like AWS placement groups.

**Tags.** ``config.tags`` + the request's tags (broker, cluster, attempt) + ``broker-shape``
(the shape id, so ``Node.shape_id`` is exact) + ``broker-token``, on the VM, its NIC
configuration and the placement group (the OS disk has no tag field in a VM request; it is
named after its VM and deleted with it).

**describe / list_tagged** list the resource group's VMs with their instance view
(``virtual_machines.list(resource_group, expand="instanceView")``; ARM has no server-side tag
filter there) and keep, in Python, the tagged VMs in configured regions: creating or starting
VMs are PENDING, running ones with an address RUNNING, deleting, stopped, deallocated and
Failed ones TERMINATING (they still exist and hold a NIC and a disk).

**Retries and credentials.** The client is built with ``retry_total=0`` (tenacity in the
broker is the only retrier) and a small ``polling_interval`` for long-running operations.
Credentials come only from ``azure.identity.DefaultAzureCredential`` (or an injected one in
tests) and are never logged or shown; every SDK exception goes through
:func:`providers.azure.errors.classify`.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError
from azure.core.rest import HttpRequest
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.compute import models as m

from providers.azure.config import AzureConfig
from providers.azure.errors import PROVIDER, classify, lookup
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
    NotConfiguredError,
    ProviderError,
    Reach,
    RegionConfigError,
)
from providers.polling import Backoff
from providers.quotas import (
    AZURE_CORES,
    AZURE_QUOTA_FAMILIES,
    AZURE_SPOT_CORES,
    QuotaReport,
    QuotaUnit,
    ReportBuilder,
    bucket_key,
    unreadable,
)
from shapes.catalog import Catalog
from shapes.model import Provisioning, Shape

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

    from providers.base import Provider, QuotaSource

__all__ = ["TAG_SHAPE", "TAG_TOKEN", "AzureProvider", "compute_client", "vm_base_name"]

log = logging.getLogger(__name__)
# What reading usages needs (said when a refusal leaves the quota unread).
QUOTA_PERMISSIONS = "Microsoft.Compute/locations/usages/read"

TAG_SHAPE = "broker-shape"
TAG_TOKEN = "broker-token"
NETWORK_API_VERSION = "2024-05-01"  # for Compute-created NICs and the NIC GET
DISK_API_VERSION = "2024-03-02"
MAX_BASE = 56  # VM name limit 64 (Linux) minus room for "-<index>" and NIC/disk suffixes
_INVALID = re.compile(r"[^a-z0-9-]+")
_INDEX = re.compile(r"-(\d+)$")
_AS_FAILED = "ProvisioningState/failed/"


def vm_base_name(request: LaunchRequest) -> str:
    """``<cluster>-<attempt>`` (or ``bb-<hash of the token>``), sanitised for VM names."""
    cluster, attempt = request.tags.get(TAG_CLUSTER), request.tags.get(TAG_ATTEMPT)
    raw = f"{cluster}-{attempt}" if cluster and attempt else f"bb-{_digest(request.token, 16)}"
    base = _INVALID.sub("-", raw.lower()).strip("-") or "bb"
    if len(base) > MAX_BASE:
        base = f"{base[: MAX_BASE - 9].rstrip('-')}-{_digest(raw, 8)}"
    if not base[0].isalnum():
        base = "vm" + base
    return base


def _digest(text: str, size: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:size]


def _index(name: str) -> int:
    found = _INDEX.search(name)
    return int(found.group(1)) if found else 0


def _is_attempt_name(name: str, base: str) -> bool:
    return re.fullmatch(re.escape(base) + r"-\d+", name.lower()) is not None


def _text(value: Any) -> str:
    """A model field as text (enum fields are str enums: use their value, not their name)."""
    return str(getattr(value, "value", value) or "")


def _props(vm: Any) -> Any:
    return getattr(vm, "properties", None)


def _size(vm: Any) -> str:
    hardware = getattr(_props(vm), "hardware_profile", None)
    return _text(getattr(hardware, "vm_size", ""))


def _provisioning(vm: Any) -> str:
    return _text(getattr(_props(vm), "provisioning_state", ""))


def _statuses(vm: Any) -> list[str]:
    view = getattr(_props(vm), "instance_view", None)
    return [str(getattr(s, "code", "") or "") for s in getattr(view, "statuses", None) or ()]


def _power(vm: Any) -> str:
    return next((s for s in _statuses(vm) if s.startswith("PowerState/")), "")


def _failure_code(vm: Any) -> str:
    for status in _statuses(vm):
        if status.startswith(_AS_FAILED):
            return status[len(_AS_FAILED) :] or "ProvisioningFailed"
    return "ProvisioningFailed"


def _nic_id(vm: Any) -> str | None:
    network = getattr(_props(vm), "network_profile", None)
    for nic in getattr(network, "network_interfaces", None) or ():
        if getattr(nic, "id", None):
            return str(nic.id)
    return None


def _disk_id(vm: Any) -> str | None:
    storage = getattr(_props(vm), "storage_profile", None)
    managed = getattr(getattr(storage, "os_disk", None), "managed_disk", None)
    found = getattr(managed, "id", None)
    return str(found) if found else None


def _tags(vm: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in (getattr(vm, "tags", None) or {}).items()}


def _zone(vm: Any) -> str:
    zones = getattr(vm, "zones", None) or ()
    return str(zones[0]) if zones else str(getattr(vm, "location", "") or "")


def _is_spot(vm: Any) -> bool:
    return _text(getattr(_props(vm), "priority", "")).lower() == "spot"


def compute_client(
    config: AzureConfig,
    credential: TokenCredential | None = None,
    *,
    polling_interval: float = 5.0,
) -> ComputeManagementClient:
    """A Compute client for ``config``: its endpoint and CA bundle, no SDK retries (the
    broker's tenacity retries), DefaultAzureCredential unless ``credential`` is given."""
    try:
        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
        options: dict[str, Any] = {"retry_total": 0, "polling_interval": polling_interval}
        if config.ca_bundle:
            options["connection_verify"] = config.ca_bundle
        return ComputeManagementClient(
            credential,
            config.subscription_id,
            base_url=config.endpoint or "https://management.azure.com",
            **options,
        )
    except (AzureError, ValueError) as exc:
        raise classify(exc) from exc


class AzureProvider:
    """Azure VM gangs; implements :class:`providers.base.Provider` (plus :meth:`health`)."""

    name: str = PROVIDER

    def __init__(
        self,
        config: AzureConfig,
        catalog: Catalog,
        *,
        credential: TokenCredential | None = None,
        polling_interval: float = 5.0,
        poll_interval: float = 10.0,
        terminate_timeout: float = 900.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``polling_interval``: the SDK's long-running-operation polling (seconds);
        ``poll_interval``: the most the adapter waits between its own status reads."""
        self.config = config
        self.catalog = catalog
        self.polling_interval = polling_interval
        self.poll_interval = poll_interval
        self.terminate_timeout = terminate_timeout
        self._sleep = sleep
        self._clock = clock
        self._credential = credential
        self._client: ComputeManagementClient | None = None
        self._lock = threading.Lock()

    # -- client ----------------------------------------------------------------------------

    @property
    def compute(self) -> ComputeManagementClient:
        """The Compute client (created once; DefaultAzureCredential unless one was given)."""
        with self._lock:
            if self._client is None:
                self._client = compute_client(
                    self.config, self._credential, polling_interval=self.polling_interval
                )
            return self._client

    @property
    def resource_group(self) -> str:
        return self.config.resource_group

    # -- the Provider interface ------------------------------------------------------------

    def list_shapes(self) -> list[Shape]:
        return configured_shapes(self.catalog, PROVIDER, self.config.regions)

    def launch(self, request: LaunchRequest, *, timeout: float) -> list[Node]:
        deadline = self._clock() + max(timeout, 0.0)
        shape = request.shape
        check_launch_region(shape, PROVIDER, self.config.regions)
        check_bootstrap(request.bootstrap, PROVIDER)
        self._vm_model(request, "check", None)  # configuration errors before any call
        base = vm_base_name(request)
        names = [f"{base}-{i}" for i in range(request.count)]
        existing = self._existing(request, base)
        failed = [vm for vm in existing.values() if _provisioning(vm) == "Failed"]
        if failed:
            code = _failure_code(failed[0])
            error = (lookup(code) or CapacityError)(
                f"VM {failed[0].name} of this attempt is in Failed state ({code}); the "
                "attempt was rolled back",
                code=code,
                provider=PROVIDER,
            )
            raise self._roll_back(request, base, error)
        missing = [n for n in names if n not in existing]
        if missing:
            self._create(request, base, missing, deadline)
        return self._await_running(request, base, names, deadline)

    def describe(self, cluster_id: str) -> list[Node]:
        return self._nodes(cluster_id)

    def list_tagged(self) -> list[Node]:
        return self._nodes(None)

    def terminate(self, nodes: Sequence[Node]) -> None:
        """Delete the VMs (their NICs and disks go with them), wait until they are gone,
        then delete the clusters' proximity placement groups that no VM uses any more."""
        names = list(dict.fromkeys(n.provider_id for n in nodes))
        if not names:
            return
        clusters = {n.cluster_id for n in nodes if n.cluster_id}
        self._delete_vms(names, self._clock() + self.terminate_timeout)
        if clusters and self.config.proximity_placement_group:
            self._sweep_placement_groups(clusters)

    def health(self) -> tuple[bool, str]:
        """Do the credentials reach the resource group? (True, "subscription …0aa, ...")."""
        try:  # one page of the group's VMs: the token, the subscription and the group
            next(iter(self.compute.virtual_machines.list(self.resource_group)), None)
        except (AzureError, ProviderError) as exc:
            err = classify(exc)
            return False, f"{err.reason}: {err.code}: {err.message}"
        regions = self.config.regions
        return True, (
            f"subscription …{self.config.subscription_id[-4:]}, resource group "
            f"{self.resource_group}, {len(regions)} region(s): {', '.join(regions)}"
        )

    def quotas(self, region: str) -> QuotaReport:
        """The vCPU quotas of ``region`` (``usage.list(location)``): the GPU VM families of
        providers.quotas.AZURE_QUOTA_FAMILIES, ``cores`` and ``lowPriorityCores``, each with
        its current value. A refused read is a warning."""
        found = ReportBuilder(PROVIDER, region)
        wanted = {bucket_key(f): f for f in AZURE_QUOTA_FAMILIES.values()}
        for name in (AZURE_CORES, AZURE_SPOT_CORES):
            wanted[bucket_key(name)] = name
        try:
            usages = list(self._call(lambda: list(self.compute.usage.list(region))))
        except ProviderError as exc:
            why = unreadable(exc, QUOTA_PERMISSIONS)
            found.warn(f"the usage of {region} could not be read: {why}")
            return found.report()
        for usage in usages:
            name = str(getattr(usage.name, "value", "") or "")
            if bucket_key(name) not in wanted or usage.limit is None:
                continue
            words = str(getattr(usage.name, "localized_value", "") or name)
            spot = bucket_key(name) == bucket_key(AZURE_SPOT_CORES)
            found.add(
                name,
                words,
                QuotaUnit.VCPU,
                "spot" if spot else "on-demand",
                float(usage.limit),
                float(usage.current_value or 0),
            )
        return found.report()

    # -- launch internals ------------------------------------------------------------------

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except AzureError as exc:
            raise classify(exc) from exc

    def _list_vms(self, *, instance_view: bool) -> list[Any]:
        ops = self.compute.virtual_machines
        if instance_view:
            return list(
                self._call(lambda: list(ops.list(self.resource_group, expand="instanceView")))
            )
        return list(self._call(lambda: list(ops.list(self.resource_group))))

    def _existing(self, request: LaunchRequest, base: str) -> dict[str, Any]:
        """This attempt's VMs that exist already (a repeated call), checked against the
        request: any difference is IdempotentParameterMismatch."""
        cluster, attempt = request.tags.get(TAG_CLUSTER), request.tags.get(TAG_ATTEMPT)
        found: dict[str, Any] = {}
        for vm in self._list_vms(instance_view=True):
            tags = _tags(vm)
            name = str(vm.name)
            mine = _is_attempt_name(name, base)
            same_attempt = (
                cluster and tags.get(TAG_CLUSTER) == cluster and tags.get(TAG_ATTEMPT) == attempt
            )
            if mine or same_attempt:
                found[name] = vm
        shape = request.shape
        spot = shape.provisioning is Provisioning.SPOT
        zonal = request.zone != shape.region
        for name, vm in found.items():
            zones = list(getattr(vm, "zones", None) or [])
            if (
                _tags(vm).get(TAG_TOKEN) != request.token
                or _size(vm).lower() != shape.instance_type.lower()
                or str(vm.location).lower() != shape.region.lower()
                or zones != ([request.zone] if zonal else [])
                or _is_spot(vm) != spot
                or _index(name) >= request.count
            ):
                raise InvalidLaunchError(
                    f"token {request.token!r}: attempt VM {name} exists as {_size(vm)} in "
                    f"{vm.location} zone {_zone(vm)} (token {_tags(vm).get(TAG_TOKEN)!r}), "
                    f"not one of {request.count} x {shape.id} in {request.zone}",
                    code="IdempotentParameterMismatch",
                    provider=PROVIDER,
                )
        return found

    def _launch_tags(self, request: LaunchRequest) -> dict[str, str]:
        return {
            **self.config.tags,
            **request.tags,
            TAG_SHAPE: request.shape.id,
            TAG_TOKEN: request.token,
        }

    def _image(self) -> m.ImageReference:
        image = self.config.image
        if image.startswith("/"):
            return m.ImageReference(id=image)
        parts = image.split(":")
        if len(parts) != 4:
            raise NotConfiguredError(
                f"[azure] image {image!r} is neither publisher:offer:sku:version nor a resource id",
                code="NotConfigured",
                provider=PROVIDER,
            )
        return m.ImageReference(publisher=parts[0], offer=parts[1], sku=parts[2], version=parts[3])

    def _vm_model(self, request: LaunchRequest, name: str, ppg: str | None) -> m.VirtualMachine:
        shape = request.shape
        region = shape.region
        subnet = self.config.subnets.get(region)
        if not subnet:
            raise RegionConfigError(
                f'no subnet for {region}: set [azure.subnets] {region} = "/subscriptions/.../'
                'subnets/..."',
                code="NotConfigured",
                provider=PROVIDER,
            )
        if not self.config.ssh_public_key:
            raise NotConfiguredError(
                "set [azure] ssh_public_key (password login is disabled on broker VMs)",
                code="NotConfigured",
                provider=PROVIDER,
            )
        ip = m.VirtualMachineNetworkInterfaceIPConfiguration(
            name="ipconfig1",
            properties=m.VirtualMachineNetworkInterfaceIPConfigurationProperties(
                subnet=m.SubResource(id=subnet), primary=True
            ),
        )
        nic = m.VirtualMachineNetworkInterfaceConfiguration(
            name=f"{name}-nic",
            tags=self._launch_tags(request),
            properties=m.VirtualMachineNetworkInterfaceConfigurationProperties(
                primary=True, delete_option="Delete", ip_configurations=[ip]
            ),
        )
        user = self.config.admin_username
        # The boot script: cloud-init runs it at first boot; ARM never shows it again (a GET
        # omits customData). None leaves the field out of the request.
        custom_data = (
            base64.b64encode(request.bootstrap.encode("utf-8")).decode("ascii")
            if request.bootstrap is not None
            else None
        )
        props = m.VirtualMachineProperties(
            hardware_profile=m.HardwareProfile(vm_size=shape.instance_type),
            storage_profile=m.StorageProfile(
                image_reference=self._image(),
                os_disk=m.OSDisk(
                    name=f"{name}-osdisk",
                    create_option="FromImage",
                    disk_size_gb=self.config.os_disk_gb,
                    delete_option="Delete",
                    managed_disk=m.ManagedDiskParameters(storage_account_type="Premium_LRS"),
                ),
            ),
            os_profile=m.OSProfile(
                computer_name=name,
                admin_username=user,
                custom_data=custom_data,
                linux_configuration=m.LinuxConfiguration(
                    disable_password_authentication=True,
                    ssh=m.SshConfiguration(
                        public_keys=[
                            m.SshPublicKey(
                                path=f"/home/{user}/.ssh/authorized_keys",
                                key_data=self.config.ssh_public_key,
                            )
                        ]
                    ),
                ),
            ),
            network_profile=m.NetworkProfile(
                network_api_version=NETWORK_API_VERSION, network_interface_configurations=[nic]
            ),
        )
        if shape.provisioning is Provisioning.SPOT:
            props.priority = "Spot"
            props.eviction_policy = "Delete"
            props.billing_profile = m.BillingProfile(max_price=-1)
        if ppg:
            props.proximity_placement_group = m.SubResource(id=ppg)
        vm = m.VirtualMachine(location=region, tags=self._launch_tags(request), properties=props)
        if request.zone != region:
            vm.zones = [request.zone]
        return vm

    def _ensure_placement_group(self, request: LaunchRequest, base: str) -> str | None:
        if request.count < 2 or not self.config.proximity_placement_group:
            return None
        group = m.ProximityPlacementGroup(
            location=request.shape.region,
            tags=self._launch_tags(request),
            properties=m.ProximityPlacementGroupProperties(
                proximity_placement_group_type="Standard",
            ),
        )
        if request.zone != request.shape.region:
            group.zones = [request.zone]
        made = self._call(
            self.compute.proximity_placement_groups.create_or_update,
            self.resource_group,
            base,
            group,
        )
        return str(made.id)

    def _create(
        self, request: LaunchRequest, base: str, names: Sequence[str], deadline: float
    ) -> None:
        """PUT the missing VMs and wait for their operations. Any failure but a transient
        refusal of a PUT rolls the whole attempt back before the error is raised."""
        ppg = self._ensure_placement_group(request, base)
        models = [(name, self._vm_model(request, name, ppg)) for name in names]
        pollers: list[tuple[str, Any]] = []
        ops = self.compute.virtual_machines
        for name, model in models:
            try:
                pollers.append((name, ops.begin_create_or_update(self.resource_group, name, model)))
            except AzureError as exc:
                error = classify(exc)
                if error.reach is Reach.CALL:
                    # The retry (same token) adopts what was created. With nothing created
                    # (nor left by an earlier call) the placement group would be nobody's:
                    # remove it now, the retry makes it again.
                    if ppg and not pollers and len(names) == request.count:
                        self._delete_placement_group(base)
                    raise error from exc
                self._settle(pollers, deadline)
                raise self._roll_back(request, base, error) from exc
        errors = self._settle(pollers, deadline)
        if errors:
            raise self._roll_back(request, base, errors[0])

    def _settle(self, pollers: Sequence[tuple[str, Any]], deadline: float) -> list[ProviderError]:
        """Wait for every operation; their classified errors, the most telling first."""
        errors: list[ProviderError] = []
        for name, poller in pollers:
            try:
                poller.wait(timeout=max(deadline - self._clock(), 0.5))  # raises its error
                if not poller.done():
                    raise CallTimeoutError(
                        f"the creation of VM {name} did not finish in time; call again with "
                        "the same token to keep waiting",
                        code="LaunchWaitTimeout",
                        provider=PROVIDER,
                    )
                poller.result()
            except AzureError as exc:
                error = classify(exc)
                error.message = f"VM {name}: {error.message}"
                errors.append(error)
        errors.sort(key=lambda e: e.reach is Reach.CALL)  # a capacity code beats a 5xx
        return errors

    def _roll_back(self, request: LaunchRequest, base: str, error: ProviderError) -> ProviderError:
        """Delete every VM of the attempt (Failed ones with their NIC and disk) and its
        placement group; the error to raise (noting a rollback that did not finish)."""
        try:
            names = [str(vm.name) for vm in self._attempt_vms(request, base)]
            self._delete_vms(names, self._clock() + self.terminate_timeout)
            if request.count > 1 and self.config.proximity_placement_group:
                self._delete_placement_group(base)
        except ProviderError as exc:
            error.message += (
                f" (rollback incomplete: {exc.code}: {exc.message}; the VMs are tagged "
                f"{TAG_CLUSTER}={request.tags.get(TAG_CLUSTER)} for the caller to terminate)"
            )
        return error

    def _attempt_vms(self, request: LaunchRequest, base: str) -> list[Any]:
        cluster, attempt = request.tags.get(TAG_CLUSTER), request.tags.get(TAG_ATTEMPT)
        return [
            vm
            for vm in self._list_vms(instance_view=False)
            if _is_attempt_name(str(vm.name), base)
            or (
                cluster
                and _tags(vm).get(TAG_CLUSTER) == cluster
                and _tags(vm).get(TAG_ATTEMPT) == attempt
            )
        ]

    def _await_running(
        self, request: LaunchRequest, base: str, names: Sequence[str], deadline: float
    ) -> list[Node]:
        """Poll the VMs until every one is running with a private address."""
        waits = Backoff(self.poll_interval, deadline, self._clock, self._sleep)
        addresses: dict[str, str] = {}
        while True:
            vms = {str(vm.name): vm for vm in self._list_vms(instance_view=True)}
            gone = [n for n in names if n not in vms or _provisioning(vms[n]) == "Deleting"]
            failed = [n for n in names if n in vms and _provisioning(vms[n]) == "Failed"]
            if gone or failed:
                raise self._roll_back(
                    request, base, self._partial(request, names, gone, failed, vms)
                )
            for n in names:
                vm = vms[n]
                if (
                    n not in addresses
                    and _provisioning(vm) == "Succeeded"
                    and _power(vm) == "PowerState/running"
                ):
                    ip = self._private_ip(vm)
                    if ip:
                        addresses[n] = ip
            if all(n in addresses for n in names):
                return [self._node(vms[n], addresses[n]) for n in names]
            if not waits.pause():
                waiting = sum(1 for n in names if n not in addresses)
                raise CallTimeoutError(
                    f"{waiting} of {len(names)} {request.shape.instance_type} VM(s) in "
                    f"{request.shape.region} zone {request.zone} not running with an address "
                    "yet; call again with the same token to keep waiting",
                    code="LaunchWaitTimeout",
                    provider=PROVIDER,
                )

    @staticmethod
    def _partial(
        request: LaunchRequest,
        names: Sequence[str],
        gone: Sequence[str],
        failed: Sequence[str],
        vms: Mapping[str, Any],
    ) -> ProviderError:
        cluster = request.tags.get(TAG_CLUSTER, "?")
        if failed:
            code = _failure_code(vms[failed[0]])
            what = f"{len(failed)} of {len(names)} VM(s) failed ({code})"
        else:
            code = "VMEvictedDuringLaunch"
            what = f"{len(gone)} of {len(names)} VM(s) vanished before running (spot eviction)"
        return (lookup(code) or CapacityError)(
            f"{what}: partial gang of {request.shape.instance_type} in {request.shape.region} "
            f"zone {request.zone} (cluster {cluster}); the attempt was rolled back",
            code=code,
            provider=PROVIDER,
        )

    def _private_ip(self, vm: Any) -> str | None:
        """The primary private IP of the VM's NIC (a plain ARM GET of the NIC)."""
        nic = _nic_id(vm)
        if not nic:
            return None
        try:
            response = self.compute.send_request(
                HttpRequest("GET", f"{nic}?api-version={NETWORK_API_VERSION}")
            )
        except AzureError as exc:
            raise classify(exc) from exc
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise classify(HttpResponseError(response=response))
        configs = response.json().get("properties", {}).get("ipConfigurations", [])
        primary = [c for c in configs if c.get("properties", {}).get("primary")] or configs
        for config in primary:
            address = config.get("properties", {}).get("privateIPAddress")
            if address:
                return str(address)
        return None

    # -- describe internals ----------------------------------------------------------------

    def _node(self, vm: Any, address: str | None) -> Node:
        tags = _tags(vm)
        location = str(vm.location)
        state = _node_state(vm)
        if state is NodeState.RUNNING and not address:
            state = NodeState.PENDING
        market = Provisioning.SPOT if _is_spot(vm) else Provisioning.ON_DEMAND
        return Node(
            provider=PROVIDER,
            provider_id=str(vm.name),
            shape_id=tags.get(TAG_SHAPE) or f"{PROVIDER}:{location}:{_size(vm)}:{market.value}",
            region=location,
            zone=_zone(vm),
            state=state,
            private_ip=address,
            tags=tags,
        )

    def _nodes(self, cluster_id: str | None) -> list[Node]:
        """The tagged VMs (of one cluster, or all) in configured regions, as nodes."""
        regions = {r.lower() for r in self.config.regions}
        vms = [
            vm
            for vm in self._list_vms(instance_view=True)
            if TAG_CLUSTER in _tags(vm)
            and (cluster_id is None or _tags(vm)[TAG_CLUSTER] == cluster_id)
            and str(vm.location).lower() in regions
        ]
        vms.sort(
            key=lambda vm: (
                _tags(vm).get(TAG_CLUSTER, ""),
                _tags(vm).get(TAG_ATTEMPT, ""),
                _index(str(vm.name)),
                str(vm.name),
            )
        )
        nodes = []
        for vm in vms:
            running = _node_state(vm) is NodeState.RUNNING
            nodes.append(self._node(vm, self._private_ip(vm) if running else None))
        return nodes

    # -- delete internals ------------------------------------------------------------------

    def _delete_vms(self, names: Iterable[str], deadline: float) -> None:
        """Delete these VMs, wait until they are gone, then delete the NIC and OS disk of
        those that were Failed (best effort: Compute cascades for the rest)."""
        wanted = {n.lower() for n in names}
        current = [
            vm for vm in self._list_vms(instance_view=False) if str(vm.name).lower() in wanted
        ]
        leftovers = [
            rid
            for vm in current
            if _provisioning(vm) == "Failed"
            for rid in (_nic_id(vm), _disk_id(vm))
            if rid
        ]
        pollers = []
        for vm in current:
            if _provisioning(vm) == "Deleting":
                continue
            try:
                pollers.append(
                    self.compute.virtual_machines.begin_delete(self.resource_group, str(vm.name))
                )
            except ResourceNotFoundError:
                continue
            except AzureError as exc:
                raise classify(exc) from exc
        for poller in pollers:
            self._call(poller.wait, timeout=max(deadline - self._clock(), 0.5))
        self._await_gone(wanted, deadline)
        for rid in leftovers:
            self._delete_raw(rid)

    def _await_gone(self, wanted: set[str], deadline: float) -> None:
        waits = Backoff(self.poll_interval, deadline, self._clock, self._sleep)
        while True:
            alive = sorted(
                str(vm.name)
                for vm in self._list_vms(instance_view=True)
                if str(vm.name).lower() in wanted
            )
            if not alive:
                return
            if not waits.pause():
                raise CallTimeoutError(
                    f"{len(alive)} VM(s) still not deleted "
                    f"({', '.join(alive[:5])}{', ...' if len(alive) > 5 else ''})",
                    code="TerminateWaitTimeout",
                    provider=PROVIDER,
                )

    def _delete_raw(self, resource_id: str) -> None:
        """DELETE a NIC or disk by id (best effort; gone already is fine)."""
        version = (
            NETWORK_API_VERSION
            if "/microsoft.network/" in resource_id.lower()
            else DISK_API_VERSION
        )
        try:
            response = self.compute.send_request(
                HttpRequest("DELETE", f"{resource_id}?api-version={version}")
            )
        except AzureError as exc:
            log.warning("could not delete %s: %s", resource_id, classify(exc))
            return
        if response.status_code not in (200, 202, 204, 404):
            log.warning("could not delete %s: HTTP %s", resource_id, response.status_code)

    def _delete_placement_group(self, name: str) -> None:
        try:
            self._call(self.compute.proximity_placement_groups.delete, self.resource_group, name)
        except ProviderError as exc:
            log.warning("could not delete proximity placement group %s: %s", name, exc)

    def _sweep_placement_groups(self, clusters: set[str]) -> None:
        """Delete these clusters' placement groups that no VM uses (best effort)."""
        try:
            groups = self._call(
                lambda: list(
                    self.compute.proximity_placement_groups.list_by_resource_group(
                        self.resource_group
                    )
                )
            )
        except ProviderError as exc:
            log.warning("could not list proximity placement groups: %s", exc)
            return
        for group in groups:
            if _tags(group).get(TAG_CLUSTER) not in clusters:
                continue
            if getattr(_props(group), "virtual_machines", None):
                continue
            self._delete_placement_group(str(group.name))


def _node_state(vm: Any) -> NodeState:
    provisioning = _provisioning(vm)
    power = _power(vm)
    if provisioning in ("Deleting", "Failed") or power in (
        "PowerState/stopping",
        "PowerState/stopped",
        "PowerState/deallocating",
        "PowerState/deallocated",
    ):
        return NodeState.TERMINATING
    if provisioning == "Succeeded" and power == "PowerState/running":
        return NodeState.RUNNING
    return NodeState.PENDING


if TYPE_CHECKING:

    def _implements_provider(azure: AzureProvider) -> Provider:
        return azure

    def _implements_quotas(azure: AzureProvider) -> QuotaSource:
        return azure

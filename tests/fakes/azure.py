"""A stateful fake of Azure Resource Manager (the parts the Azure adapter uses), over HTTPS.

The real ``ComputeManagementClient`` talks to it: bearer-token auth needs TLS, so the server
uses a ``trustme`` certificate for 127.0.0.1 and writes its CA to a file the client is given
explicitly (``connection_verify``). It answers:

- virtual machines: PUT (201 + ``Azure-AsyncOperation``, polled InProgress then
  Succeeded/Failed), GET (``$expand=instanceView``), list by resource group, DELETE (202 +
  ``Azure-AsyncOperation``; 204 when already gone). Each VM owns a NIC and an OS disk, the way
  Compute creates them from ``networkInterfaceConfigurations``; deleting the VM deletes them
  only when their ``deleteOption`` is ``Delete``, so tests can prove nothing is left;
- network interfaces: GET (the private IP), DELETE;
- proximity placement groups: PUT, GET, list, DELETE (refused while a VM uses the group);
- resource SKUs (``$filter=location eq '...'``) and the public Retail Prices API
  (``/api/retail/prices``, paged with ``NextPageLink``), both seeded from the bundled catalog;
- usages of a location (``usage.list``): cores, lowPriorityCores and the GPU families, their
  current value counted from the live VMs, limits from ``quota_limits``.

Faults are injected per operation, VM size and zone (:meth:`FakeArm.inject`): a Failed
long-running operation that leaves the VM ``Failed`` with its NIC and disk, a synchronous
ARM error (409 SkuNotAvailable / QuotaExceeded / OperationNotAllowed, 429 with Retry-After,
500/503, 401, 403, 400), a spot VM evicted while starting, a VM that never finishes starting,
a VM that lingers while being deleted.

Run it by hand for a try-out of the CLI (see the README)::

    python -m tests.fakes.azure --port 8443 --dir /tmp/azure-fake

It writes the CA file, a fake ``az`` (which DefaultAzureCredential's AzureCliCredential runs
for a token) and a broker config there, prints the environment to export, and serves until
Ctrl-C or SIGTERM. Another process injects faults with ``POST /_fake/inject`` and a JSON
object of :meth:`FakeArm.inject`'s arguments (``{"op": "create", "code": "AllocationFailed",
"kind": "lro"}``).
"""

from __future__ import annotations

import argparse
import copy
import http.server
import itertools
import json
import re
import signal
import ssl
import stat
import sys
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import trustme
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request, Response

from shapes.catalog import BUNDLED_DIR

SUBSCRIPTION = "00000000-0000-0000-0000-0000000000aa"
RESOURCE_GROUP = "burst-rg"
TOKEN = "fake-arm-token-7f3c9d"  # what the fake `az` prints; tests assert it never leaks
API_PRICES = "/api/retail/prices"
# POST a JSON object of inject()'s arguments here to inject a fault from another process.
CONTROL_INJECT = "/_fake/inject"
ZONES = ("1", "2", "3")

# Canonical GPU -> Azure's capability name / family suffix are not needed: SKUs carry counts.
_VM = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourcegroups/(?P<rg>[^/]+)/providers/"
    r"(?P<rp>microsoft\.compute|microsoft\.network)/(?P<kind>[a-z]+)(?:/(?P<name>[^/]+))?$"
)
_OP = re.compile(
    r"^/subscriptions/[^/]+/providers/microsoft\.compute/locations/[^/]+/operations/(?P<id>[^/]+)$"
)
_SKUS = re.compile(r"^/subscriptions/(?P<sub>[^/]+)/providers/microsoft\.compute/skus$")
_USAGES = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/providers/microsoft\.compute/locations/(?P<loc>[^/]+)/usages$"
)
DEFAULT_QUOTA = 100_000  # vCPUs of a quota no test set: never what stops a gang
# Size -> its quota family, as `az vm list-usage` and resource SKUs name it (real casing).
QUOTA_FAMILIES = {
    "Standard_NC6s_v3": "standardNCSv3Family",
    "Standard_NC12s_v3": "standardNCSv3Family",
    "Standard_NC24s_v3": "standardNCSv3Family",
    "Standard_NC24rs_v3": "standardNCSv3Family",
    "Standard_NC4as_T4_v3": "Standard NCASv3_T4 Family",
    "Standard_NC8as_T4_v3": "Standard NCASv3_T4 Family",
    "Standard_NC16as_T4_v3": "Standard NCASv3_T4 Family",
    "Standard_NC64as_T4_v3": "Standard NCASv3_T4 Family",
    "Standard_NC24ads_A100_v4": "StandardNCADSA100v4Family",
    "Standard_NC48ads_A100_v4": "StandardNCADSA100v4Family",
    "Standard_NC96ads_A100_v4": "StandardNCADSA100v4Family",
    "Standard_NC40ads_H100_v5": "StandardNCadsH100v5Family",
    "Standard_NC80adis_H100_v5": "StandardNCadsH100v5Family",
    "Standard_ND40rs_v2": "standardNDSv2Family",
    "Standard_ND96amsr_A100_v4": "standardNDAMSv4_A100Family",
    "Standard_ND96asr_v4": "Standard NDASv4_A100 Family",
    "Standard_ND96isr_H100_v5": "standardNDSH100v5Family",
    "Standard_ND96isr_H200_v5": "standardNDISRH200V5Family",
    "Standard_ND96isr_MI300X_v5": "standardNDISv5MI300XFamily",
}


@dataclass
class Fault:
    """One injected failure. ``op``: create, delete, get, list, nic, ppg, skus or prices.

    ``kind``: ``sync`` (answer ``status`` with an ARM error body now), ``lro`` (accept the
    create, then end its operation Failed and leave the VM Failed with NIC and disk),
    ``evict`` (the VM is created, then evicted and deleted at its first instance-view read),
    ``stuck`` (the VM stays ``PowerState/starting`` for ``reads`` reads), ``linger`` (a
    deleted VM stays ``Deleting`` for ``reads`` reads). ``times`` matching calls are hit,
    after ``skip`` matching calls were let through.
    """

    op: str
    code: str = ""
    kind: str = "sync"
    status: int = 409
    message: str = ""
    size: str | None = None
    zone: str | None = None  # a zone ("1") or, for regional VMs, the location
    location: str | None = None
    times: int = 1
    retry_after: int | None = None
    wrap: str | None = None  # an outer code that carries ``code`` in its details
    target: str | None = None  # the ARM error's target (the parameter it is about)
    reads: int = 10**9
    skip: int = 0  # matching calls let through before the first hit
    hits: int = 0

    def matches(self, op: str, size: str | None, zone: str | None, location: str | None) -> bool:
        return (
            self.hits < self.times
            and self.op == op
            and (self.size is None or self.size == size)
            and (self.zone is None or self.zone == zone)
            and (self.location is None or self.location == location)
        )

    def body(self) -> dict[str, Any]:
        message = self.message or f"injected {self.code} for the test"
        inner = {"code": self.code, "message": message}
        if self.target:
            inner["target"] = self.target
        if self.wrap:
            return {
                "code": self.wrap,
                "message": "At least one resource deployment operation failed.",
                "details": [inner],
            }
        return inner


@dataclass
class Vm:
    name: str
    body: dict[str, Any]
    state: str = "Creating"
    power: str = "PowerState/starting"
    error: dict[str, Any] | None = None
    evict: bool = False
    starting_reads: int = 0
    linger_reads: int = 0
    nic: str = ""
    disk: str = ""


@dataclass
class Operation:
    status: str = "InProgress"
    polls: int = 1  # InProgress answers before the final one
    error: dict[str, Any] | None = None
    finish: Any = None  # called once, under the lock, when the operation ends


def default_skus() -> dict[str, list[dict[str, Any]]]:
    """location -> resource SKUs: every GPU size of the bundled catalog where it is sold,
    with zones 1-3, plus a CPU size and a disk SKU (which the catalog must skip)."""
    doc = json.loads((BUNDLED_DIR / "azure.json").read_text(encoding="utf-8"))
    out: dict[str, list[dict[str, Any]]] = {}
    for size, spec in doc["instance_types"].items():
        for location in spec["regions"]:
            out.setdefault(location, []).append(
                sku(
                    size,
                    location,
                    gpus=spec["gpus"],
                    vcpus=spec["vcpus"],
                    memory=spec["memory_gib"],
                )
            )
    for location, skus in out.items():
        skus.append(sku("Standard_D4s_v5", location, gpus=0, vcpus=4, memory=16))
        skus.append({"resourceType": "disks", "name": "Premium_LRS", "locations": [location]})
    return out


def sku(
    size: str,
    location: str,
    *,
    gpus: float,
    vcpus: int,
    memory: float,
    zones: tuple[str, ...] = ZONES,
    restrictions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    caps = [("vCPUs", vcpus), ("MemoryGB", memory), ("LowPriorityCapable", "True")]
    if gpus:
        caps.append(("GPUs", gpus))
    family = "standard" + size.split("_", 1)[1].replace("_", "") + "Family"
    return {
        "resourceType": "virtualMachines",
        "name": size,
        "tier": "Standard",
        "size": size.split("_", 1)[1],
        "family": family,
        "locations": [location],
        "locationInfo": [{"location": location, "zones": list(zones)}],
        "capabilities": [{"name": k, "value": str(v)} for k, v in caps],
        "restrictions": restrictions or [],
    }


EFFECTIVE_START = "2026-09-01T00:00:00Z"  # effectiveStartDate of the default price rows


def default_prices() -> list[dict[str, Any]]:
    """Retail Prices API rows from the bundled catalog: Linux on-demand and spot, plus the
    rows a real answer also holds that the catalog must drop: Windows, Low Priority (an
    older, cheaper meter that is not Spot) and, outside a ``priceType eq 'Consumption'``
    query, DevTest and 1-year reservation rows."""
    doc = json.loads((BUNDLED_DIR / "azure.json").read_text(encoding="utf-8"))
    rows: list[dict[str, Any]] = []
    for size, spec in doc["instance_types"].items():
        for location, entry in spec["regions"].items():
            on_demand, spot = entry.get("on_demand"), entry.get("spot")
            if on_demand is not None:
                rows.append(price_row(size, location, on_demand))
                rows.append(price_row(size, location, on_demand * 1.4, windows=True))
                rows.append(price_row(size, location, on_demand * 0.2, meter="Low Priority"))
                rows.append(price_row(size, location, on_demand * 0.6, kind="DevTestConsumption"))
                rows.append(price_row(size, location, on_demand * 0.5, kind="Reservation"))
            if spot is not None:
                rows.append(price_row(size, location, spot, meter="Spot"))
                rows.append(price_row(size, location, spot * 1.3, meter="Spot", windows=True))
    return rows


def price_row(
    size: str,
    location: str,
    usd: float,
    *,
    meter: str = "",
    windows: bool = False,
    kind: str = "Consumption",
    effective: str = EFFECTIVE_START,
) -> dict[str, Any]:
    """One Items[] row of the Retail Prices API, with the real feed's fields: ``meterName`` and
    ``skuName`` "NC24ads A100 v4" (+ " Spot" / " Low Priority"), ``armSkuName`` the size,
    ``productName`` "Virtual Machines NCadsA100v4 Series" (+ " Windows"), ``type``
    Consumption / DevTestConsumption / Reservation (with ``reservationTerm``)."""
    short = size.split("_", 1)[1].replace("_", " ")
    name = f"{short} {meter}".strip()
    series = f"Virtual Machines {short.split(' ', 1)[-1]} Series" + (" Windows" if windows else "")
    product_id = "DZH318Z0" + uuid.uuid5(uuid.NAMESPACE_URL, series).hex[:4].upper()
    sku_id = f"{product_id}/{uuid.uuid5(uuid.NAMESPACE_URL, name).hex[:4].upper()}"
    row: dict[str, Any] = {
        "currencyCode": "USD",
        "tierMinimumUnits": 0.0,
        "retailPrice": round(usd, 6),
        "unitPrice": round(usd, 6),
        "armRegionName": location,
        "location": location,
        "effectiveStartDate": effective,
        "meterId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{sku_id}/{location}/{kind}")),
        "meterName": name,
        "productId": product_id,
        "skuId": sku_id,
        "productName": series,
        "skuName": name,
        "serviceName": "Virtual Machines",
        "serviceId": "DZH313Z7MMC8",
        "serviceFamily": "Compute",
        "unitOfMeasure": "1 Hour",
        "type": kind,
        "isPrimaryMeterRegion": True,
        "armSkuName": size,
    }
    if kind == "Reservation":
        row["reservationTerm"] = "1 Year"
        row["unitOfMeasure"] = "1 Hour"
    return row


class FakeArm:
    """The fake's state and its WSGI app; :meth:`start` serves it on 127.0.0.1."""

    def __init__(
        self,
        *,
        subscription: str = SUBSCRIPTION,
        token: str | None = TOKEN,
        workdir: Path | None = None,
        price_page_size: int = 3,
    ) -> None:
        self.subscription = subscription
        self.token = token  # the bearer token ARM calls must carry (None: any)
        self.skus = default_skus()
        self.prices = default_prices()
        self.price_page_size = price_page_size
        self.vms: dict[tuple[str, str], Vm] = {}  # (resource group, lower name)
        self.nics: dict[tuple[str, str], dict[str, Any]] = {}
        self.disks: dict[tuple[str, str], dict[str, Any]] = {}
        self.ppgs: dict[tuple[str, str], dict[str, Any]] = {}
        self.operations: dict[str, Operation] = {}
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request
        self.puts: list[dict[str, Any]] = []  # VM create bodies, in order
        self.price_auth: list[str | None] = []  # Authorization headers seen by the prices API
        self.cascade_failed = True  # False: deleting a Failed VM leaves its NIC and disk
        self.poll_hint_ms = 1
        # Quotas per location: usage name -> limit (cores, lowPriorityCores, a family);
        # ``usage.list`` adds what the live VMs use to ``quota_usage``.
        self.quota_limits: dict[str, dict[str, float]] = {}
        self.quota_usage: dict[str, dict[str, float]] = {}
        self.lock = threading.RLock()
        self._ips = itertools.count(4)
        self._workdir = workdir
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""
        self.ca_path = ""

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, port: int = 0) -> FakeArm:
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert.configure_cert(context)
        if self._workdir is not None:
            self._workdir.mkdir(parents=True, exist_ok=True)
            ca_file = self._workdir / "ca.pem"
        else:
            ca_file = Path(tempfile.gettempdir()) / f"azure-fake-ca-{uuid.uuid4().hex[:8]}.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        self.ca_path = str(ca_file)
        self._server = _Server(("127.0.0.1", port), self.app, context)
        self.url = f"https://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self.ca_path and self._workdir is None:
            Path(self.ca_path).unlink(missing_ok=True)

    # -- test helpers ---------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every resource, fault and recorded request (one server serves many tests)."""
        with self.lock:
            for store in (self.vms, self.nics, self.disks, self.ppgs, self.operations):
                store.clear()
            self.faults.clear()
            self.requests.clear()
            self.puts.clear()
            self.price_auth.clear()
            self.skus = default_skus()
            self.prices = default_prices()
            self.cascade_failed = True
            self.quota_limits.clear()
            self.quota_usage.clear()

    def inject(self, op: str, code: str = "", **kwargs: Any) -> Fault:
        fault = Fault(op, code, **kwargs)
        with self.lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()
            for vm in self.vms.values():
                vm.starting_reads = vm.linger_reads = 0

    def leftovers(self) -> dict[str, list[str]]:
        """Every resource the fake still holds, by kind (empty lists: nothing left)."""
        with self.lock:
            self._tick_all()
            return {
                "vms": sorted(vm.name for vm in self.vms.values()),
                "nics": sorted(n for (_, n) in self.nics),
                "disks": sorted(d for (_, d) in self.disks),
                "ppgs": sorted(p["name"] for p in self.ppgs.values()),
            }

    def vm(self, name: str, rg: str = RESOURCE_GROUP) -> Vm | None:
        with self.lock:
            return self.vms.get((rg.lower(), name.lower()))

    def calls(self, method: str, fragment: str) -> int:
        with self.lock:
            return sum(1 for m, p in self.requests if m == method and fragment in p)

    def _fault(
        self,
        op: str,
        size: str | None,
        zone: str | None,
        kinds: tuple[str, ...],
        location: str | None = None,
    ) -> Fault | None:
        """The first fault of these kinds matching the call (counted as hit), if any."""
        for fault in self.faults:
            if fault.kind in kinds and fault.matches(op, size, zone, location):
                if fault.skip > 0:
                    fault.skip -= 1
                    continue
                fault.hits += 1
                return fault
        return None

    # -- HTTP -------------------------------------------------------------------------------

    def app(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        with self.lock:
            self.requests.append((request.method, request.path))
            try:
                response = self._route(request)
            except Exception as exc:  # a bug in the fake: say so loudly
                response = error(500, "FakeBug", f"{type(exc).__name__}: {exc}")
        return response(environ, start_response)

    def _route(self, request: Request) -> Response:
        path = request.path.rstrip("/").lower()
        if path == CONTROL_INJECT and request.method == "POST":  # for a driving process
            fault = self.inject(**json.loads(request.get_data(as_text=True)))
            return ok({"op": fault.op, "code": fault.code})
        if path == API_PRICES:
            self.price_auth.append(request.headers.get("Authorization"))
            return self._prices(request)
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or (self.token and auth != f"Bearer {self.token}"):
            return error(401, "InvalidAuthenticationToken", "The access token is invalid.")
        if (m := _OP.match(path)) is not None:
            return self._operation(m["id"])
        if (m := _SKUS.match(path)) is not None:
            return self._skus(request)
        if (m := _USAGES.match(path)) is not None:
            return self._usages(m["loc"])
        m = _VM.match(path)
        if m is None or m["sub"] != self.subscription.lower():
            return error(404, "NotFound", f"no route for {request.path}")
        rg, kind, name = m["rg"], m["kind"], m["name"]
        if kind == "virtualmachines":
            if name is None:
                return self._list_vms(rg, request)
            return {
                "PUT": self._put_vm,
                "GET": self._get_vm,
                "DELETE": self._delete_vm,
            }[request.method](rg, name, request)
        if kind == "proximityplacementgroups":
            return self._ppg(rg, name, request)
        if kind == "networkinterfaces" and name is not None:
            return self._nic(rg, name, request)
        if kind == "disks" and name is not None:
            return self._disk(rg, name, request)
        return error(404, "NotFound", f"no route for {request.path}")

    def _sync_fault(
        self,
        op: str,
        size: str | None = None,
        zone: str | None = None,
        location: str | None = None,
    ) -> Response | None:
        fault = self._fault(op, size, zone, ("sync",), location)
        if fault is None:
            return None
        headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
        return Response(
            json.dumps({"error": fault.body()}),
            fault.status,
            headers,
            content_type="application/json",
        )

    def _new_operation(self, location: str, op: Operation) -> dict[str, str]:
        op_id = uuid.uuid4().hex
        self.operations[op_id] = op
        url = (
            f"{self.url}/subscriptions/{self.subscription}/providers/Microsoft.Compute/"
            f"locations/{location}/operations/{op_id}?api-version=2026-04-01"
        )
        return {"Azure-AsyncOperation": url, **self._poll_hint()}

    def _poll_hint(self) -> dict[str, str]:
        """ARM's polling hint (azure-core honours it instead of its polling interval): the
        fake finishes operations at once, so a person's CLI try-out never waits seconds."""
        return {"x-ms-retry-after-ms": str(self.poll_hint_ms)} if self.poll_hint_ms else {}

    def _operation(self, op_id: str) -> Response:
        op = self.operations.get(op_id)
        if op is None:
            return error(404, "NotFound", "no such operation")
        if op.polls > 0:
            op.polls -= 1
            return ok({"status": "InProgress"}, headers=self._poll_hint())
        if op.finish is not None:
            op.finish()
            op.finish = None
        body: dict[str, Any] = {"status": op.status}
        if op.error:
            body["error"] = op.error
        return ok(body)

    # -- VMs --------------------------------------------------------------------------------

    def _rid(self, rg: str, rp: str, kind: str, name: str) -> str:
        return (
            f"/subscriptions/{self.subscription}/resourceGroups/{rg}/providers/{rp}/{kind}/{name}"
        )

    def _put_vm(self, rg: str, name: str, request: Request) -> Response:
        body = request.get_json(force=True)
        props = body.get("properties", {})
        size = props.get("hardwareProfile", {}).get("vmSize")
        location = body.get("location", "")
        zone = (body.get("zones") or [location])[0]
        if (refused := self._sync_fault("create", size, zone, location)) is not None:
            return refused
        existing = self.vms.get((rg, name.lower()))
        if existing is not None:
            old = existing.body
            if (old["properties"]["hardwareProfile"]["vmSize"], old.get("zones")) != (
                size,
                body.get("zones"),
            ):
                return error(
                    409,
                    "PropertyChangeNotAllowed",
                    "Changing property 'zones/vmSize' is not allowed.",
                )
            return ok(self._vm_json(rg, existing), 200)
        problem = self._invalid_vm(body, location, size, zone)
        if problem is not None:
            return problem
        self.puts.append(copy.deepcopy(body))
        vm = Vm(name=name, body=body)
        nic_conf = props["networkProfile"]["networkInterfaceConfigurations"][0]
        vm.nic = nic_conf["name"]
        vm.disk = props["storageProfile"]["osDisk"].get("name") or f"{name}_OsDisk_1"
        net = 1 + sorted(self.skus).index(location) if location in self.skus else 0
        n = next(self._ips)
        self.nics[(rg, vm.nic.lower())] = {
            "name": vm.nic,
            "id": self._rid(rg, "Microsoft.Network", "networkInterfaces", vm.nic),
            "location": location,
            "properties": {
                "provisioningState": "Succeeded",
                "ipConfigurations": [
                    {
                        "name": "ipconfig1",
                        "properties": {
                            "primary": True,
                            "privateIPAddress": f"10.{net}.{n // 250}.{n % 250 + 4}",
                            "subnet": nic_conf["properties"]["ipConfigurations"][0]["properties"][
                                "subnet"
                            ],
                        },
                    }
                ],
            },
        }
        self.disks[(rg, vm.disk.lower())] = {"name": vm.disk, "location": location}
        self.vms[(rg, name.lower())] = vm
        op = Operation()
        fault = self._fault("create", size, zone, ("lro", "evict", "stuck"), location)
        if fault is not None and fault.kind == "lro":
            op.status, op.error = "Failed", fault.body()

            def failed(vm: Vm = vm, err: dict[str, Any] = op.error) -> None:
                vm.state, vm.power, vm.error = "Failed", "PowerState/stopped", err

            op.finish = failed
        else:
            if fault is not None and fault.kind == "evict":
                vm.evict = True
            elif fault is not None and fault.kind == "stuck":
                vm.starting_reads = fault.reads

            def succeeded(vm: Vm = vm) -> None:
                vm.state = "Succeeded"
                if vm.starting_reads == 0:
                    vm.power = "PowerState/running"

            op.status, op.finish = "Succeeded", succeeded
        headers = self._new_operation(location, op)
        return ok(self._vm_json(rg, vm), 201, headers)

    def _invalid_vm(
        self, body: dict[str, Any], location: str, size: str | None, zone: str
    ) -> Response | None:
        """What Compute refuses in a create: a size not sold there (SkuNotAvailable), an
        incomplete request (InvalidParameter)."""
        props = body.get("properties", {})
        offered = {
            s["name"]: s
            for s in self.skus.get(location, [])
            if s["resourceType"] == "virtualMachines"
        }
        if size not in offered or (
            body.get("zones") and zone not in offered[size]["locationInfo"][0]["zones"]
        ):
            return error(
                409,
                "SkuNotAvailable",
                f"The requested VM size {size} is currently not available in location "
                f"'{location}'" + (f" zones '{zone}'" if body.get("zones") else "") + ".",
            )
        try:
            nic = props["networkProfile"]["networkInterfaceConfigurations"][0]
            assert props["networkProfile"]["networkApiVersion"]
            assert nic["properties"]["deleteOption"] in ("Delete", "Detach")
            assert nic["properties"]["ipConfigurations"][0]["properties"]["subnet"]["id"]
            assert props["storageProfile"]["osDisk"]["deleteOption"] in ("Delete", "Detach")
            assert props["storageProfile"]["imageReference"]
            linux = props["osProfile"]["linuxConfiguration"]
            assert props["osProfile"]["adminUsername"]
            assert linux["disablePasswordAuthentication"] is True
            assert linux["ssh"]["publicKeys"][0]["keyData"]
            if props.get("priority") == "Spot":
                assert props["evictionPolicy"] in ("Delete", "Deallocate")
                assert props["billingProfile"]["maxPrice"] == -1
            ppg = props.get("proximityPlacementGroup", {}).get("id")
            if ppg:
                assert ppg.rsplit("/", 1)[-1].lower() in {n for (_, n) in self.ppgs}
        except (KeyError, IndexError, TypeError, AssertionError):
            return error(400, "InvalidParameter", "The request content is incomplete or invalid.")
        return None

    def _read(self, rg: str, vm: Vm) -> bool:
        """Advance a VM by one read (eviction, starting, lingering); False if it is gone."""
        if vm.evict and vm.state == "Succeeded":
            self._remove(rg, vm)
            return False
        if vm.state == "Succeeded" and vm.power == "PowerState/starting":
            if vm.starting_reads > 0:
                vm.starting_reads -= 1
            else:
                vm.power = "PowerState/running"
        if vm.state == "Deleting":
            if vm.linger_reads > 0:
                vm.linger_reads -= 1
            else:
                self._remove(rg, vm)
                return False
        return True

    def _tick_all(self) -> None:
        for (rg, _), vm in list(self.vms.items()):
            if vm.state == "Deleting" and vm.linger_reads == 0:
                self._remove(rg, vm)

    def _remove(self, rg: str, vm: Vm) -> None:
        self.vms.pop((rg, vm.name.lower()), None)
        if vm.error is not None and not self.cascade_failed:
            return
        props = vm.body["properties"]
        nic_conf = props["networkProfile"]["networkInterfaceConfigurations"][0]["properties"]
        if nic_conf.get("deleteOption") == "Delete":
            self.nics.pop((rg, vm.nic.lower()), None)
        if props["storageProfile"]["osDisk"].get("deleteOption") == "Delete":
            self.disks.pop((rg, vm.disk.lower()), None)

    def _vm_json(self, rg: str, vm: Vm, *, instance_view: bool = False) -> dict[str, Any]:
        body = copy.deepcopy(vm.body)
        body["id"] = self._rid(rg, "Microsoft.Compute", "virtualMachines", vm.name)
        body["name"] = vm.name
        body["type"] = "Microsoft.Compute/virtualMachines"
        props = body.setdefault("properties", {})
        props["provisioningState"] = vm.state
        props["vmId"] = str(uuid.uuid5(uuid.NAMESPACE_URL, body["id"]))
        props.get("osProfile", {}).pop("customData", None)  # kept (vm.body), never shown: as ARM
        nic_conf = props["networkProfile"]["networkInterfaceConfigurations"][0]["properties"]
        props["networkProfile"]["networkInterfaces"] = [
            {
                "id": self._rid(rg, "Microsoft.Network", "networkInterfaces", vm.nic),
                "properties": {"primary": True, "deleteOption": nic_conf.get("deleteOption")},
            }
        ]
        props["storageProfile"]["osDisk"]["managedDisk"] = {
            "id": self._rid(rg, "Microsoft.Compute", "disks", vm.disk)
        }
        if instance_view:
            state = "ProvisioningState/" + vm.state.lower()
            statuses = [{"code": state}]
            if vm.error:
                statuses[0] = {
                    "code": f"ProvisioningState/failed/{vm.error['code']}",
                    "level": "Error",
                    "message": vm.error.get("message", ""),
                }
            statuses.append({"code": vm.power})
            props["instanceView"] = {"statuses": statuses}
        return body

    def _get_vm(self, rg: str, name: str, request: Request) -> Response:
        vm = self.vms.get((rg, name.lower()))
        size = vm.body["properties"]["hardwareProfile"]["vmSize"] if vm else None
        if (refused := self._sync_fault("get", size)) is not None:
            return refused
        if vm is None or (request.args.get("$expand") == "instanceView" and not self._read(rg, vm)):
            return error(
                404,
                "ResourceNotFound",
                f"The Resource 'Microsoft.Compute/virtualMachines/{name}' under resource "
                f"group '{rg}' was not found.",
            )
        return ok(
            self._vm_json(rg, vm, instance_view=request.args.get("$expand") == "instanceView")
        )

    def _list_vms(self, rg: str, request: Request) -> Response:
        if (refused := self._sync_fault("list")) is not None:
            return refused
        expand = request.args.get("$expand") == "instanceView"
        found = [
            self._vm_json(r, vm, instance_view=expand)
            for (r, _), vm in sorted(self.vms.items())
            if r == rg and (not expand or self._read(r, vm))
        ]
        return ok({"value": found})

    def _delete_vm(self, rg: str, name: str, request: Request) -> Response:
        vm = self.vms.get((rg, name.lower()))
        size = vm.body["properties"]["hardwareProfile"]["vmSize"] if vm else None
        if (refused := self._sync_fault("delete", size)) is not None:
            return refused
        if vm is None:
            return Response(status=204)
        fault = self._fault("delete", size, None, ("linger",))
        if fault is not None:
            vm.linger_reads = fault.reads
        vm.state = "Deleting"

        def deleted(vm: Vm = vm) -> None:
            if vm.linger_reads == 0:
                self._remove(rg, vm)

        headers = self._new_operation(
            vm.body.get("location", "eastus"), Operation(status="Succeeded", finish=deleted)
        )
        return Response(status=202, headers=headers)

    # -- NICs, disks, proximity placement groups -------------------------------------------

    def _nic(self, rg: str, name: str, request: Request) -> Response:
        if (refused := self._sync_fault("nic")) is not None:
            return refused
        nic = self.nics.get((rg, name.lower()))
        if request.method == "DELETE":
            self.nics.pop((rg, name.lower()), None)
            return Response(status=200 if nic else 204)
        if nic is None:
            return error(404, "NotFound", f"Resource {name} not found.")
        return ok(nic)

    def _disk(self, rg: str, name: str, request: Request) -> Response:
        disk = self.disks.get((rg, name.lower()))
        if request.method == "DELETE":
            self.disks.pop((rg, name.lower()), None)
            return Response(status=200 if disk else 204)
        if disk is None:
            return error(404, "ResourceNotFound", f"Disk {name} not found.")
        return ok({"name": disk["name"], "location": disk["location"]})

    def _ppg_json(self, rg: str, key: str) -> dict[str, Any]:
        ppg = copy.deepcopy(self.ppgs[(rg, key)])
        users = [
            {"id": self._rid(rg, "Microsoft.Compute", "virtualMachines", vm.name)}
            for (r, _), vm in self.vms.items()
            if r == rg
            and vm.body["properties"]
            .get("proximityPlacementGroup", {})
            .get("id", "")
            .lower()
            .endswith("/" + key)
        ]
        ppg.setdefault("properties", {})["virtualMachines"] = users
        return ppg

    def _ppg(self, rg: str, name: str | None, request: Request) -> Response:
        if (refused := self._sync_fault("ppg")) is not None:
            return refused
        if name is None:
            return ok({"value": [self._ppg_json(r, k) for (r, k) in sorted(self.ppgs) if r == rg]})
        key = name.lower()
        if request.method == "PUT":
            body = request.get_json(force=True)
            created = (rg, key) not in self.ppgs
            props = body.get("properties") or {}
            self.ppgs[(rg, key)] = {
                "id": self._rid(rg, "Microsoft.Compute", "proximityPlacementGroups", name),
                "name": name,
                "type": "Microsoft.Compute/proximityPlacementGroups",
                "location": body["location"],
                "tags": body.get("tags") or {},
                "properties": {
                    "proximityPlacementGroupType": props.get(
                        "proximityPlacementGroupType", "Standard"
                    )
                },
                **({"zones": body["zones"]} if body.get("zones") else {}),
            }
            return ok(self._ppg_json(rg, key), 201 if created else 200)
        if (rg, key) not in self.ppgs:
            if request.method == "DELETE":
                return Response(status=204)
            return error(404, "ResourceNotFound", f"Proximity placement group {name} not found.")
        if request.method == "DELETE":
            if self._ppg_json(rg, key)["properties"]["virtualMachines"]:
                return error(
                    409,
                    "OperationNotAllowed",
                    f"Proximity placement group {name} is in use by virtual machines and "
                    "cannot be deleted.",
                )
            del self.ppgs[(rg, key)]
            return ok({})
        return ok(self._ppg_json(rg, key))

    # -- quotas -------------------------------------------------------------------------------

    def _usages(self, location: str) -> Response:
        """``usage.list(location)``: every family the catalog sells plus cores and
        lowPriorityCores, current value = the live VMs' vCPUs (Spot ones count only against
        lowPriorityCores) + ``quota_usage``, limit from ``quota_limits`` (else DEFAULT_QUOTA)."""
        if (refused := self._sync_fault("usages", location=location)) is not None:
            return refused
        vcpus = {
            s["name"]: int(next(c["value"] for c in s["capabilities"] if c["name"] == "vCPUs"))
            for s in self.skus.get(location, [])
            if s.get("resourceType") == "virtualMachines"
        }
        names = {"cores": "Total Regional vCPUs", "lowPriorityCores": "Total Regional Spot vCPUs"}
        for family in QUOTA_FAMILIES.values():
            names[family.replace(" ", "")] = family.removesuffix("Family").strip() + " Family vCPUs"
        used = dict.fromkeys(names, 0.0)
        for vm in self.vms.values():
            if vm.body.get("location") != location or vm.state == "Deleting":
                continue
            size = vm.body["properties"]["hardwareProfile"]["vmSize"]
            n = float(vcpus.get(size, 0))
            if vm.body["properties"].get("priority") == "Spot":
                used["lowPriorityCores"] += n
            else:
                used["cores"] += n
                family = QUOTA_FAMILIES.get(size, "").replace(" ", "")
                if family:
                    used[family] += n
        limits = self.quota_limits.get(location, {})
        extra = self.quota_usage.get(location, {})
        value = [
            {
                "unit": "Count",
                "currentValue": int(used[name] + extra.get(name, 0.0)),
                "limit": int(limits.get(name, DEFAULT_QUOTA)),
                "name": {"value": name, "localizedValue": words},
            }
            for name, words in names.items()
        ]
        return ok({"value": value})

    # -- catalog APIs -------------------------------------------------------------------------

    def _skus(self, request: Request) -> Response:
        if (refused := self._sync_fault("skus")) is not None:
            return refused
        flt = request.args.get("$filter", "")
        m = re.fullmatch(r"location eq '([^']+)'", flt.strip())
        if m is None:
            return error(400, "InvalidParameter", "Only a location filter is supported.")
        return ok({"value": copy.deepcopy(self.skus.get(m[1], []))})

    def _prices(self, request: Request) -> Response:
        if (refused := self._sync_fault("prices")) is not None:
            return refused
        clauses = re.findall(r"(\w+) eq '([^']*)'", request.args.get("$filter", ""))
        fields = {"priceType": "type"}  # the filter's name for the rows' ``type`` field
        rows = [
            r for r in self.prices if all(str(r.get(fields.get(k, k))) == v for k, v in clauses)
        ]
        skip = int(request.args.get("$skip", "0"))
        page = rows[skip : skip + self.price_page_size]
        more = skip + self.price_page_size < len(rows)
        query = {k: v[0] for k, v in parse_qs(request.query_string.decode()).items()}
        query["$skip"] = str(skip + self.price_page_size)
        link = f"{self.url}{API_PRICES}?{urlencode(query)}" if more else None
        return ok(
            {"BillingCurrency": "USD", "Items": page, "NextPageLink": link, "Count": len(page)}
        )


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves the WSGI app with HTTP/1.1 keep-alive (werkzeug's server closes every
    connection, and a TLS handshake per request would dominate the tests' time)."""

    protocol_version = "HTTP/1.1"
    wbufsize = 1 << 16  # one write per response (no Nagle / delayed-ACK stalls)
    server: _Server

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path, _, query = self.path.partition("?")
        headers = [(k, v) for k, v in self.headers.items() if k.lower() != "content-length"]
        environ = EnvironBuilder(
            path=path,
            method=self.command,
            query_string=query,
            headers=headers,
            data=body,
            base_url=f"https://127.0.0.1:{self.server.server_port}",
        ).get_environ()
        response = Response.from_app(self.server.app, environ)
        data = response.get_data()
        self.send_response(response.status_code)
        for key, value in response.headers.items():
            if key.lower() not in ("content-length", "connection"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_DELETE = do_POST = do_PATCH = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], app: Any, context: ssl.SSLContext) -> None:
        super().__init__(address, _Handler)
        self.app = app
        self.socket = context.wrap_socket(self.socket, server_side=True)


def ok(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status, headers or {}, content_type="application/json")


def error(status: int, code: str, message: str) -> Response:
    return Response(
        json.dumps({"error": {"code": code, "message": message}}),
        status,
        content_type="application/json",
    )


# -- the try-out command ----------------------------------------------------------------------

FAKE_AZ = """#!{python}
# A stand-in for the Azure CLI: DefaultAzureCredential (AZURE_TOKEN_CREDENTIALS=AzureCliCredential)
# runs `az account get-access-token --output json --resource ...` and reads this.
import json, time
print(json.dumps({{"accessToken": {token!r}, "expires_on": int(time.time()) + 3600,
                  "subscription": {sub!r}, "tokenType": "Bearer"}}))
"""


def write_fake_az(directory: Path, token: str = TOKEN, subscription: str = SUBSCRIPTION) -> Path:
    """An executable ``az`` in ``directory`` that prints ``token`` as an access token."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "az"
    script.write_text(FAKE_AZ.format(python=sys.executable, token=token, sub=subscription))
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return script


def config_toml(fake: FakeArm, regions: tuple[str, ...] = ("eastus", "westus2")) -> str:
    """A broker configuration enabling Azure against this fake."""
    subnets = "\n".join(
        f'{r} = "/subscriptions/{fake.subscription}/resourceGroups/{RESOURCE_GROUP}/providers/'
        f'Microsoft.Network/virtualNetworks/burst-{r}/subnets/default"'
        for r in regions
    )
    quoted = ", ".join(f'"{r}"' for r in regions)
    return (
        '[broker]\nproviders = ["azure"]\n\n'
        f'[azure]\nsubscription_id = "{fake.subscription}"\nresource_group = "{RESOURCE_GROUP}"\n'
        f"regions = [{quoted}]\n"
        'ssh_public_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTheFakeArm me"\n'
        f'endpoint = "{fake.url}"\nca_bundle = "{fake.ca_path}"\n'
        f'prices_endpoint = "{fake.url}{API_PRICES}"\n'
        f"[azure.subnets]\n{subnets}\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve the fake ARM endpoint on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument(
        "--dir",
        default=str(Path(tempfile.gettempdir()) / "burst-broker-azure-fake"),
        help="where to write the CA file, the fake az and the broker config",
    )
    args = parser.parse_args(argv)
    workdir = Path(args.dir).resolve()
    fake = FakeArm(workdir=workdir).start(args.port)
    bindir = workdir / "bin"
    write_fake_az(bindir)
    config = workdir / "config.toml"
    config.write_text(config_toml(fake))
    print(f"fake ARM on {fake.url} (CA: {fake.ca_path})\n")
    print(f"# broker config written to {config}:\n{config.read_text()}")
    print("# in another shell:")
    print(f'export PATH="{bindir}:$PATH" AZURE_TOKEN_CREDENTIALS=AzureCliCredential')
    print(f'export BROKER_CONFIG="{config}" BROKER_STATE_DIR="{workdir / "state"}"')
    print(f'export BROKER_CATALOG_DIR="{workdir / "catalog"}"\n', flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

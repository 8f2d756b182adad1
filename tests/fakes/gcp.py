"""A stateful fake of the Compute Engine REST API (plus the Billing Catalog SKU list and an
OAuth token endpoint) for driving the real ``google-cloud-compute`` clients offline.

Modelled: projects.get and regions.get (with quotas: ``quota_limits``, usage from the live
VMs' GPUs and vCPUs), zones.list, machineTypes (per zone and aggregated),
acceleratorTypes (per zone and aggregated), instances bulkInsert / insert / get / list /
aggregatedList / delete, zone and region operations get / wait (an operation stays RUNNING for
``op_polls`` reads), resourcePolicies insert / get / list / delete (refused while a live VM
uses the policy), ``requestId`` dedup, label filters (``labels.k = "v"``, ``labels.k:*``,
joined by ``AND``). VMs boot PROVISIONING -> STAGING -> RUNNING over ``boot_polls`` reads and
take ``delete_polls`` reads in STOPPING before they disappear. Zones and machine types are
seeded from the bundled catalog (shapes/data/gcp.json), so every catalog shape can launch.

Faults (:meth:`FakeGce.inject`), per API method, zone and machine type, for the next ``times``
matching calls: synchronous HTTP errors (``quota``, ``global-quota``, ``rate-limit``, ``429``,
``500``, ``503``, ``insufficient-capacity``, ``401``, ``403``, ``400``, ``404``), failed
operations (``stockout``, ``stockout-details``, ``stockout-no-status``, ``op-503``,
``op-quota``, ``op-global-quota``, ``op-internal``), ``stuck`` (an operation never DONE),
``never-running`` (VMs stay STAGING) and VMs that die while starting (``dies``: TERMINATED,
``deleted``: gone) - a partial gang.

Run it for a person to try the CLI (prints the config and environment to use)::

    python -m tests.fakes.gcp --port 8480      # from the repository root

Another process injects faults with ``POST /_fake/inject`` and a JSON object of
:meth:`FakeGce.inject`'s arguments (``{"method": "bulkInsert", "error": "stockout"}``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

CATALOG = Path(__file__).resolve().parents[2] / "shapes" / "data" / "gcp.json"
PROJECT = "burst-test"
BILLING_SERVICE = "6F81-5844-456A"
TOKEN_PREFIX = "ya29.fake-"
# POST a JSON object of inject()'s arguments here to inject a fault from another process.
CONTROL_INJECT = "/_fake/inject"

# Canonical GPU -> the accelerator type bound to A2/A3/G2 machine types.
BOUND_ACCELERATORS = {
    "H100": "nvidia-h100-80gb",
    "H200": "nvidia-h200-141gb",
    "A100-40GB": "nvidia-tesla-a100",
    "A100-80GB": "nvidia-a100-80gb",
    "L4": "nvidia-l4",
}
ATTACHABLE = {"t4": ("nvidia-tesla-t4", 4), "v100": ("nvidia-tesla-v100", 8)}

# Synchronous errors: name -> (HTTP status, reason or None, quota metric or None).
SYNC_ERRORS: dict[str, tuple[int, str | None, str | None]] = {
    "quota": (403, "quotaExceeded", "NVIDIA_H100_GPUS"),
    "global-quota": (403, "quotaExceeded", "GPUS_ALL_REGIONS"),
    "rate-limit": (403, "rateLimitExceeded", None),
    "429": (429, None, None),
    "500": (500, "backendError", None),
    "503": (503, None, None),
    "insufficient-capacity": (503, "insufficientCapacity", None),
    "401": (401, "unauthorized", None),
    "403": (403, "forbidden", None),
    "400": (400, "invalid", None),
    "404": (404, "notFound", None),
}
# Failed operations: name -> (httpErrorStatusCode or None, error code, quota metric or None).
OP_ERRORS: dict[str, tuple[int | None, str, str | None]] = {
    "stockout": (503, "ZONE_RESOURCE_POOL_EXHAUSTED", None),
    "stockout-details": (503, "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS", None),
    "stockout-no-status": (None, "ZONE_RESOURCE_POOL_EXHAUSTED", None),
    "op-503": (503, "UNKNOWN_503_CODE", None),
    "op-quota": (403, "QUOTA_EXCEEDED", "PREEMPTIBLE_NVIDIA_H100_GPUS"),
    "op-global-quota": (403, "QUOTA_EXCEEDED", "GPUS_ALL_REGIONS"),
    "op-internal": (500, "INTERNAL_ERROR", None),
}
OTHER_FAULTS = ("stuck", "never-running", "dies", "deleted")
# Accelerator type -> the regional quota metric its GPUs count against (Compute's names).
QUOTA_METRICS = {
    "nvidia-h100-80gb": "NVIDIA_H100_GPUS",
    "nvidia-h100-mega-80gb": "NVIDIA_H100_MEGA_GPUS",
    "nvidia-h200-141gb": "NVIDIA_H200_GPUS",
    "nvidia-tesla-a100": "NVIDIA_A100_GPUS",
    "nvidia-a100-80gb": "NVIDIA_A100_80GB_GPUS",
    "nvidia-l4": "NVIDIA_L4_GPUS",
    "nvidia-tesla-t4": "NVIDIA_T4_GPUS",
    "nvidia-tesla-v100": "NVIDIA_V100_GPUS",
}
CUSTOM = ("sync", "op")  # any status and reason/code, given to inject()


class HttpError(Exception):
    def __init__(self, status: int, reason: str | None, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.extra = status, reason, message, extra


@dataclass
class Fault:
    method: str  # bulkInsert, insert, delete, get, list, aggregatedList, policyInsert, ...
    error: str
    zone: str | None = None
    machine_type: str | None = None
    times: int = 1
    metric: str | None = None
    status: int | None = None  # for "sync" / "op"
    code: str | None = None  # reason ("sync") or error code ("op")
    used: int = 0
    message: str | None = None  # the cloud's words (default: "injected ...")
    also: tuple[tuple[str, str], ...] = ()  # more (code, message) items of an "op" fault


@dataclass
class Operation:
    body: dict[str, Any]
    polls_left: int
    finish: Callable[[], dict[str, Any] | None] = lambda: None  # -> error fields, if any


@dataclass
class FakeGce:
    """The fake's state; ``app`` is its WSGI application. Thread-safe."""

    project: str = PROJECT
    op_polls: int = 1
    boot_polls: int = 2
    delete_polls: int = 1
    require_auth: bool = False
    base_url: str = "http://127.0.0.1"
    zones: dict[str, str] = field(default_factory=dict)  # zone -> region
    machine_types: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    accelerator_types: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    instances: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    operations: dict[str, Operation] = field(default_factory=dict)
    request_ids: dict[str, str] = field(default_factory=dict)
    policies: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)  # method, where
    tokens: list[str] = field(default_factory=list)
    skus: list[dict[str, Any]] = field(default_factory=list)
    sku_page_size: int = 0  # the most SKUs a page holds (0: as many as pageSize asks)
    api_key: str | None = None  # an API key the SKU list accepts instead of a bearer token
    sku_requests: list[dict[str, str]] = field(default_factory=list)  # auth, pageToken, ...
    deleted_policies: list[str] = field(default_factory=list)
    # Quotas: region (or "global") -> metric -> limit. Usage is what the live VMs use (GPUs
    # by their accelerators' metric, PREEMPTIBLE_ for spot; vCPUs as CPUS) plus ``quota_usage``.
    quota_limits: dict[str, dict[str, float]] = field(default_factory=dict)
    quota_usage: dict[str, dict[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.RLock()
        self._ids = itertools.count(1000)
        self._ips = itertools.count(2)
        self._seed(json.loads(CATALOG.read_text(encoding="utf-8")))

    # -- seeding ---------------------------------------------------------------------------

    def _seed(self, doc: dict[str, Any]) -> None:
        for instance_type, spec in doc["instance_types"].items():
            machine, _, gpu = instance_type.partition("+")
            for region, entry in spec["regions"].items():
                for zone in entry["zones"]:
                    self.zones[zone] = region
                    types = self.machine_types.setdefault(zone, {})
                    vcpus = int(spec["vcpus"]) if not gpu else int(machine.rsplit("-", 1)[1])
                    mt: dict[str, Any] = {
                        "name": machine,
                        "guestCpus": vcpus,
                        "memoryMb": int(spec["memory_gib"] * 1024),
                        "zone": zone,
                        "selfLink": self._url(f"zones/{zone}/machineTypes/{machine}"),
                    }
                    if not gpu:
                        accel = BOUND_ACCELERATORS[spec["gpu"]]
                        if machine.startswith("a3-mega"):
                            accel = "nvidia-h100-mega-80gb"
                        mt["accelerators"] = [
                            {"guestAcceleratorType": accel, "guestAcceleratorCount": spec["gpus"]}
                        ]
                    types[machine] = mt
                    if gpu:
                        name, most = ATTACHABLE[gpu.split("x")[0]]
                        self.accelerator_types.setdefault(zone, {})[name] = {
                            "name": name,
                            "zone": self._url(f"zones/{zone}"),
                            "maximumCardsPerInstance": most,
                            "description": f"NVIDIA {name}",
                        }
        self.skus = billing_skus(doc)

    def _url(self, path: str) -> str:
        return f"{self.base_url}/compute/v1/projects/{self.project}/{path}"

    # -- what tests use --------------------------------------------------------------------

    def inject(
        self,
        method: str,
        error: str,
        *,
        zone: str | None = None,
        machine_type: str | None = None,
        times: int = 1,
        metric: str | None = None,
        status: int | None = None,
        code: str | None = None,
        message: str | None = None,
        also: list[tuple[str, str]] | tuple[tuple[str, str], ...] = (),
    ) -> Fault:
        """Fail the next ``times`` calls of ``method`` (in ``zone``, for ``machine_type``);
        ``message``: the words of a "sync"/"op" fault, ``also``: more (code, message) items
        after the first in a failed operation (a bulkInsert reports several)."""
        known = (*SYNC_ERRORS, *OP_ERRORS, *OTHER_FAULTS, *CUSTOM)
        if error not in known:
            raise ValueError(f"unknown fault {error!r}")
        extra = tuple((str(c), str(m)) for c, m in also)
        fault = Fault(
            method, error, zone, machine_type, times, metric, status, code, 0, message, extra
        )
        with self._lock:
            self.faults.append(fault)
        return fault

    def live(self) -> list[dict[str, Any]]:
        """Every VM the fake holds (any status)."""
        with self._lock:
            return [dict(i) for i in self.instances.values()]

    def count(self, method: str) -> int:
        return sum(1 for m, _, _ in self.calls if m == method)

    def bodies(self, method: str) -> list[dict[str, Any]]:
        return [b for m, _, b in self.calls if m == method]

    def add_instance(self, zone: str, name: str, machine_type: str, labels: dict[str, str]) -> None:
        """A VM created behind the broker's back (e.g. by a process that died)."""
        with self._lock:
            props = {"machineType": machine_type, "labels": labels}
            self.instances[(zone, name)] = {
                **self._instance(zone, name, props),
                "status": "RUNNING",
            }

    def set_status(self, zone: str, name: str, status: str) -> None:
        with self._lock:
            self.instances[(zone, name)]["status"] = status

    def _fault(self, method: str, zone: str | None, machine: str | None) -> Fault | None:
        for fault in self.faults:
            if fault.used >= fault.times or fault.method != method:
                continue
            if fault.zone is not None and fault.zone != zone:
                continue
            if fault.machine_type is not None and fault.machine_type != machine:
                continue
            fault.used += 1
            return fault
        return None

    def _raise_sync(self, fault: Fault | None) -> Fault | None:
        """Raise a synchronous fault; hand other faults back to the caller."""
        if fault is None or fault.error not in (*SYNC_ERRORS, "sync"):
            return fault
        if fault.error == "sync":
            assert fault.status is not None, "a sync fault needs a status"
            words = fault.message or "injected sync error"
            raise HttpError(fault.status, fault.code, words, metric=fault.metric)
        status, reason, metric = SYNC_ERRORS[fault.error]
        raise HttpError(status, reason, f"injected {fault.error}", metric=fault.metric or metric)

    # -- the WSGI application --------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        try:
            with self._lock:
                status, body, headers = self._route(request)
        except HttpError as exc:
            status, body, headers = exc.status, self._error_body(exc), {}
            if exc.status == 429:
                headers = {"Retry-After": "7"}
        response = Response(json.dumps(body), status=status, headers=headers)
        response.content_type = "application/json"
        return response(environ, start_response)

    @staticmethod
    def _error_body(exc: HttpError) -> dict[str, Any]:
        error: dict[str, Any] = {"code": exc.status, "message": exc.message}
        if exc.reason:
            error["errors"] = [{"message": exc.message, "domain": "global", "reason": exc.reason}]
        metric = exc.extra.get("metric")
        if metric:
            error["details"] = [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "QUOTA_EXCEEDED",
                    "domain": "compute.googleapis.com",
                    "metadata": {"quota_metric": metric},
                }
            ]
        return {"error": error}

    def _route(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        path, verb = request.path, request.method
        if path == CONTROL_INJECT and verb == "POST":  # for a process driving the fake
            fault = self.inject(**json.loads(request.get_data(as_text=True)))
            return 200, {"method": fault.method, "error": fault.error}, {}
        if path == "/token" and verb == "POST":
            token = f"{TOKEN_PREFIX}{uuid.uuid4().hex}"
            self.tokens.append(token)
            return 200, {"access_token": token, "expires_in": 3600, "token_type": "Bearer"}, {}
        if path == f"/v1/services/{BILLING_SERVICE}/skus" and verb == "GET":
            return self._list_skus(request)
        if self.require_auth:
            auth = request.headers.get("Authorization", "")
            if not auth.startswith("Bearer ") or auth[7:] not in self.tokens:
                raise HttpError(401, "unauthorized", "Request had invalid credentials.")
        prefix = f"/compute/v1/projects/{self.project}"
        if not path.startswith(prefix):
            raise HttpError(404, "notFound", f"The resource '{path}' was not found")
        rest = path[len(prefix) :].strip("/")
        for pattern, method_verb, handler in self._routes():
            found = re.fullmatch(pattern, rest)
            if found and verb == method_verb:
                return 200, handler(request, *found.groups()), {}
        raise HttpError(404, "notFound", f"The resource '{path}' was not found")

    def _list_skus(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        """services.skus.list: paged (``pageSize``, ``pageToken``), authorised by a bearer
        token (when ``require_auth``) or an API key (``X-Goog-Api-Key`` or ``key=``)."""
        key = request.headers.get("X-Goog-Api-Key") or request.args.get("key")
        auth = request.headers.get("Authorization", "")
        self.sku_requests.append(
            {
                "auth": "key" if key else ("bearer" if auth.startswith("Bearer ") else "none"),
                "key": key or "",
                "pageToken": request.args.get("pageToken", ""),
                "currencyCode": request.args.get("currencyCode", ""),
            }
        )
        if key is not None:
            if key != self.api_key:
                raise HttpError(
                    400, "badRequest", "API key not valid. Please pass a valid API key."
                )
        elif self.require_auth and (not auth.startswith("Bearer ") or auth[7:] not in self.tokens):
            raise HttpError(401, "unauthorized", "Request had invalid credentials.")
        self._raise_sync(self._fault("skus", None, None))
        start = int(request.args.get("pageToken") or 0)
        size = int(request.args.get("pageSize") or 5000)
        if self.sku_page_size:
            size = min(size, self.sku_page_size)
        body: dict[str, Any] = {"skus": self.skus[start : start + size]}
        if start + size < len(self.skus):
            body["nextPageToken"] = str(start + size)
        return 200, body, {}

    def _routes(self) -> list[tuple[str, str, Callable[..., Any]]]:
        return [
            (r"", "GET", self._project),
            (r"regions/([^/]+)", "GET", self._region),
            (r"zones", "GET", self._zones),
            (r"aggregated/instances", "GET", self._aggregated_instances),
            (r"aggregated/machineTypes", "GET", self._aggregated_machine_types),
            (r"aggregated/acceleratorTypes", "GET", self._aggregated_accelerators),
            (r"zones/([^/]+)/machineTypes", "GET", self._machine_types),
            (r"zones/([^/]+)/acceleratorTypes", "GET", self._accelerators),
            (r"zones/([^/]+)/instances/bulkInsert", "POST", self._bulk_insert),
            (r"zones/([^/]+)/instances", "POST", self._insert),
            (r"zones/([^/]+)/instances", "GET", self._list),
            (r"zones/([^/]+)/instances/([^/]+)", "GET", self._get),
            (r"zones/([^/]+)/instances/([^/]+)", "DELETE", self._delete),
            (r"(zones|regions)/([^/]+)/operations/([^/]+)", "GET", self._op_get),
            (r"(zones|regions)/([^/]+)/operations/([^/]+)/wait", "POST", self._op_get),
            (r"regions/([^/]+)/resourcePolicies", "POST", self._policy_insert),
            (r"regions/([^/]+)/resourcePolicies", "GET", self._policy_list),
            (r"regions/([^/]+)/resourcePolicies/([^/]+)", "GET", self._policy_get),
            (r"regions/([^/]+)/resourcePolicies/([^/]+)", "DELETE", self._policy_delete),
        ]

    # -- read-only resources ---------------------------------------------------------------

    def _project(self, request: Request) -> Any:
        self.calls.append(("projectsGet", "", {}))
        self._raise_sync(self._fault("projectsGet", None, None))
        limits = {"GPUS_ALL_REGIONS": 1000.0, "CPUS_ALL_REGIONS": 5000.0}
        limits.update(self.quota_limits.get("global", {}))
        return {"name": self.project, "id": "4242", "quotas": self._quotas("global", limits)}

    def _region(self, request: Request, region: str) -> Any:
        self.calls.append(("regionsGet", region, {}))
        self._raise_sync(self._fault("regionsGet", None, None))
        zones = [self._url(f"zones/{z}") for z, r in sorted(self.zones.items()) if r == region]
        if not zones:
            raise HttpError(404, "notFound", f"region {region} not found")
        limits = {"CPUS": 2400.0, "PREEMPTIBLE_CPUS": 2400.0, "SSD_TOTAL_GB": 40960.0}
        limits.update(self.quota_limits.get(region, {}))
        quotas = self._quotas(region, limits)
        return {"name": region, "zones": zones, "quotas": quotas, "status": "UP"}

    def _quotas(self, where: str, limits: dict[str, float]) -> list[dict[str, Any]]:
        """Quota entries as Compute shows them: metric, limit, usage (live VMs + extra)."""
        used = self._quota_used(where)
        extra = self.quota_usage.get(where, {})
        return [
            {"metric": m, "limit": limit, "usage": used.get(m, 0.0) + extra.get(m, 0.0)}
            for m, limit in sorted(limits.items())
        ]

    def _quota_used(self, where: str) -> dict[str, float]:
        used: dict[str, float] = {}

        def add(metric: str, amount: float) -> None:
            used[metric] = used.get(metric, 0.0) + amount

        for (zone, _), vm in self.instances.items():
            if vm.get("_deleting") or (where != "global" and self.zones.get(zone) != where):
                continue
            spot = vm.get("scheduling", {}).get("provisioningModel") == "SPOT"
            machine = self.machine_types.get(zone, {}).get(_last(vm["machineType"]), {})
            accels = [
                (a["guestAcceleratorType"], a["guestAcceleratorCount"])
                for a in machine.get("accelerators", [])
            ] + [
                (_last(a["acceleratorType"]), a["acceleratorCount"])
                for a in vm.get("guestAccelerators", [])
            ]
            for accel, n in accels:
                if where == "global":
                    add("GPUS_ALL_REGIONS", float(n))
                else:
                    metric = QUOTA_METRICS.get(accel, accel.upper().replace("-", "_") + "_GPUS")
                    add(("PREEMPTIBLE_" if spot else "") + metric, float(n))
            cpus = float(machine.get("guestCpus", 0))
            if where == "global":
                add("CPUS_ALL_REGIONS", cpus)
            else:
                add("PREEMPTIBLE_CPUS" if spot else "CPUS", cpus)
        return used

    def _zones(self, request: Request) -> Any:
        return {
            "items": [
                {"name": z, "region": self._url(f"regions/{r}"), "status": "UP"}
                for z, r in sorted(self.zones.items())
            ]
        }

    def _machine_types(self, request: Request, zone: str) -> Any:
        return {"items": list(self.machine_types.get(zone, {}).values())}

    def _accelerators(self, request: Request, zone: str) -> Any:
        return {"items": list(self.accelerator_types.get(zone, {}).values())}

    def _aggregated_machine_types(self, request: Request) -> Any:
        self.calls.append(("machineTypesAggregated", "", {}))
        self._raise_sync(self._fault("machineTypesAggregated", None, None))
        return {
            "items": {
                f"zones/{z}": {"machineTypes": list(t.values())}
                for z, t in sorted(self.machine_types.items())
            }
        }

    def _aggregated_accelerators(self, request: Request) -> Any:
        return {
            "items": {
                f"zones/{z}": {"acceleratorTypes": list(t.values())}
                for z, t in sorted(self.accelerator_types.items())
            }
        }

    # -- instances -------------------------------------------------------------------------

    def _read(self, instance: dict[str, Any]) -> dict[str, Any] | None:
        """An instance as a read shows it, advancing its life by one read."""
        key = (instance["_zone"], instance["name"])
        instance["_reads"] += 1
        status = instance["status"]
        if status == "STOPPING" and instance.get("_deleting"):
            if instance["_reads"] > self.delete_polls:
                del self.instances[key]
                return None
        elif instance.get("_dies") and status != "TERMINATED":
            if instance["_dies"] == "deleted":
                del self.instances[key]
                return None
            instance["status"] = "TERMINATED"
        elif status in ("PROVISIONING", "STAGING") and not instance.get("_stuck"):
            instance["status"] = "RUNNING" if instance["_reads"] >= self.boot_polls else "STAGING"
        return {k: v for k, v in instance.items() if not k.startswith("_")}

    def _matching(self, request: Request, zone: str | None = None) -> Iterator[dict[str, Any]]:
        test = parse_filter(request.args.get("filter", ""))
        for (z, _), instance in sorted(self.instances.items(), key=lambda kv: kv[1]["id"]):
            if (zone is None or z == zone) and test(instance):
                shown = self._read(instance)
                if shown is not None:
                    yield shown

    def _list(self, request: Request, zone: str) -> Any:
        self.calls.append(("list", zone, {}))
        self._raise_sync(self._fault("list", zone, None))
        return {"items": list(self._matching(request, zone))}

    def _aggregated_instances(self, request: Request) -> Any:
        self.calls.append(("aggregatedList", "", {"filter": request.args.get("filter", "")}))
        self._raise_sync(self._fault("aggregatedList", None, None))
        items: dict[str, Any] = {}
        for instance in self._matching(request):
            scope = f"zones/{_last(instance['zone'])}"
            items.setdefault(scope, {"instances": []})["instances"].append(instance)
        return {"items": items}

    def _get(self, request: Request, zone: str, name: str) -> Any:
        self.calls.append(("get", zone, {"name": name}))
        self._raise_sync(self._fault("get", zone, None))
        instance = self.instances.get((zone, name))
        shown = self._read(instance) if instance is not None else None
        if shown is None:
            raise HttpError(404, "notFound", f"The resource 'instances/{name}' was not found")
        return shown

    def _insert(self, request: Request, zone: str) -> Any:
        body = request.get_json()
        bulk = {
            "count": 1,
            "minCount": 1,
            "instanceProperties": body,
            "perInstanceProperties": {body["name"]: {"name": body["name"]}},
        }
        props = dict(body)
        props["machineType"] = _last(body.get("machineType", ""))
        bulk["instanceProperties"] = props
        return self._create(request, zone, bulk, "insert")

    def _bulk_insert(self, request: Request, zone: str) -> Any:
        return self._create(request, zone, request.get_json(), "bulkInsert")

    def _create(self, request: Request, zone: str, body: dict[str, Any], method: str) -> Any:
        self.calls.append((method, zone, body))
        props = body.get("instanceProperties", {})
        machine = str(props.get("machineType", ""))
        rid = request.args.get("requestId")
        if rid and rid in self.request_ids:
            return self.operations[self.request_ids[rid]].body
        fault = self._raise_sync(self._fault(method, zone, machine))
        names = self._validate(zone, body, props, machine)
        region = self.zones[zone]
        op = self._new_op(f"zones/{zone}", "bulkInsert" if method == "bulkInsert" else "insert")
        if rid:
            self.request_ids[rid] = op.body["name"]
        if fault is not None and fault.error in (*OP_ERRORS, "op"):
            status, code, metric = OP_ERRORS.get(fault.error, (fault.status, fault.code, None))
            code = code or "UNKNOWN"
            op.finish = lambda: _op_error(
                status, code, fault.metric or metric, zone, region, fault.message, fault.also
            )
            return op.body
        if fault is not None and fault.error == "stuck":
            op.polls_left = 10**9
        for i, name in enumerate(names):
            instance = self._instance(zone, name, props)
            if fault is not None and fault.error in ("dies", "deleted") and i == 0:
                instance["_dies"] = fault.error
            if fault is not None and fault.error == "never-running":
                instance["_stuck"] = True
            self.instances[(zone, name)] = instance
        return op.body

    def _validate(
        self, zone: str, body: dict[str, Any], props: dict[str, Any], machine: str
    ) -> list[str]:
        if zone not in self.zones:
            raise HttpError(404, "notFound", f"zone {zone} not found")
        if "/" in machine:
            raise HttpError(500, "internalError", "INTERNAL_ERROR: machine type must be a name")
        if machine not in self.machine_types.get(zone, {}):
            raise HttpError(  # Google's words
                400,
                "invalid",
                f"Invalid value for field 'resource.machineType': '{machine}'. Machine type "
                f"with name '{machine}' does not exist in zone '{zone}'.",
            )
        names = list(body.get("perInstanceProperties", {}))
        count, least = int(body.get("count", 0)), int(body.get("minCount", body.get("count", 0)))
        if not names or len(names) != count or least != count:
            raise HttpError(400, "invalid", "per-instance names must match count and minCount")
        for key, value in props.get("labels", {}).items():
            if not re.fullmatch(r"[a-z][a-z0-9_-]{0,62}", key) or not re.fullmatch(
                r"[a-z0-9_-]{0,63}", value
            ):
                raise HttpError(400, "invalid", f"Invalid label {key}={value}")
        for accel in props.get("guestAccelerators", []):
            known = self.accelerator_types.get(zone, {}).get(accel.get("acceleratorType", ""))
            if known is None or int(accel["acceleratorCount"]) > known["maximumCardsPerInstance"]:
                raise HttpError(  # Google's words for a type the zone does not have
                    400,
                    "badRequest",
                    f"The resource 'projects/{self.project}/zones/{zone}/acceleratorTypes/"
                    f"{accel.get('acceleratorType', '')}' was not found",
                )
        for policy in props.get("resourcePolicies", []):
            if "/" in policy or (self.zones[zone], policy) not in self.policies:
                raise HttpError(400, "invalid", f"resource policy {policy} not found")
        for name in names:
            if (zone, name) in self.instances:
                raise HttpError(409, "alreadyExists", f"The resource '{name}' already exists")
        return names

    def _instance(self, zone: str, name: str, props: dict[str, Any]) -> dict[str, Any]:
        region = self.zones[zone]
        ip = next(self._ips)
        nics = props.get("networkInterfaces") or [{}]
        return {
            "kind": "compute#instance",
            "id": str(next(self._ids)),
            "name": name,
            "zone": self._url(f"zones/{zone}"),
            "machineType": self._url(f"zones/{zone}/machineTypes/{props['machineType']}"),
            "status": "PROVISIONING",
            "creationTimestamp": f"2026-11-23T10:{ip // 60 % 60:02d}:{ip % 60:02d}.000-00:00",
            "labels": dict(props.get("labels", {})),
            "scheduling": dict(props.get("scheduling", {})),
            "guestAccelerators": [
                {
                    **a,
                    "acceleratorType": self._url(
                        f"zones/{zone}/acceleratorTypes/{a['acceleratorType']}"
                    ),
                }
                for a in props.get("guestAccelerators", [])
            ],
            "networkInterfaces": [
                {
                    **nics[0],
                    "name": "nic0",
                    "networkIP": f"10.{ip // 65536 % 256}.{ip // 256 % 256}.{ip % 256}",
                }
            ],
            "disks": props.get("disks", []),
            "serviceAccounts": props.get("serviceAccounts", []),
            "metadata": {"kind": "compute#metadata", **props.get("metadata", {})},
            "resourcePolicies": [
                self._url(f"regions/{region}/resourcePolicies/{p}")
                for p in props.get("resourcePolicies", [])
            ],
            "_zone": zone,
            "_reads": 0,
        }

    def _delete(self, request: Request, zone: str, name: str) -> Any:
        self.calls.append(("delete", zone, {"name": name}))
        self._raise_sync(self._fault("delete", zone, None))
        instance = self.instances.get((zone, name))
        if instance is None:
            raise HttpError(404, "notFound", f"The resource 'instances/{name}' was not found")
        instance.update(status="STOPPING", _deleting=True, _reads=0)
        return self._new_op(f"zones/{zone}", "delete", polls=0).body

    # -- operations ------------------------------------------------------------------------

    def _new_op(self, scope: str, kind: str, polls: int | None = None) -> Operation:
        name = f"operation-{next(self._ids)}-{uuid.uuid4().hex[:8]}"
        kind_of_scope = scope.split("/")[0]
        body = {
            "kind": "compute#operation",
            "id": str(next(self._ids)),
            "name": name,
            "operationType": kind,
            "status": "RUNNING",
            "selfLink": self._url(f"{scope}/operations/{name}"),
            kind_of_scope[:-1]: self._url(scope),
        }
        op = Operation(body, self.op_polls if polls is None else polls)
        self.operations[name] = op
        if op.polls_left <= 0:
            self._advance(op)
        return op

    def _advance(self, op: Operation) -> None:
        if op.body["status"] == "DONE":
            return
        if op.polls_left > 0:
            op.polls_left -= 1
            if op.polls_left > 0:
                return
        op.body["status"] = "DONE"
        error = op.finish()
        if error:
            op.body.update(error)

    def _op_get(self, request: Request, kind: str, where: str, name: str) -> Any:
        self.calls.append(("operationGet", where, {"name": name}))
        self._raise_sync(self._fault("operationGet", where, None))
        op = self.operations.get(name)
        if op is None:
            raise HttpError(404, "notFound", f"operation {name} not found")
        self._advance(op)
        return op.body

    # -- resource policies -----------------------------------------------------------------

    def _policy_insert(self, request: Request, region: str) -> Any:
        body = request.get_json()
        self.calls.append(("policyInsert", region, body))
        self._raise_sync(self._fault("policyInsert", None, None))
        rid = request.args.get("requestId")
        if rid and rid in self.request_ids:
            return self.operations[self.request_ids[rid]].body
        if (region, body["name"]) in self.policies:
            raise HttpError(409, "alreadyExists", f"resource policy {body['name']} exists")
        self.policies[(region, body["name"])] = {
            **body,
            "region": self._url(f"regions/{region}"),
            "selfLink": self._url(f"regions/{region}/resourcePolicies/{body['name']}"),
            "status": "READY",
        }
        op = self._new_op(f"regions/{region}", "insert")
        if rid:
            self.request_ids[rid] = op.body["name"]
        return op.body

    def _policy_list(self, request: Request, region: str) -> Any:
        return {"items": [p for (r, _), p in sorted(self.policies.items()) if r == region]}

    def _policy_get(self, request: Request, region: str, name: str) -> Any:
        if (region, name) not in self.policies:
            raise HttpError(404, "notFound", f"resource policy {name} not found")
        return self.policies[(region, name)]

    def _policy_delete(self, request: Request, region: str, name: str) -> Any:
        self.calls.append(("policyDelete", region, {"name": name}))
        if (region, name) not in self.policies:
            raise HttpError(404, "notFound", f"resource policy {name} not found")
        url = self.policies[(region, name)]["selfLink"]
        if any(url in i["resourcePolicies"] for i in self.instances.values()):
            raise HttpError(400, "resourceInUseByAnotherResource", f"{name} is in use")
        del self.policies[(region, name)]
        self.deleted_policies.append(name)
        return self._new_op(f"regions/{region}", "delete", polls=0).body


def _last(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def _op_error(
    status: int | None,
    code: str,
    metric: str | None,
    zone: str,
    region: str,
    message: str | None = None,
    also: tuple[tuple[str, str], ...] = (),
) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message or f"injected {code} in {zone}"}
    if metric:
        dims = {} if metric.endswith("ALL_REGIONS") else {"region": region}
        error["errorDetails"] = [
            {
                "quotaInfo": {
                    "metricName": metric,
                    "limitName": f"{metric}-per-project",
                    "limit": 0,
                    "dimensions": dims,
                }
            }
        ]
    out: dict[str, Any] = {
        "error": {"errors": [error, *({"code": c, "message": m} for c, m in also)]}
    }
    if status is not None:
        out.update(httpErrorStatusCode=status, httpErrorMessage="injected failure")
    return out


_CLAUSE = re.compile(r'\(?\s*labels\.([a-z0-9_-]+)\s*(?:=\s*"?([^")\s]*)"?|:\s*\*)\s*\)?')


def parse_filter(text: str) -> Callable[[dict[str, Any]], bool]:
    """A test for Compute list filters the adapter sends: ``labels.k = "v"`` and
    ``labels.k:*`` clauses joined by AND (anything else is refused, loudly)."""
    clauses: list[tuple[str, str | None]] = []
    for part in filter(None, (p.strip() for p in re.split(r"\s+AND\s+", text.strip()))):
        found = _CLAUSE.fullmatch(part)
        if not found:
            raise HttpError(400, "invalid", f"fake cannot parse filter clause {part!r}")
        clauses.append((found.group(1), found.group(2)))

    def test(instance: dict[str, Any]) -> bool:
        labels = instance.get("labels", {})
        return all(k in labels and (v is None or labels[k] == v) for k, v in clauses)

    return test


# -- Billing Catalog SKUs ------------------------------------------------------------------
# Shaped like services.skus.list of the real Cloud Billing Catalog: descriptions spelled as
# the real ones ("<name> running in <geography>", "Spot Preemptible <name> running in ...",
# "<GPU> attached to Spot Preemptible VMs running in ..."), category.resourceGroup /
# usageType, serviceRegions, pricingInfo[].effectiveTime and pricingExpression.tieredRates[]
# .unitPrice {currencyCode, units (a string), nanos}. Alongside the SKUs the refresh must use
# are the ones it must not: commitments, DWS, calendar-mode reservations, flex-start and
# sole-tenancy SKUs, each far cheaper than list price so that using one shows.

GEOS = {"us": "Americas", "europe": "EMEA", "asia": "APAC"}
# family -> (SKU name of its cores, of its RAM, on-demand $/vCPU-h, $/GiB-h)
FAMILY_SKUS = {
    "a2": ("A2 Instance Core", "A2 Instance Ram", 0.031611, 0.004237),
    "a3": ("A3 Instance Core", "A3 Instance Ram", 0.0295, 0.0044),
    "g2": ("G2 Instance Core", "G2 Instance Ram", 0.024988, 0.002927),
    "n1": ("N1 Predefined Instance Core", "N1 Predefined Instance Ram", 0.031611, 0.004237),
}
GPU_SKUS = {  # on-demand SKU name -> on-demand $/GPU-h
    "Nvidia H100 80GB GPU": 2.9,
    "Nvidia H100 80GB Plus GPU": 3.1,  # a3-megagpu (nvidia-h100-mega-80gb)
    "H200 141GB GPU": 3.7,  # newer GPU SKUs drop the "Nvidia" prefix
    "Nvidia Tesla A100 GPU": 2.93,  # A100 40 GB
    "Nvidia Tesla A100 80GB GPU": 3.93,
    "Nvidia L4 GPU": 0.56,
    "Nvidia Tesla T4 GPU": 0.35,
    "Nvidia Tesla V100 GPU": 2.48,
    "A4 Nvidia B200 (1 gpu slice)": 16.11,  # A4: the slice is the machine's whole price
}
SPOT_GPU_NAMES = {"Nvidia H100 80GB Plus GPU": "Nvidia H100 80GB Mega GPU"}  # spelled apart
LOCAL_SSD = "SSD backed Local Storage"
LOCAL_SSD_USD_MONTH = (0.08, 0.048)  # on demand, spot: per GiB-month
GEO_FACTOR = {"Americas": 1.0, "EMEA": 1.1, "APAC": 1.2}
SPOT_FACTOR = 0.3
# pricingInfo[].effectiveTime of the SKUs: cores and RAM, GPUs, local SSD
EFFECTIVE_TIMES = {
    "host": "2026-09-01T07:00:00.000Z",
    "gpu": "2026-10-15T07:00:00.000Z",
    "ssd": "2026-08-01T07:00:00.000Z",
}
DECOY_USD = 0.01  # what every SKU the refresh must ignore costs here


def _money(usd: float) -> dict[str, Any]:
    units = int(usd)
    return {"currencyCode": "USD", "units": str(units), "nanos": round((usd - units) * 1e9)}


_UNIT_TEXT = {"h": "hour", "GiBy.h": "gibibyte hour", "GiBy.mo": "gibibyte month"}


def _sku(
    description: str,
    group: str,
    usage: str,
    unit: str,
    usd: float,
    regions: list[str],
    *,
    effective: str = EFFECTIVE_TIMES["host"],
    family: str = "Compute",
) -> dict[str, Any]:
    sku_id = uuid.uuid5(uuid.NAMESPACE_URL, description).hex[:12].upper()
    sku_id = f"{sku_id[:4]}-{sku_id[4:8]}-{sku_id[8:12]}"
    return {
        "name": f"services/{BILLING_SERVICE}/skus/{sku_id}",
        "skuId": sku_id,
        "description": description,
        "category": {
            "serviceDisplayName": "Compute Engine",
            "resourceFamily": family,
            "resourceGroup": group,
            "usageType": usage,
        },
        "serviceRegions": regions,
        "pricingInfo": [
            {
                "summary": "",
                "pricingExpression": {
                    "usageUnit": unit,
                    "usageUnitDescription": _UNIT_TEXT[unit],
                    "baseUnit": "s" if unit == "h" else "By.s",
                    "displayQuantity": 1,
                    "tieredRates": [{"startUsageAmount": 0, "unitPrice": _money(usd)}],
                },
                "currencyConversionRate": 1,
                "effectiveTime": effective,
            }
        ],
        "serviceProviderName": "Google",
        "geoTaxonomy": {"type": "MULTI_REGIONAL", "regions": regions},
    }


def billing_skus(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Compute Engine SKUs for every region of the catalog: cores, RAM, GPUs and local SSD,
    on demand and spot (``Preemptible``), plus the SKUs the refresh must ignore."""
    regions = sorted({r for spec in doc["instance_types"].values() for r in spec["regions"]})
    skus: list[dict[str, Any]] = []
    gpu_time = EFFECTIVE_TIMES["gpu"]
    for prefix, geo in GEOS.items():
        where = [r for r in regions if r.startswith(prefix + "-")]
        if not where:
            continue
        factor = GEO_FACTOR[geo]
        for core, ram, core_usd, ram_usd in FAMILY_SKUS.values():
            for name, group, unit, usd in (
                (core, "CPU", "h", core_usd),
                (ram, "RAM", "GiBy.h", ram_usd),
            ):
                on_demand, spot = usd * factor, usd * factor * SPOT_FACTOR
                skus += [
                    _sku(f"{name} running in {geo}", group, "OnDemand", unit, on_demand, where),
                    _sku(
                        f"Spot Preemptible {name} running in {geo}",
                        group,
                        "Preemptible",
                        unit,
                        spot,
                        where,
                    ),
                    _sku(  # DWS prices the same parts lower: never the on-demand price
                        f"DWS Defined Duration {name} running in {geo}",
                        group,
                        "OnDemand",
                        unit,
                        DECOY_USD,
                        where,
                    ),
                ]
        for name, usd in GPU_SKUS.items():
            spot_name = SPOT_GPU_NAMES.get(name, name)
            spot_description = (
                f"Spot Preemptible {name} running in {geo}"
                if name.startswith("A4 ")
                else f"{spot_name} attached to Spot Preemptible VMs running in {geo}"
            )
            skus += [
                _sku(
                    f"{name} running in {geo}",
                    "GPU",
                    "OnDemand",
                    "h",
                    usd * factor,
                    where,
                    effective=gpu_time,
                ),
                _sku(
                    spot_description,
                    "GPU",
                    "Preemptible",
                    "h",
                    usd * factor * SPOT_FACTOR,
                    where,
                    effective=gpu_time,
                ),
                _sku(
                    f"Commitment v1: {name} in {geo} for 1 Year",
                    "GPU",
                    "Commit1Yr",
                    "h",
                    DECOY_USD,
                    where,
                ),
                _sku(
                    f"{spot_name} attached to DWS Defined Duration VMs running in {geo}",
                    "GPU",
                    "OnDemand",
                    "h",
                    DECOY_USD,
                    where,
                ),
                _sku(
                    f"{spot_name} attached to Flex-start VMs running in {geo}",
                    "GPU",
                    "OnDemand",
                    "h",
                    DECOY_USD,
                    where,
                ),
                _sku(
                    f"{name} attached to Sole Tenancy VMs running in {geo}",
                    "GPU",
                    "OnDemand",
                    "h",
                    DECOY_USD,
                    where,
                ),
            ]
        skus += [
            _sku(
                f"Reserved Nvidia H100 80GB Mega GPU in {geo} in Calendar Mode",
                "GPU",
                "OnDemand",
                "h",
                DECOY_USD,
                where,
            ),
            _sku(
                f"Nvidia H100 Mega 80GB GPU attached to DWS Defined Duration VMs running in {geo}",
                "GPU",
                "OnDemand",
                "h",
                DECOY_USD,
                where,
            ),
        ]
    ssd_time = EFFECTIVE_TIMES["ssd"]
    skus += [
        _sku(LOCAL_SSD, "LocalSSD", "OnDemand", "GiBy.mo", LOCAL_SSD_USD_MONTH[0], regions,
             effective=ssd_time, family="Storage"),
        _sku(f"{LOCAL_SSD} attached to Spot Preemptible VMs", "LocalSSD", "Preemptible",
             "GiBy.mo", LOCAL_SSD_USD_MONTH[1], regions, effective=ssd_time, family="Storage"),
        _sku(f"Commitment v1: Local SSD In {GEOS['us']} for 1 Year", "LocalSSD", "Commit1Yr",
             "GiBy.mo", DECOY_USD, regions, family="Storage"),
    ]  # fmt: skip
    return skus


# -- serving ---------------------------------------------------------------------------------


class _QuietHandler(WSGIRequestHandler):
    def log(self, type: str, message: str, *args: Any) -> None:
        pass


class FakeServer:
    """The fake served on 127.0.0.1 in a thread: ``with FakeServer() as fake: fake.url``."""

    def __init__(self, port: int = 0, **options: Any) -> None:
        self.state = FakeGce(**options)
        self._server: BaseWSGIServer = make_server(
            "127.0.0.1", port, self.state, threaded=True, request_handler=_QuietHandler
        )
        self.port = self._server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.state.base_url = self.url
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self) -> FakeServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def write_client_files(url: str, where: Path, *, project: str = PROJECT) -> dict[str, Path]:
    """Application Default Credentials whose token endpoint is the fake, and a broker config.

    The ADC file is an ``external_account`` (workload identity federation) one: its
    ``token_url`` is honoured, so every token request goes to the fake. (google-auth 2.62
    *ignores* ``token_uri`` in ``authorized_user`` files and always refreshes at
    oauth2.googleapis.com, so that type cannot be pointed at a fake.) The audience names no
    Google project, so google-auth makes no project or access-boundary lookup either.
    """
    where.mkdir(parents=True, exist_ok=True)
    subject = where / "subject-token"
    subject.write_text(f"fake-subject-token-{uuid.uuid4().hex}")
    adc = where / "adc.json"
    adc.write_text(
        json.dumps(
            {
                "type": "external_account",
                "audience": "//iam.fake.invalid/burst-broker-test",
                "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
                "token_url": f"{url}/token",
                "credential_source": {"file": str(subject)},
            },
            indent=2,
        )
    )
    config = where / "config.toml"
    config.write_text(
        '[broker]\nproviders = ["gcp"]\n\n[gcp]\n'
        f'project = "{project}"\nregions = ["us-central1"]\n'
        'image = "projects/debian-cloud/global/images/family/debian-12"\n'
        f'endpoint = "{url}"\nbilling_endpoint = "{url}"\n'
    )
    return {"adc": adc, "config": config, "subject": subject}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A fake Compute Engine API on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=8480)
    parser.add_argument("--dir", type=Path, default=None, help="where to write adc/config")
    args = parser.parse_args(argv)
    with FakeServer(args.port, require_auth=True) as server:
        where = args.dir or Path(tempfile.mkdtemp(prefix="fake-gce-"))
        files = write_client_files(server.url, where)
        print(f"fake Compute Engine API on {server.url} (project {PROJECT}); Ctrl-C stops it")
        print(f"broker config written to {files['config']}:\n")
        print(files["config"].read_text())
        print("in another shell:\n")
        print(f"  export GOOGLE_APPLICATION_CREDENTIALS={files['adc']}")
        print(f"  export GOOGLE_CLOUD_PROJECT={PROJECT}")
        print(f"  export BROKER_CONFIG={files['config']}")
        print(f"  export BROKER_STATE_DIR={where / 'state'} BROKER_CATALOG_DIR={where / 'catalog'}")
        print(
            "  export GCE_METADATA_HOST=127.0.0.1:9 GCE_METADATA_IP=127.0.0.1:9 NO_GCE_CHECK=true"
        )
        print("  broker provision --provider gcp --gpus 16\n", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print("stopped")


if __name__ == "__main__":
    main()

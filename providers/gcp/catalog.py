"""The live GCP catalog: GPU machine types, the zones offering them and their prices, read
from Compute Engine and the Cloud Billing Catalog API.

:func:`build_catalog_document` writes a document in the format of ``shapes/data/gcp.json``
(``broker catalog refresh --provider gcp`` installs it in the local catalog directory):

- **machine types** with bound GPUs (A2, A3, G2, ...): ``machineTypes.aggregatedList``; the
  GPU is ``MachineType.accelerators[0]`` named with :func:`shapes.gpus.normalize_gpu`. A
  machine type listed in a zone means the zone *offers* it (capacity is another matter);
- **N1 + attachable GPUs** (``n1-standard-8+t4x1``): only the combinations the bundled catalog
  lists, offered where the zone lists both the N1 machine type and the accelerator type
  (``acceleratorTypes.aggregatedList``) with ``maximumCardsPerInstance`` >= the count;
- **prices**: ``CloudCatalogClient.list_skus(parent="services/6F81-5844-456A")`` (Compute
  Engine). A VM's hourly price is the **sum** of its GPU, vCPU and RAM SKUs, each matched by
  the explicit tables :data:`CORE_RAM_SKUS` and :data:`GPU_SKUS` (SKU description, without
  the ``Spot Preemptible`` prefix, is ``"<name> running in <geography>"``), by region
  (``service_regions``) and by usage type (``OnDemand``; spot is ``Preemptible``). The SKU
  names are from public price lists, **not verified against the live API**: a shape whose
  parts cannot all be priced is left out and listed in ``notes``, never guessed.

Only the configured regions are read. ``prices_as_of`` is the day of the refresh.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import date
from typing import TYPE_CHECKING, Any

from google.api_core.client_options import ClientOptions

from providers.gcp.config import GcpConfig
from providers.gcp.errors import GOOGLE_ERRORS, PROVIDER, classify
from providers.refresh import catalog_document, listing
from shapes.catalog import Catalog
from shapes.gpus import GPU_MEMORY_GIB, normalize_gpu

if TYPE_CHECKING:
    from google.auth.credentials import Credentials

__all__ = [
    "COMPUTE_SERVICE",
    "CORE_RAM_SKUS",
    "GPU_SKUS",
    "build_catalog_document",
    "sku_price",
]

COMPUTE_SERVICE = "services/6F81-5844-456A"  # Compute Engine in the Billing Catalog
ON_DEMAND, SPOT = "OnDemand", "Preemptible"  # Sku.category.usage_type
_PREFIXES = ("Spot Preemptible ", "Preemptible ")

# Machine series -> (vCPU SKU name, RAM SKU name).
CORE_RAM_SKUS: Mapping[str, tuple[str, str]] = {
    "a2": ("A2 Instance Core", "A2 Instance Ram"),
    "a3": ("A3 Instance Core", "A3 Instance Ram"),
    "g2": ("G2 Instance Core", "G2 Instance Ram"),
    "n1": ("N1 Predefined Instance Core", "N1 Predefined Instance Ram"),
}
# GCE accelerator type -> GPU SKU name (priced per GPU-hour).
GPU_SKUS: Mapping[str, str] = {
    "nvidia-h100-80gb": "Nvidia H100 80GB GPU",
    "nvidia-h100-mega-80gb": "Nvidia H100 80GB Plus GPU",
    "nvidia-h200-141gb": "Nvidia H200 141GB GPU",
    "nvidia-tesla-a100": "Nvidia Tesla A100 GPU",
    "nvidia-a100-80gb": "Nvidia A100 80GB GPU",
    "nvidia-l4": "Nvidia L4 GPU",
    "nvidia-tesla-t4": "Nvidia Tesla T4 GPU",
    "nvidia-tesla-v100": "Nvidia Tesla V100 GPU",
}
_UNITS = {"h": 1.0, "GiBy.h": 1.0}  # usage units the sums understand (per hour)


def _last(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def _region_of(zone: str) -> str:
    return zone.rsplit("-", 1)[0]


def sku_price(sku: Any) -> float | None:
    """The hourly USD unit price of a Billing Catalog SKU (the tier starting at 0), or None
    if it is not priced per hour (or per GiB-hour)."""
    for info in sku.pricing_info[:1]:
        expression = info.pricing_expression
        if expression.usage_unit not in _UNITS:
            return None
        rates = sorted(expression.tiered_rates, key=lambda r: r.start_usage_amount)
        if not rates:
            return None
        money = rates[0].unit_price
        if money.currency_code and money.currency_code != "USD":
            return None
        return float(money.units) + float(money.nanos) / 1e9
    return None


class _Prices:
    """SKU name -> (region, usage type) -> USD per unit-hour, from ``list_skus``."""

    def __init__(self, skus: Iterable[Any], regions: Iterable[str]) -> None:
        wanted = {*(n for pair in CORE_RAM_SKUS.values() for n in pair), *GPU_SKUS.values()}
        regions = set(regions)
        self.table: dict[str, dict[tuple[str, str], float]] = {}
        for sku in skus:
            usage = sku.category.usage_type
            if usage not in (ON_DEMAND, SPOT):
                continue
            description = str(sku.description)
            for prefix in _PREFIXES:
                description = description.removeprefix(prefix)
            name, sep, _ = description.partition(" running in ")
            if not sep or name not in wanted:
                continue
            price = sku_price(sku)
            if price is None:
                continue
            for region in set(sku.service_regions) & regions:
                self.table.setdefault(name, {})[(region, usage)] = price

    def get(self, name: str, region: str, usage: str) -> float | None:
        return self.table.get(name, {}).get((region, usage))


def _clients(config: GcpConfig, credentials: Credentials | None) -> tuple[Any, Any, Any]:
    from google.cloud import billing_v1, compute_v1

    try:
        if credentials is None:
            import google.auth

            credentials, _ = google.auth.default(
                scopes=["https://www.googleapis.com/auth/cloud-platform"]
            )
        compute = ClientOptions(api_endpoint=config.endpoint) if config.endpoint else None
        billing = (
            ClientOptions(api_endpoint=config.billing_endpoint) if config.billing_endpoint else None
        )
        return (
            compute_v1.MachineTypesClient(
                credentials=credentials, transport="rest", client_options=compute
            ),
            compute_v1.AcceleratorTypesClient(
                credentials=credentials, transport="rest", client_options=compute
            ),
            billing_v1.CloudCatalogClient(
                credentials=credentials, transport="rest", client_options=billing
            ),
        )
    except GOOGLE_ERRORS as exc:
        raise classify(exc) from exc


def _all(call: Callable[..., Any], timeout: float, **kw: Any) -> list[Any]:
    try:
        return list(call(retry=None, timeout=timeout, **kw))
    except GOOGLE_ERRORS as exc:
        raise classify(exc) from exc


def build_catalog_document(
    config: GcpConfig,
    *,
    bundled: Catalog | None,
    today: date,
    credentials: Credentials | None = None,
    timeout: float = 120.0,
) -> dict[str, Any]:
    """The GCP catalog document (``shapes/data/gcp.json`` format) for ``config.regions``.

    Raises a ProviderError when Compute Engine or the Billing Catalog cannot be read."""
    from google.cloud import billing_v1, compute_v1

    machine_client, accelerator_client, billing_client = _clients(config, credentials)
    regions = set(config.regions)
    machines: dict[str, Any] = {}  # name -> MachineType (first seen)
    offered: dict[str, dict[str, set[str]]] = {}  # machine -> region -> zones
    for scope, scoped in _all(
        machine_client.aggregated_list,
        timeout,
        request=compute_v1.AggregatedListMachineTypesRequest(project=config.project),
    ):
        zone = _last(scope)
        if not scope.startswith("zones/") or _region_of(zone) not in regions:
            continue
        for machine in scoped.machine_types:
            machines.setdefault(machine.name, machine)
            offered.setdefault(machine.name, {}).setdefault(_region_of(zone), set()).add(zone)
    cards: dict[tuple[str, str], int] = {}  # (zone, accelerator) -> maximum cards
    for scope, scoped in _all(
        accelerator_client.aggregated_list,
        timeout,
        request=compute_v1.AggregatedListAcceleratorTypesRequest(project=config.project),
    ):
        zone = _last(scope)
        if scope.startswith("zones/") and _region_of(zone) in regions:
            for accel in scoped.accelerator_types:
                cards[(zone, accel.name)] = int(accel.maximum_cards_per_instance)
    prices = _Prices(
        _all(
            billing_client.list_skus,
            timeout,
            request=billing_v1.ListSkusRequest(
                parent=COMPUTE_SERVICE, currency_code="USD", page_size=5000
            ),
        ),
        regions,
    )

    # (instance type) -> (machine, accelerator type, count, zones by region)
    candidates: dict[str, tuple[Any, str, int, dict[str, set[str]]]] = {}
    skipped: dict[str, set[str]] = {}
    for name, machine in sorted(machines.items()):
        if not machine.accelerators:
            continue
        accel = machine.accelerators[0]
        candidates[name] = (
            machine,
            str(accel.guest_accelerator_type),
            int(accel.guest_accelerator_count),
            offered[name],
        )
    for combo in _n1_combos(bundled):
        machine_name, accel_name, count = combo[1], combo[2], combo[3]
        machine = machines.get(machine_name)
        if machine is None:
            skipped.setdefault("machine type not offered in the configured regions", set()).add(
                combo[0]
            )
            continue
        zones: dict[str, set[str]] = {}
        for region, where in offered[machine_name].items():
            ok = {z for z in where if cards.get((z, accel_name), 0) >= count}
            if ok:
                zones[region] = ok
        candidates[combo[0]] = (machine, accel_name, count, zones)

    types: dict[str, dict[str, Any]] = {}
    unpriced: list[str] = []
    for name, (machine, accel_name, count, zones) in sorted(candidates.items()):
        try:
            gpu = normalize_gpu(accel_name)
        except ValueError:
            skipped.setdefault("unknown GPU", set()).add(f"{name} ({accel_name})")
            continue
        series = machine.name.split("-", 1)[0]
        vcpus, memory = int(machine.guest_cpus), round(int(machine.memory_mb) / 1024, 3)
        for region, where in sorted(zones.items()):
            entry = _priced(prices, series, accel_name, count, vcpus, memory, region)
            if entry is None:
                unpriced.append(f"{name}/{region}")
                continue
            spec = types.setdefault(
                name,
                {
                    "gpu": gpu,
                    "gpus": count,
                    "gpu_memory_gib": GPU_MEMORY_GIB[gpu],
                    "vcpus": vcpus,
                    "memory_gib": memory,
                    "regions": {},
                },
            )
            spec["regions"][region] = {"zones": sorted(where), **entry}

    listed = ", ".join(config.regions)
    return catalog_document(
        PROVIDER,
        today=today,
        price_source=(
            f"Compute Engine machineTypes/acceleratorTypes aggregatedList (zones offering each "
            f"type) and Cloud Billing Catalog {COMPUTE_SERVICE} SKUs (OnDemand and Preemptible "
            f"list prices, USD) for {listed}; price = GPU + vCPU + RAM SKUs"
        ),
        notes=_notes(config, bundled, skipped, unpriced),
        instance_types=types,
    )


def _n1_combos(bundled: Catalog | None) -> list[tuple[str, str, str, int]]:
    """(instance type, N1 machine, accelerator type, count) the bundled catalog lists."""
    from providers.gcp.adapter import parse_instance_type

    found: dict[str, tuple[str, str, str, int]] = {}
    for shape in bundled.shapes if bundled is not None else ():
        if shape.provider != PROVIDER or "+" not in shape.instance_type:
            continue
        machine, accel, count = parse_instance_type(shape.instance_type)
        if accel is not None:
            found[shape.instance_type] = (shape.instance_type, machine, accel, count)
    return sorted(found.values())


def _priced(
    prices: _Prices,
    series: str,
    accelerator: str,
    gpus: int,
    vcpus: int,
    memory_gib: float,
    region: str,
) -> dict[str, Any] | None:
    """``on_demand`` / ``spot`` prices and their ``price_parts`` (None: no price at all)."""
    names = CORE_RAM_SKUS.get(series)
    gpu_name = GPU_SKUS.get(accelerator)
    if names is None or gpu_name is None:
        return None
    entry: dict[str, Any] = {}
    parts: dict[str, Any] = {}
    for key, usage in (("on_demand", ON_DEMAND), ("spot", SPOT)):
        core = prices.get(names[0], region, usage)
        ram = prices.get(names[1], region, usage)
        gpu = prices.get(gpu_name, region, usage)
        if core is None or ram is None or gpu is None:
            continue
        host = core * vcpus + ram * memory_gib
        entry[key] = round(host + gpu * gpus, 5)
        parts[key] = {"host": round(host, 5), "gpu_each": round(gpu, 8), "gpus": gpus}
    if not entry:
        return None
    entry["price_parts"] = parts
    return entry


def _notes(
    config: GcpConfig,
    bundled: Catalog | None,
    skipped: Mapping[str, set[str]],
    unpriced: list[str],
) -> str:
    parts = [
        f"Read live from GCP project {config.project} in {', '.join(config.regions)}. A shape's "
        "price is the sum of its GPU, vCPU and RAM SKUs (price_parts: host = vCPU + RAM, "
        "gpu_each per GPU), on-demand from OnDemand SKUs and spot from Preemptible ones, one "
        "price per region. SKUs are matched by name through the adapter's mapping table "
        "(providers/gcp/catalog.py), whose names are not verified against the live API."
    ]
    if bundled is None:
        parts.append("No bundled catalog was given, so no N1 + attached GPU shape is listed.")
    if unpriced:
        parts.append(
            f"Left out, a GPU, vCPU or RAM SKU missing for both markets: {listing(unpriced)}."
        )
    for why in sorted(skipped):
        parts.append(f"Skipped ({why}): {listing(sorted(skipped[why]))}.")
    return " ".join(parts)

"""The live GCP catalog: GPU machine types, the zones offering them and their prices, read
from Compute Engine and the Cloud Billing Catalog API.

:func:`build_catalog_document` writes a document in the format of ``shapes/data/gcp.json``
(``broker catalog refresh --provider gcp`` installs it in the local catalog directory):

- **machine types** with bound GPUs (A2, A3, A4, G2, ...): ``machineTypes.aggregatedList``;
  the GPU is ``MachineType.accelerators[0]`` named with :func:`shapes.gpus.normalize_gpu`. A
  machine type listed in a zone means the zone *offers* it (capacity is another matter);
- **N1 + attachable GPUs** (``n1-standard-8+t4x1``): only the combinations the bundled catalog
  lists, offered where the zone lists both the N1 machine type and the accelerator type
  (``acceleratorTypes.aggregatedList``) with ``maximumCardsPerInstance`` >= the count;
- **prices**: ``CloudCatalogClient.list_skus(parent="services/6F81-5844-456A")`` (Compute
  Engine, every page). A VM's hourly price is the **sum** of its GPU, vCPU and RAM SKUs and,
  for the machines that come with local SSD (a2-ultragpu, a3), the SSD's SKU for the bundled
  size (``MachineType.bundledLocalSsds``, else :data:`BUNDLED_LOCAL_SSD_PARTITIONS`); A4 is
  billed by GPU slice, whose SKU is the whole price. SKUs are matched **exactly**
  (:func:`parse_sku`): the description is ``"<name> running in <geography>"`` (on demand,
  usage type ``OnDemand``) or ``"Spot Preemptible <name> running in ..."`` / ``"<name>
  attached to Spot Preemptible VMs running in ..."`` (spot, usage type ``Preemptible``), the
  name one of the tables :data:`CORE_RAM_SKUS` / :data:`GPU_SKUS` (never a substring: the
  A100 40 GB SKU is not the 80 GB one, H100 is not H100 Mega), the region one of the SKU's
  ``serviceRegions``. Commitment, reservation, calendar-mode, DWS / flex-start, sole-tenancy
  and custom SKUs never count. The SKU names are from public price data, **not verified
  against the live API**: a shape whose parts cannot all be priced is left out and listed in
  ``notes``, never guessed.

Each price is dated by its SKUs' ``pricingInfo.effectiveTime`` (the newest of the parts);
spot is dated the day of the refresh. Only the configured regions are read.

The Billing Catalog takes an API key instead of credentials: ``BROKER_GCP_API_KEY`` in the
environment, sent in the ``X-Goog-Api-Key`` header; it is never printed, logged or put in
an error message (Compute Engine still uses Application Default Credentials).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from datetime import date
from typing import TYPE_CHECKING, Any, NamedTuple

from google.api_core.client_options import ClientOptions

from providers.errors import ProviderError
from providers.gcp.config import GcpConfig
from providers.gcp.errors import GOOGLE_ERRORS, PROVIDER, classify
from providers.refresh import catalog_document, feed_date, listing
from shapes.catalog import Catalog
from shapes.gpus import GPU_MEMORY_GIB, normalize_gpu

if TYPE_CHECKING:
    from google.auth.credentials import Credentials

__all__ = [
    "API_KEY_ENV",
    "BUNDLED_LOCAL_SSD_PARTITIONS",
    "COMPUTE_SERVICE",
    "CORE_RAM_SKUS",
    "GPU_SKUS",
    "ParsedSku",
    "api_key_from_env",
    "build_catalog_document",
    "parse_sku",
    "sku_price",
]

COMPUTE_SERVICE = "services/6F81-5844-456A"  # Compute Engine in the Billing Catalog
API_KEY_ENV = "BROKER_GCP_API_KEY"  # an API key for the Billing Catalog (never printed)
ON_DEMAND, SPOT = "OnDemand", "Preemptible"  # Sku.category.usage_type
HOURS_PER_MONTH = 730.0  # Google's conversion of per-month SKUs (local SSD) to hours

# Machine series -> (vCPU SKU name, RAM SKU name). A series not here has no host price.
CORE_RAM_SKUS: Mapping[str, tuple[str, str]] = {
    "a2": ("A2 Instance Core", "A2 Instance Ram"),
    "a3": ("A3 Instance Core", "A3 Instance Ram"),
    "g2": ("G2 Instance Core", "G2 Instance Ram"),
    "n1": ("N1 Predefined Instance Core", "N1 Predefined Instance Ram"),
}
# Series billed per GPU slice: the GPU SKU is the machine's whole price (vCPU, RAM and, as
# assumed here, unverified, its local SSD in it).
SLICE_BILLED_SERIES = frozenset({"a4"})
# GCE accelerator type -> the GPU SKU names it is billed as (per GPU-hour), matched exactly.
# Two names where the on-demand and the spot SKU spell it differently.
GPU_SKUS: Mapping[str, tuple[str, ...]] = {
    "nvidia-b200": ("A4 Nvidia B200 (1 gpu slice)",),
    "nvidia-h200-141gb": ("H200 141GB GPU", "Nvidia H200 141GB GPU"),
    "nvidia-h100-80gb": ("Nvidia H100 80GB GPU",),
    "nvidia-h100-mega-80gb": ("Nvidia H100 80GB Plus GPU", "Nvidia H100 80GB Mega GPU"),
    "nvidia-tesla-a100": ("Nvidia Tesla A100 GPU",),
    "nvidia-a100-80gb": ("Nvidia Tesla A100 80GB GPU", "Nvidia A100 80GB GPU"),
    "nvidia-l4": ("Nvidia L4 GPU",),
    "nvidia-tesla-t4": ("Nvidia Tesla T4 GPU",),
    "nvidia-tesla-v100": ("Nvidia Tesla V100 GPU",),
}
LOCAL_SSD_SKU = "SSD backed Local Storage"  # per GiB-month, resource group LocalSSD
LOCAL_SSD_PARTITION_GIB = 375
# Local SSD partitions (375 GiB each) bundled with machine types, for a Compute API that
# does not report ``bundledLocalSsds``: A2 Ultra and A3 machines come with them.
BUNDLED_LOCAL_SSD_PARTITIONS: Mapping[str, int] = {
    "a2-ultragpu-1g": 1,
    "a2-ultragpu-2g": 2,
    "a2-ultragpu-4g": 4,
    "a2-ultragpu-8g": 8,
    "a3-highgpu-1g": 2,
    "a3-highgpu-2g": 4,
    "a3-highgpu-4g": 8,
    "a3-highgpu-8g": 16,
    "a3-megagpu-8g": 16,
    "a3-edgegpu-8g": 16,
    "a3-ultragpu-8g": 32,
}

# Words of SKUs that are not the plain on-demand or spot price of a VM.
_EXCLUDED = re.compile(
    r"\b(?:DWS|Dynamic Workload Scheduler|Flex[- ]?start|Commitment|Commit|Committed|"
    r"Reserved|Reservation|Calendar Mode|Sole Tenancy|Defined Duration|Custom|Premium)\b",
    re.IGNORECASE,
)
_ON_DEMAND_FORM = re.compile(r"^(?P<name>.+?) running in (?P<where>.+)$")
_SPOT_FORMS = (
    re.compile(r"^(?:Spot )?Preemptible (?P<name>.+?) running in (?P<where>.+)$"),
    re.compile(r"^(?P<name>.+?) attached to (?:Spot )?Preemptible VMs running in (?P<where>.+)$"),
)
_LOCAL_SSD_FORM = re.compile(
    r"^SSD backed Local Storage(?P<spot> attached to (?:Spot )?Preemptible VMs)?"
    r"(?: in (?P<where>.+))?$"
)
_UNITS = {"h": 1.0, "GiBy.h": 1.0, "GiBy.mo": 1.0 / HOURS_PER_MONTH}  # -> per hour


def _last(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def _region_of(zone: str) -> str:
    return zone.rsplit("-", 1)[0]


def sku_price(sku: Any) -> float | None:
    """The hourly USD unit price of a Billing Catalog SKU (the tier starting at 0; a
    per-GiB-month price divided by 730), or None if it is not priced per hour, per GiB-hour
    or per GiB-month, or not in USD."""
    for info in sku.pricing_info[:1]:
        expression = info.pricing_expression
        factor = _UNITS.get(expression.usage_unit)
        if factor is None:
            return None
        rates = sorted(expression.tiered_rates, key=lambda r: r.start_usage_amount)
        if not rates:
            return None
        money = rates[0].unit_price
        if money.currency_code and money.currency_code != "USD":
            return None
        return (float(money.units) + float(money.nanos) / 1e9) * factor
    return None


class ParsedSku(NamedTuple):
    """What a SKU prices: the part (``"A3 Instance Core"``, ``"Nvidia H100 80GB GPU"``) and
    the market (``OnDemand`` or ``Preemptible``)."""

    name: str
    market: str


def parse_sku(description: str, usage_type: str) -> ParsedSku | None:
    """The part and market a SKU prices, from its description and usage type; None for
    every SKU the refresh must not use (commitments, reservations, DWS / flex-start, sole
    tenancy, custom, a usage type other than OnDemand / Preemptible, a description whose
    form does not match its usage type)."""
    if usage_type not in (ON_DEMAND, SPOT) or _EXCLUDED.search(description):
        return None
    ssd = _LOCAL_SSD_FORM.match(description)
    if ssd is not None:
        market = SPOT if ssd["spot"] else ON_DEMAND
        return ParsedSku(LOCAL_SSD_SKU, market) if market == usage_type else None
    if usage_type == SPOT:
        for form in _SPOT_FORMS:
            found = form.match(description)
            if found is not None:
                return ParsedSku(found["name"], SPOT)
        return None
    found = _ON_DEMAND_FORM.match(description)
    if found is None:
        return None
    name = found["name"]
    if "Preemptible" in name or name.startswith("Spot ") or " attached to " in name:
        return None
    return ParsedSku(name, ON_DEMAND)


_WANTED = frozenset(
    {
        *(n for pair in CORE_RAM_SKUS.values() for n in pair),
        *(n for names in GPU_SKUS.values() for n in names),
        LOCAL_SSD_SKU,
    }
)


class _Prices:
    """(SKU name, region, market) -> (USD per unit-hour, effective date), from ``list_skus``.

    Two different prices for the same name, region and market (SKUs the tables cannot tell
    apart) make that part unpriced: :attr:`ambiguous` lists them."""

    def __init__(self, skus: Iterable[Any], regions: Iterable[str]) -> None:
        regions = set(regions)
        found: dict[tuple[str, str, str], set[tuple[float, date | None]]] = {}
        self.used = 0
        for sku in skus:
            parsed = parse_sku(str(sku.description), str(sku.category.usage_type))
            if parsed is None or parsed.name not in _WANTED:
                continue
            price = sku_price(sku)
            if price is None or price <= 0:
                continue
            when = _effective(sku)
            self.used += 1
            for region in set(sku.service_regions) & regions:
                found.setdefault((parsed.name, region, parsed.market), set()).add((price, when))
        self.table: dict[tuple[str, str, str], tuple[float, date | None]] = {}
        self.ambiguous: set[str] = set()
        for key, offers in found.items():
            if len({round(price, 9) for price, _ in offers}) > 1:
                self.ambiguous.add(f"{key[0]} ({key[2]}) in {key[1]}")
                continue
            self.table[key] = max(offers, key=lambda o: o[1] or date.min)

    def get(
        self, names: str | Iterable[str], region: str, market: str
    ) -> tuple[float, date | None] | None:
        """The price of the first of ``names`` that is priced in the region and market."""
        for name in (names,) if isinstance(names, str) else names:
            offer = self.table.get((name, region, market))
            if offer is not None:
                return offer
        return None


def _effective(sku: Any) -> date | None:
    """The day of ``pricingInfo[0].effectiveTime`` (a datetime through proto-plus, or a raw
    protobuf Timestamp), None if it has none."""
    if not sku.pricing_info:
        return None
    stamp = sku.pricing_info[0].effective_time
    if hasattr(stamp, "ToDatetime"):
        if not (stamp.seconds or stamp.nanos):
            return None
        stamp = stamp.ToDatetime()
    return feed_date(stamp)


def api_key_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """The Billing Catalog API key of the environment (:data:`API_KEY_ENV`), or None."""
    key = ({} if environ is None else environ).get(API_KEY_ENV, "").strip()
    return key or None


def _clients(
    config: GcpConfig, credentials: Credentials | None, api_key: str | None
) -> tuple[Any, Any, Any]:
    from google.cloud import billing_v1, compute_v1

    try:
        if credentials is None:
            import google.auth

            credentials, _ = google.auth.default(
                scopes=["https://www.googleapis.com/auth/cloud-platform"]
            )
        compute = ClientOptions(api_endpoint=config.endpoint) if config.endpoint else None
        billing_options: dict[str, Any] = {}
        if config.billing_endpoint:
            billing_options["api_endpoint"] = config.billing_endpoint
        if api_key is not None:
            billing_options["api_key"] = api_key  # sent as X-Goog-Api-Key, not credentials
        billing = ClientOptions(**billing_options) if billing_options else None
        return (
            compute_v1.MachineTypesClient(
                credentials=credentials, transport="rest", client_options=compute
            ),
            compute_v1.AcceleratorTypesClient(
                credentials=credentials, transport="rest", client_options=compute
            ),
            billing_v1.CloudCatalogClient(
                credentials=None if api_key is not None else credentials,
                transport="rest",
                client_options=billing,
            ),
        )
    except GOOGLE_ERRORS as exc:
        raise _scrubbed(classify(exc), api_key) from None


def _scrubbed(error: ProviderError, secret: str | None) -> ProviderError:
    """The error with ``secret`` (the API key) cut out of its message, should the cloud's
    text or a URL have carried it."""
    if secret and secret in error.message:
        error.message = error.message.replace(secret, "<redacted>")
        error.args = (error.message,)
    return error


def _all(
    call: Callable[..., Any], timeout: float, secret: str | None = None, **kw: Any
) -> list[Any]:
    try:
        return list(call(retry=None, timeout=timeout, **kw))
    except GOOGLE_ERRORS as exc:
        raise _scrubbed(classify(exc), secret) from None


def build_catalog_document(
    config: GcpConfig,
    *,
    bundled: Catalog | None,
    today: date,
    credentials: Credentials | None = None,
    api_key: str | None = None,
    timeout: float = 120.0,
) -> dict[str, Any]:
    """The GCP catalog document (``shapes/data/gcp.json`` format) for ``config.regions``.

    ``api_key``: the Billing Catalog is read with it instead of ``credentials`` (the edge
    reads it from ``BROKER_GCP_API_KEY``: :func:`api_key_from_env` of its credentials).
    Raises a ProviderError when Compute Engine or the Billing Catalog cannot be read."""
    from google.cloud import billing_v1, compute_v1

    machine_client, accelerator_client, billing_client = _clients(config, credentials, api_key)
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
            api_key,
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
    dates: dict[tuple[str, str], date] = {}
    unpriced: list[str] = []
    for name, (machine, accel_name, count, zones) in sorted(candidates.items()):
        try:
            gpu = normalize_gpu(accel_name)
        except ValueError:
            skipped.setdefault("unknown GPU", set()).add(f"{name} ({accel_name})")
            continue
        vcpus, memory = int(machine.guest_cpus), round(int(machine.memory_mb) / 1024, 3)
        series = str(machine.name).split("-", 1)[0]
        billed_ssd = "+" not in name and series not in SLICE_BILLED_SERIES
        ssd_gib = _bundled_ssd_gib(machine) if billed_ssd else 0
        for region, where in sorted(zones.items()):
            priced = _priced(
                prices, machine.name, accel_name, count, vcpus, memory, ssd_gib, region
            )
            if priced is None:
                unpriced.append(f"{name}/{region}")
                continue
            entry, when = priced
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
            if when is not None:
                dates[(name, region)] = when

    listed = ", ".join(config.regions)
    return catalog_document(
        PROVIDER,
        today=today,
        price_source=(
            f"Compute Engine machineTypes/acceleratorTypes aggregatedList (zones offering each "
            f"type) and Cloud Billing Catalog {COMPUTE_SERVICE} SKUs (OnDemand 'running in' "
            f"and Preemptible 'Spot Preemptible' list prices, USD) for {listed}, read "
            f"{today.isoformat()}; price = GPU + vCPU + RAM SKUs (+ bundled local SSD)"
        ),
        notes=_notes(config, bundled, skipped, unpriced, prices.ambiguous),
        instance_types=types,
        dates=dates,
    )


def _bundled_ssd_gib(machine: Any) -> int:
    """GiB of local SSD a machine type comes with (and is billed for)."""
    partitions = 0
    bundled = getattr(machine, "bundled_local_ssds", None)
    if bundled is not None:
        partitions = int(getattr(bundled, "partition_count", 0) or 0)
    if not partitions:
        partitions = BUNDLED_LOCAL_SSD_PARTITIONS.get(str(machine.name), 0)
    return partitions * LOCAL_SSD_PARTITION_GIB


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
    machine: str,
    accelerator: str,
    gpus: int,
    vcpus: int,
    memory_gib: float,
    ssd_gib: int,
    region: str,
) -> tuple[dict[str, Any], date | None] | None:
    """(``on_demand`` / ``spot`` prices, the on-demand price's date), or None: no market
    has every part priced. A machine with bundled local SSD needs its SSD price too."""
    series = machine.split("-", 1)[0]
    gpu_names = GPU_SKUS.get(accelerator)
    host_names = CORE_RAM_SKUS.get(series)
    if gpu_names is None or (host_names is None and series not in SLICE_BILLED_SERIES):
        return None
    entry: dict[str, Any] = {}
    when: date | None = None
    for key, market in (("on_demand", ON_DEMAND), ("spot", SPOT)):
        parts: list[tuple[float, date | None]] = []
        gpu = prices.get(gpu_names, region, market)
        if gpu is None:
            continue
        parts.append((gpu[0] * gpus, gpu[1]))
        if host_names is not None:
            core = prices.get(host_names[0], region, market)
            ram = prices.get(host_names[1], region, market)
            if core is None or ram is None:
                continue
            parts += [(core[0] * vcpus, core[1]), (ram[0] * memory_gib, ram[1])]
        if ssd_gib:
            ssd = prices.get(LOCAL_SSD_SKU, region, market)
            if ssd is None:
                continue
            parts.append((ssd[0] * ssd_gib, ssd[1]))
        entry[key] = round(sum(price for price, _ in parts), 5)
        if market == ON_DEMAND:
            stamps = [d for _, d in parts if d is not None]
            when = max(stamps) if stamps else None
    if not entry:
        return None
    return entry, when


def _notes(
    config: GcpConfig,
    bundled: Catalog | None,
    skipped: Mapping[str, set[str]],
    unpriced: list[str],
    ambiguous: set[str],
) -> str:
    parts = [
        f"Read live from GCP project {config.project} in {', '.join(config.regions)}. A shape's "
        "price is the sum of its GPU, vCPU and RAM SKUs (A4: its GPU-slice SKU alone), plus "
        "the local SSD bundled with a2-ultragpu and a3 machines; on-demand from the OnDemand "
        "'<name> running in <geography>' SKUs and spot from the Preemptible ones, one price "
        "per region; no commitment, reservation, calendar-mode, DWS, flex-start or "
        "sole-tenancy SKU. SKU names are matched exactly through the tables of "
        "providers/gcp/catalog.py, whose names are not verified against the live API. "
        "prices_as_of is the SKUs' effectiveTime; spot_as_of the day of the refresh."
    ]
    if bundled is None:
        parts.append("No bundled catalog was given, so no N1 + attached GPU shape is listed.")
    if ambiguous:
        parts.append(
            f"Left unpriced, several SKUs with different prices for one part: {listing(ambiguous)}."
        )
    if unpriced:
        parts.append(
            "Left out, a GPU, vCPU, RAM or local SSD SKU missing for both markets: "
            f"{listing(unpriced)}."
        )
    for why in sorted(skipped):
        parts.append(f"Skipped ({why}): {listing(sorted(skipped[why]))}.")
    return " ".join(parts)

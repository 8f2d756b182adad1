"""The live Azure catalog: GPU VM sizes, their zones and prices, from Azure's own APIs.

:func:`build_catalog_document` writes a document in exactly the format of
``shapes/data/azure.json`` (``broker catalog refresh --provider azure`` installs it in the
local catalog directory, where it replaces the bundled file):

- sizes: Compute Resource SKUs, ``resource_skus.list(filter="location eq '<region>'")`` per
  configured region (only a location filter exists), ``resource_type == "virtualMachines"``
  with a ``GPUs`` capability; ``vCPUs`` and ``MemoryGB`` from the capabilities (strings);
- GPU model: Azure reports a count, not a model, so the size name is matched against
  :data:`GPU_FAMILIES`, an explicit table of size families (ND H100 v5, NC H100 v5 (NVL),
  ND/NC A100 v4, NCas T4 v3, NC v3 and ND v2 V100, ...). Sizes it does not know, fractional
  GPUs and confidential sizes are skipped and listed in ``notes``;
- zones: ``location_info[].zones`` minus the zones of ``Zone`` restrictions (the restricted
  values are ``values_property`` in Python); a ``Location`` restriction drops the size from
  the region. A region without availability zones gets its own name as the single
  pseudo-zone, like the bundled catalog (the adapter then launches a regional VM);
- prices: the public Retail Prices API (no auth: the ARM bearer token is never sent to it;
  ``prices_endpoint`` overrides the host), one query per (region, size):
  ``serviceName eq 'Virtual Machines' and armRegionName eq ... and armSkuName eq ... and
  priceType eq 'Consumption'``, following ``NextPageLink``. A row counts only if it is
  (:func:`offers_of`) a ``Consumption`` row of ``Virtual Machines`` priced per ``1 Hour``
  in USD, for a Linux product (``productName`` without "Windows"), in effect on the refresh
  day; a ``meterName`` / ``skuName`` ending in " Spot" is the Spot price, one ending in
  " Low Priority" is the retired low-priority VM (Batch), never Spot, and never used. A
  price is dated by its row's ``effectiveStartDate``. If the API fails, the bundled
  catalog's prices are used where it has them (dated as the bundled file, noted); a
  size/region without any price is left out (noted). A spot price that is not below the
  on-demand one (no discount at the source) is left out, noted.

:func:`build_prices_document` (``broker catalog refresh --provider azure --prices-only``)
needs no Azure account at all: the sizes (GPUs, vCPUs, memory) and zones are the bundled
catalog's (:data:`KNOWN_SIZES` for the sizes it lacks; a region it does not list gets its
own name as the pseudo-zone), the prices are the Retail Prices API's, one query per size
across regions; no ARM call is made and no credential is read.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date
from typing import TYPE_CHECKING, Any, NamedTuple

from azure.core import PipelineClient
from azure.core.exceptions import AzureError, HttpResponseError
from azure.core.pipeline.transport import RequestsTransport
from azure.core.rest import HttpRequest

from providers.azure.adapter import compute_client
from providers.azure.config import AzureConfig
from providers.azure.errors import PROVIDER, classify
from providers.errors import ProviderError, ThrottledError
from providers.refresh import catalog_document, feed_date, listing
from shapes.catalog import Catalog
from shapes.gpus import GPU_MEMORY_GIB
from shapes.model import Provisioning

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

__all__ = [
    "DEFAULT_PRICE_REGIONS",
    "GPU_FAMILIES",
    "KNOWN_SIZES",
    "PRICES_ENDPOINT",
    "Offers",
    "build_catalog_document",
    "build_prices_document",
    "gpu_of_size",
    "offers_of",
    "prices_of",
]

PRICES_ENDPOINT = "https://prices.azure.com/api/retail/prices"
PRICES_API_VERSION = "2023-01-01-preview"
PRICES_ATTEMPTS = 3
MAX_PAGES = 50

# Size name (without "Standard_") -> canonical GPU, first match wins. Azure's SKUs give a
# GPU count but no model, so the family decides. Sources: Azure's size documentation as
# summarised in the bundled catalog's notes (ND96isr H100 v5 = 8 x H100 80 GB SXM; NC H100 v5
# = H100 NVL 94 GB; ND96asr v4 = A100 40 GB, ND96amsr A100 v4 and NC A100 v4 = A100 80 GB PCIe;
# NCas T4 v3 = T4; NC v3 = V100 16 GB; ND v2 and ND v3 = V100 32 GB).
GPU_FAMILIES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), gpu)
    for pattern, gpu in (
        (r"^ND\d+is?r_H200_v5$", "H200"),
        (r"^ND\d+is?r_MI300X_v5$", "MI300X"),
        (r"^ND\d+is?r_H100_v5$", "H100"),
        (r"^NC\d+adi?s_H100_v5$", "H100-NVL"),
        (r"^ND\d+asr_v4$", "A100-40GB"),
        (r"^ND\d+amsr_A100_v4$", "A100-80GB"),
        (r"^NC\d+ads_A100_v4$", "A100-80GB"),
        (r"^NC\d+ads_L40S_v\d+$", "L40S"),
        (r"^NC\d+as_T4_v3$", "T4"),
        (r"^NC\d+r?s_v3$", "V100-16GB"),
        (r"^ND\d+rs_v2$", "V100-32GB"),
        (r"^ND\d+s_v3$", "V100-32GB"),
        (r"^NC\d+ads_A10_v4$", "A10"),
    )
)
# Families never sold by the broker (named so that notes say why, not "unknown").
_SKIP_FAMILIES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), why)
    for pattern, why in (
        (r"^NCC", "confidential VM size"),
        (r"^NV\d+ads_A10_v5$", "fractional A10 (GRID) size"),
        (r"^NV\d+as?_v4$", "AMD GPU"),
        (r"^NC\d+r?(_Promo)?$", "K80 GPU"),
        (r"^NV\d+s?(_v3|_Promo)?$", "M60 GPU"),
        (r"^ND\d+s$", "P40 GPU"),
        (r"^NC\d+s_v2$", "P100 GPU"),
    )
)


# Sizes the broker sells -> (GPUs, vCPUs, memory GiB), from Azure's size documentation: what
# ``--prices-only`` uses for a size the bundled catalog does not list (it has no ARM call).
KNOWN_SIZES: Mapping[str, tuple[int, int, float]] = {
    "Standard_NC4as_T4_v3": (1, 4, 28.0),
    "Standard_NC8as_T4_v3": (1, 8, 56.0),
    "Standard_NC16as_T4_v3": (1, 16, 110.0),
    "Standard_NC64as_T4_v3": (4, 64, 440.0),
    "Standard_NC6s_v3": (1, 6, 112.0),
    "Standard_NC12s_v3": (2, 12, 224.0),
    "Standard_NC24s_v3": (4, 24, 448.0),
    "Standard_NC24rs_v3": (4, 24, 448.0),
    "Standard_NC24ads_A100_v4": (1, 24, 220.0),
    "Standard_NC48ads_A100_v4": (2, 48, 440.0),
    "Standard_NC96ads_A100_v4": (4, 96, 880.0),
    "Standard_NC40ads_H100_v5": (1, 40, 320.0),
    "Standard_NC80adis_H100_v5": (2, 80, 640.0),
    "Standard_ND40rs_v2": (8, 40, 672.0),
    "Standard_ND96asr_v4": (8, 96, 900.0),
    "Standard_ND96amsr_A100_v4": (8, 96, 1800.0),
    "Standard_ND96isr_H100_v5": (8, 96, 1900.0),
    "Standard_ND96isr_H200_v5": (8, 96, 1850.0),
    "Standard_ND96isr_MI300X_v5": (8, 96, 1850.0),
}
# Regions ``--prices-only`` reads when there is no [azure] section to name them (with every
# region of the bundled catalog): US, Europe and Asia regions that sell GPU sizes.
DEFAULT_PRICE_REGIONS: tuple[str, ...] = (
    "eastus",
    "eastus2",
    "southcentralus",
    "westus2",
    "westus3",
    "northeurope",
    "westeurope",
    "swedencentral",
    "uksouth",
    "japaneast",
    "southeastasia",
    "koreacentral",
    "australiaeast",
)


def gpu_of_size(size: str) -> tuple[str | None, str | None]:
    """(canonical GPU, None) for a known GPU size, (None, why not) otherwise."""
    short = size.split("_", 1)[1] if size.lower().startswith("standard_") else size
    for pattern, why in _SKIP_FAMILIES:
        if pattern.search(short):
            return None, why
    for pattern, gpu in GPU_FAMILIES:
        if pattern.search(short):
            return gpu, None
    return None, "GPU family not in the broker's table"


def _text(value: Any) -> str:
    return str(getattr(value, "value", value) or "")


def _capabilities(sku: Any) -> dict[str, str]:
    return {
        _text(c.name).lower(): _text(c.value)
        for c in getattr(sku, "capabilities", None) or ()
        if getattr(c, "name", None)
    }


def _zones(sku: Any, region: str) -> tuple[list[str] | None, str | None]:
    """(offered zones, None) of a SKU in ``region`` after its restrictions, or (None, why)."""
    zones: set[str] = set()
    listed = False
    for info in getattr(sku, "location_info", None) or ():
        if _text(info.location).lower() == region.lower():
            listed = True
            zones |= {str(z) for z in info.zones or ()}
    if not listed and region.lower() not in {str(x).lower() for x in sku.locations or ()}:
        return None, "not offered"
    for restriction in getattr(sku, "restrictions", None) or ():
        kind = _text(restriction.type).lower()
        values = {str(v).lower() for v in restriction.values_property or ()}
        reason = _text(getattr(restriction, "reason_code", "")) or "restricted"
        if kind == "location" and region.lower() in values:
            return None, f"restricted in the region ({reason})"
        if kind == "zone":
            info = getattr(restriction, "restriction_info", None)
            zones -= {str(z) for z in getattr(info, "zones", None) or ()}
            if not zones and region.lower() in values:
                return None, f"restricted in every zone ({reason})"
    if not zones:
        return [region], None  # no availability zones: the region is its own pseudo-zone
    return sorted(zones), None


class _RetailPrices:
    """The Retail Prices API: public, unauthenticated (a plain pipeline without any
    credential policy), abandoned for the rest of the run at its first hard failure."""

    def __init__(
        self, endpoint: str | None, ca_bundle: str | None, sleep: Callable[[float], None]
    ) -> None:
        self.endpoint = endpoint or PRICES_ENDPOINT
        transport = RequestsTransport(connection_verify=ca_bundle or True)
        self._client: PipelineClient[Any, Any] = PipelineClient(
            base_url=self.endpoint, transport=transport
        )
        self._sleep = sleep
        self.error: ProviderError | None = None
        self.calls = 0

    def _get(self, url: str, params: Mapping[str, str] | None) -> dict[str, Any]:
        for attempt in range(PRICES_ATTEMPTS):
            self.calls += 1
            try:
                response = self._client.send_request(HttpRequest("GET", url, params=params))
                if response.status_code != 200:
                    raise HttpResponseError(response=response)
                body: dict[str, Any] = response.json()
                return body
            except (AzureError, ValueError) as exc:
                error = classify(exc)
                if isinstance(error, ThrottledError) and attempt + 1 < PRICES_ATTEMPTS:
                    self._sleep(min(error.retry_after or 2.0**attempt, 30.0))
                    continue
                raise error from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def rows(self, region: str | None, size: str) -> list[dict[str, Any]] | None:
        """Every Consumption row for the size in the region (None: every region), None once
        the API has failed."""
        if self.error is not None:
            return None
        where = f" and armRegionName eq '{region}'" if region is not None else ""
        flt = (
            f"serviceName eq 'Virtual Machines'{where} and armSkuName eq '{size}' and "
            "priceType eq 'Consumption'"
        )
        rows: list[dict[str, Any]] = []
        url: str | None = self.endpoint
        params: dict[str, str] | None = {"api-version": PRICES_API_VERSION, "$filter": flt}
        try:
            for _ in range(MAX_PAGES):
                if not url:
                    break
                page = self._get(url, params)
                rows.extend(page.get("Items") or [])
                url, params = page.get("NextPageLink"), None  # the link carries the query
        except ProviderError as exc:
            self.error = exc
            return None
        return rows


class Offers(NamedTuple):
    """The Linux prices a size has in one region, and the dates they took effect."""

    on_demand: float | None = None
    on_demand_date: date | None = None
    spot: float | None = None
    spot_date: date | None = None


def _meter_kind(row: Mapping[str, Any]) -> str:
    """``spot``, ``low-priority`` or ``regular``, from the meter and SKU names."""
    names = [str(row.get(k, "")).strip().lower() for k in ("meterName", "skuName")]
    if any(n.endswith("low priority") for n in names):
        return "low-priority"
    if any(n.endswith(" spot") for n in names):
        return "spot"
    return "regular"


def offers_of(rows: Iterable[Mapping[str, Any]], today: date | None = None) -> Offers:
    """The on-demand and Spot hourly USD prices of Linux VMs among Retail Prices rows
    (the lowest of each), with their ``effectiveStartDate``. Rows that never count: not
    ``Consumption`` (reservations, DevTest, savings plans), not ``Virtual Machines``,
    Windows products, Low Priority meters, not per ``1 Hour`` or not USD, not in effect
    by ``today``."""
    found: dict[str, list[tuple[float, date | None]]] = {"regular": [], "spot": []}
    for row in rows:
        kind = _meter_kind(row)
        if kind not in found or "windows" in str(row.get("productName", "")).lower():
            continue
        if str(row.get("type", "Consumption")) != "Consumption" or row.get("reservationTerm"):
            continue
        if str(row.get("serviceName", "Virtual Machines")) != "Virtual Machines":
            continue
        if row.get("currencyCode", "USD") != "USD" or row.get("unitOfMeasure") != "1 Hour":
            continue
        since = feed_date(row.get("effectiveStartDate"))
        if today is not None and since is not None and since > today:
            continue  # announced, not yet in effect
        try:
            price = float(row.get("retailPrice", 0))
        except (TypeError, ValueError):
            continue
        if price > 0 and price != float("inf"):
            found[kind].append((price, since))
    regular = min(found["regular"], key=lambda o: o[0], default=(None, None))
    spot = min(found["spot"], key=lambda o: o[0], default=(None, None))
    return Offers(regular[0], regular[1], spot[0], spot[1])


def prices_of(rows: Iterable[Mapping[str, Any]]) -> tuple[float | None, float | None]:
    """(on-demand, spot) of :func:`offers_of`."""
    offers = offers_of(rows)
    return offers.on_demand, offers.spot


class _Collected:
    """What one refresh gathers: the instance types, their dates, and what goes in notes."""

    def __init__(self) -> None:
        self.types: dict[str, dict[str, Any]] = {}
        self.dates: dict[tuple[str, str], date] = {}
        self.spot_dates: list[date] = []
        self.skipped: dict[str, set[str]] = {}
        self.dropped: list[str] = []  # "size/region (why)"
        self.fallback: list[str] = []
        self.unpriced: list[str] = []
        self.spot_only: list[str] = []
        self.no_discount: list[str] = []

    def add(
        self,
        size: str,
        region: str,
        spec: Mapping[str, Any],
        zones: Sequence[str],
        offers: Offers,
    ) -> None:
        """One size in one region, if it has a price (else it is noted as unpriced)."""
        where = f"{size}/{region}"
        on_demand, spot = offers.on_demand, offers.spot
        if on_demand is not None and spot is not None and spot >= on_demand:
            self.no_discount.append(where)
            spot = None
        if on_demand is None and spot is None:
            self.unpriced.append(where)
            return
        entry: dict[str, Any] = {"zones": list(zones)}
        if on_demand is not None:
            entry["on_demand"] = round(on_demand, 6)
            if offers.on_demand_date is not None:
                self.dates[(size, region)] = offers.on_demand_date
        else:
            self.spot_only.append(where)
        if spot is not None:
            entry["spot"] = round(spot, 6)
        self.types.setdefault(size, {**spec, "regions": {}})["regions"][region] = entry


def build_catalog_document(
    config: AzureConfig,
    *,
    bundled: Catalog | None,
    today: date,
    credential: TokenCredential | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """The Azure catalog document (``shapes/data/azure.json`` format) for ``config.regions``.

    Resource SKU errors raise a ProviderError; a failing Retail Prices API falls back to
    ``bundled`` (noted)."""
    compute = compute_client(config, credential, polling_interval=0)
    prices = _RetailPrices(config.prices_endpoint, config.ca_bundle, sleep)
    got = _Collected()
    bundled_date = _bundled_date(bundled)

    for region in config.regions:
        try:
            skus = list(compute.resource_skus.list(filter=f"location eq '{region}'"))
        except AzureError as exc:
            raise classify(exc) from exc
        for sku in skus:
            if _text(sku.resource_type) != "virtualMachines" or not sku.name:
                continue
            caps = _capabilities(sku)
            try:
                gpus = float(caps.get("gpus", "0") or 0)
                vcpus = int(caps.get("vcpus", "0") or 0)
                memory = float(caps.get("memorygb", "0") or 0)
            except ValueError:
                got.skipped.setdefault("unreadable capabilities", set()).add(sku.name)
                continue
            if gpus <= 0:
                continue
            size = str(sku.name)
            gpu, why = gpu_of_size(size)
            if gpu is not None and gpus != int(gpus):
                gpu, why = None, "fractional GPU"
            if gpu is None or vcpus < 1 or memory <= 0:
                got.skipped.setdefault(why or "incomplete data", set()).add(size)
                continue
            zones, why = _zones(sku, region)
            if zones is None:
                got.dropped.append(f"{size}/{region} ({why})")
                continue
            rows = prices.rows(region, size)
            offers = offers_of(rows, today) if rows is not None else Offers()
            if rows is None and bundled is not None:
                offers = _bundled_prices(bundled, region, size, bundled_date)
                if offers.on_demand is not None or offers.spot is not None:
                    got.fallback.append(f"{size}/{region}")
            if caps.get("lowprioritycapable", "true").lower() == "false":
                offers = offers._replace(spot=None)
            spec = _spec(gpu, int(gpus), vcpus, memory)
            got.add(size, region, spec, zones, offers)

    regions = ", ".join(config.regions)
    price_source = (
        f"Azure Compute Resource SKUs (GPU VM sizes, zones and restrictions) in {regions}; "
        "pay-as-you-go Linux and Spot prices per region from the Azure Retail Prices API "
        f"(api-version {PRICES_API_VERSION}, priceType Consumption), read {today.isoformat()}"
    )
    if got.fallback:
        price_source += "; bundled catalog prices where the Retail Prices API failed"
    intro = (
        f"Read live from Azure in {regions}. Zones are the subscription's logical zones "
        "after SKU restrictions; a region without zones carries its own name as a single "
        "pseudo-zone (a regional VM)."
    )
    return catalog_document(
        PROVIDER,
        today=today,
        price_source=price_source,
        notes=_notes(intro, prices, got),
        instance_types=got.types,
        dates=got.dates,
    )


def build_prices_document(
    *,
    bundled: Catalog,
    today: date,
    regions: Sequence[str] | None = None,
    endpoint: str | None = None,
    ca_bundle: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """The Azure catalog document from the public Retail Prices API alone: no Azure account,
    no credential, no ARM call (``broker catalog refresh --provider azure --prices-only``).

    The sizes are the bundled catalog's Azure sizes and :data:`KNOWN_SIZES`, each asked for
    once across regions; ``regions`` (None: :data:`DEFAULT_PRICE_REGIONS` and every region
    of the bundled catalog) are kept. Zones are the bundled catalog's for a (size, region)
    it lists, else the region itself (the pseudo-zone of a regional VM). A failing API
    raises its ProviderError: there is nothing to fall back to."""
    prices = _RetailPrices(endpoint, ca_bundle, sleep)
    known = _bundled_sizes(bundled)
    for size, (gpus, vcpus, memory) in KNOWN_SIZES.items():
        gpu, _ = gpu_of_size(size)
        if size not in known and gpu is not None:
            known[size] = (_spec(gpu, gpus, vcpus, memory), {})
    wanted = (
        list(regions)
        if regions
        else sorted(
            set(DEFAULT_PRICE_REGIONS) | {r for _, (_, zones) in known.items() for r in zones}
        )
    )
    got = _Collected()
    for size, (spec, bundled_zones) in sorted(known.items()):
        rows = prices.rows(None, size)
        if rows is None:
            assert prices.error is not None
            raise prices.error
        by_region: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            if str(row.get("armSkuName", size)) == size:
                by_region.setdefault(str(row.get("armRegionName", "")), []).append(row)
        for region in wanted:
            offers = offers_of(by_region.get(region, ()), today)
            if offers.on_demand is None and offers.spot is None:
                continue  # not sold there: nothing to note
            got.add(size, region, spec, bundled_zones.get(region) or [region], offers)

    listed = ", ".join(wanted)
    price_source = (
        "pay-as-you-go Linux and Spot prices per region from the Azure Retail Prices API "
        f"(api-version {PRICES_API_VERSION}, priceType Consumption, no account), read "
        f"{today.isoformat()}, for {listed}; sizes and zones from the bundled catalog"
    )
    intro = (
        f"Prices only (--prices-only), read from the public Retail Prices API for {listed}: "
        "no Azure account was used, so zones are the bundled catalog's where it lists the "
        "size in the region, else the region itself as a single pseudo-zone (a regional "
        "VM), and whether a size is offered to a subscription is not known."
    )
    return catalog_document(
        PROVIDER,
        today=today,
        price_source=price_source,
        notes=_notes(intro, prices, got),
        instance_types=got.types,
        dates=got.dates,
    )


def _spec(gpu: str, gpus: int, vcpus: int, memory: float) -> dict[str, Any]:
    return {
        "gpu": gpu,
        "gpus": gpus,
        "gpu_memory_gib": GPU_MEMORY_GIB[gpu],
        "vcpus": vcpus,
        "memory_gib": round(memory, 3),
        "regions": {},
    }


def _bundled_sizes(
    bundled: Catalog,
) -> dict[str, tuple[dict[str, Any], dict[str, list[str]]]]:
    """size -> (its spec, region -> zones) for every Azure size of the bundled catalog."""
    out: dict[str, tuple[dict[str, Any], dict[str, list[str]]]] = {}
    for shape in bundled.shapes:
        if shape.provider != PROVIDER:
            continue
        _, zones = out.setdefault(
            shape.instance_type,
            (_spec(shape.gpu, shape.gpus_per_node, shape.vcpus, shape.memory_gib), {}),
        )
        zones[shape.region] = list(shape.zones)
    return out


def _bundled_date(bundled: Catalog | None) -> date | None:
    for src in bundled.sources if bundled is not None else ():
        if src.provider == PROVIDER:
            return src.prices_as_of or src.retrieved
    return None


def _bundled_prices(bundled: Catalog, region: str, size: str, when: date | None) -> Offers:
    found = []
    for market in (Provisioning.ON_DEMAND, Provisioning.SPOT):
        shape = bundled.get(f"{PROVIDER}:{region}:{size}:{market.value}")
        found.append(shape.price_per_node_hour if shape is not None else None)
    return Offers(found[0], when if found[0] is not None else None, found[1], None)


def _notes(intro: str, prices: _RetailPrices, got: _Collected) -> str:
    parts = [
        intro,
        "GPU models come from an explicit table of size families (Azure reports only a GPU "
        "count). Prices are the Linux Consumption rows; Spot is the '<size> Spot' meter, one "
        "price per region (Low Priority meters are not Spot and are not used). prices_as_of "
        "is the rows' effectiveStartDate; spot_as_of the day of the refresh.",
    ]
    if prices.error is not None:
        err = prices.error
        parts.append(
            f"The Retail Prices API failed ({err.code}: {err.message}); prices of "
            f"{len(got.fallback)} size/region pair(s) were taken from the bundled catalog."
        )
    if got.no_discount:
        parts.append(
            "Spot left out where the Spot meter is not below on-demand (no discount at the "
            f"source): {listing(got.no_discount)}."
        )
    if got.spot_only:
        parts.append(f"Spot only (no on-demand price): {listing(got.spot_only)}.")
    if got.unpriced:
        parts.append(f"Left out, no price: {listing(got.unpriced)}.")
    if got.dropped:
        parts.append(f"Left out, restricted for this subscription: {listing(got.dropped)}.")
    if got.skipped:
        listed = "; ".join(
            f"{why}: {listing(sorted(got.skipped[why]))}" for why in sorted(got.skipped)
        )
        parts.append(f"GPU sizes skipped (the broker sells whole, known GPUs): {listed}.")
    return " ".join(parts)

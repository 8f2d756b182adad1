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
  priceType eq 'Consumption'``, following ``NextPageLink``. Linux only (``productName``
  without "Windows"); spot rows have "Spot" in ``meterName``; "Low Priority" rows are the
  retired low-priority VMs and are skipped. If the API fails, the bundled catalog's prices
  are used where it has them (noted); a size/region without any price is left out (noted).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date
from typing import TYPE_CHECKING, Any

from azure.core import PipelineClient
from azure.core.exceptions import AzureError, HttpResponseError
from azure.core.pipeline.transport import RequestsTransport
from azure.core.rest import HttpRequest

from providers.azure.adapter import compute_client
from providers.azure.config import AzureConfig
from providers.azure.errors import PROVIDER, classify
from providers.errors import ProviderError, ThrottledError
from providers.refresh import catalog_document, listing
from shapes.catalog import Catalog
from shapes.gpus import GPU_MEMORY_GIB
from shapes.model import Provisioning

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

__all__ = ["GPU_FAMILIES", "PRICES_ENDPOINT", "build_catalog_document", "gpu_of_size"]

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

    def __init__(self, config: AzureConfig, sleep: Callable[[float], None]) -> None:
        self.endpoint = config.prices_endpoint or PRICES_ENDPOINT
        transport = RequestsTransport(connection_verify=config.ca_bundle or True)
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

    def rows(self, region: str, size: str) -> list[dict[str, Any]] | None:
        """Every Consumption row for (region, size), None once the API has failed."""
        if self.error is not None:
            return None
        flt = (
            f"serviceName eq 'Virtual Machines' and armRegionName eq '{region}' and "
            f"armSkuName eq '{size}' and priceType eq 'Consumption'"
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


def prices_of(rows: Iterable[Mapping[str, Any]]) -> tuple[float | None, float | None]:
    """(on-demand, spot) hourly USD prices of Linux VMs among Retail Prices rows."""
    on_demand: list[float] = []
    spot: list[float] = []
    for row in rows:
        product = str(row.get("productName", ""))
        meter = f"{row.get('meterName', '')} {row.get('skuName', '')}"
        if "windows" in product.lower() or "low priority" in meter.lower():
            continue
        if row.get("currencyCode", "USD") != "USD" or row.get("unitOfMeasure") != "1 Hour":
            continue
        if str(row.get("type", "Consumption")) != "Consumption":
            continue
        try:
            price = float(row.get("retailPrice", 0))
        except (TypeError, ValueError):
            continue
        if price > 0:
            (spot if "spot" in meter.lower() else on_demand).append(price)
    return (min(on_demand) if on_demand else None, min(spot) if spot else None)


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
    prices = _RetailPrices(config, sleep)
    types: dict[str, dict[str, Any]] = {}
    skipped: dict[str, set[str]] = {}
    dropped: list[str] = []  # "size/region: why"
    fallback: list[str] = []
    unpriced: list[str] = []
    spot_only: list[str] = []

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
                skipped.setdefault("unreadable capabilities", set()).add(sku.name)
                continue
            if gpus <= 0:
                continue
            size = str(sku.name)
            gpu, why = gpu_of_size(size)
            if gpu is not None and gpus != int(gpus):
                gpu, why = None, "fractional GPU"
            if gpu is None or vcpus < 1 or memory <= 0:
                skipped.setdefault(why or "incomplete data", set()).add(size)
                continue
            zones, why = _zones(sku, region)
            where = f"{size}/{region}"
            if zones is None:
                dropped.append(f"{where} ({why})")
                continue
            entry: dict[str, Any] = {"zones": zones}
            rows = prices.rows(region, size)
            on_demand, spot = prices_of(rows) if rows is not None else (None, None)
            if rows is None and bundled is not None:
                on_demand, spot = _bundled_prices(bundled, region, size)
                if on_demand is not None or spot is not None:
                    fallback.append(where)
            if caps.get("lowprioritycapable", "true").lower() == "false":
                spot = None
            if on_demand is not None:
                entry["on_demand"] = round(on_demand, 6)
            if spot is not None:
                entry["spot"] = round(spot, 6)
            if on_demand is None and spot is None:
                unpriced.append(where)
                continue
            if on_demand is None:
                spot_only.append(where)
            spec = types.setdefault(
                size,
                {
                    "gpu": gpu,
                    "gpus": int(gpus),
                    "gpu_memory_gib": GPU_MEMORY_GIB[gpu],
                    "vcpus": vcpus,
                    "memory_gib": round(memory, 3),
                    "regions": {},
                },
            )
            spec["regions"][region] = entry

    regions = ", ".join(config.regions)
    price_source = (
        f"Azure Compute Resource SKUs (GPU VM sizes, zones and restrictions) in {regions}; "
        "pay-as-you-go Linux and Spot prices per region from the Azure Retail Prices API "
        f"(api-version {PRICES_API_VERSION}, priceType Consumption), read {today.isoformat()}"
    )
    if fallback:
        price_source += "; bundled catalog prices where the Retail Prices API failed"
    return catalog_document(
        PROVIDER,
        today=today,
        price_source=price_source,
        notes=_notes(config, prices, skipped, dropped, fallback, unpriced, spot_only),
        instance_types=types,
    )


def _bundled_prices(bundled: Catalog, region: str, size: str) -> tuple[float | None, float | None]:
    found = []
    for market in (Provisioning.ON_DEMAND, Provisioning.SPOT):
        shape = bundled.get(f"{PROVIDER}:{region}:{size}:{market.value}")
        found.append(shape.price_per_node_hour if shape is not None else None)
    return found[0], found[1]


def _notes(
    config: AzureConfig,
    prices: _RetailPrices,
    skipped: Mapping[str, set[str]],
    dropped: Sequence[str],
    fallback: Sequence[str],
    unpriced: Sequence[str],
    spot_only: Sequence[str],
) -> str:
    parts = [
        f"Read live from Azure in {', '.join(config.regions)}. Zones are the subscription's "
        "logical zones after SKU restrictions; a region without zones carries its own name as "
        "a single pseudo-zone (a regional VM). GPU models come from an explicit table of size "
        "families (Azure reports only a GPU count). Spot is one price per region."
    ]
    if prices.error is not None:
        err = prices.error
        parts.append(
            f"The Retail Prices API failed ({err.code}: {err.message}); prices of "
            f"{len(fallback)} size/region pair(s) were taken from the bundled catalog."
        )
    if spot_only:
        parts.append(f"Spot only (no on-demand price): {listing(spot_only)}.")
    if unpriced:
        parts.append(f"Left out, no price: {listing(unpriced)}.")
    if dropped:
        parts.append(f"Left out, restricted for this subscription: {listing(dropped)}.")
    if skipped:
        listed = "; ".join(f"{why}: {listing(sorted(skipped[why]))}" for why in sorted(skipped))
        parts.append(f"GPU sizes skipped (the broker sells whole, known GPUs): {listed}.")
    return " ".join(parts)

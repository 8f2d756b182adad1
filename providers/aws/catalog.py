"""The live AWS catalog: GPU instance types, their zones and prices, from AWS's own APIs.

:func:`build_catalog_document` writes a document in exactly the format of
``shapes/data/aws.json`` (``broker catalog refresh --provider aws`` installs it in the local
catalog directory, where it replaces the bundled file):

- instance types: EC2 ``DescribeInstanceTypes`` (paginated), GPU types chosen in Python on
  ``GpuInfo`` (EC2 has no GPU filter); the GPU named with :func:`shapes.gpus.normalize_gpu`
  (name + memory, which settles A100 40/80 GB). Unknown GPUs and fractional GPUs are
  skipped and listed in ``notes``;
- zones: ``DescribeInstanceTypeOfferings(LocationType="availability-zone-id")``: AZ *ids*,
  the same in every account;
- on-demand: the Price List API (``pricing`` in us-east-1, ``GetProducts`` for AmazonEC2
  with ``marketoption`` OnDemand, Linux, shared tenancy, no pre-installed software,
  ``capacitystatus`` Used); each ``PriceList`` item is a JSON *string*. Every item is checked
  again here (:func:`on_demand_offer`): only ``BoxUsage`` products of operation
  ``RunInstances`` and their ``OnDemand`` terms count, never a Capacity Block
  (``marketoption`` CapacityBlock, ``RunInstances:CB``), a reservation (``Reserved`` terms,
  ``capacitystatus`` UnusedCapacityReservation / AllocatedCapacityReservation) or a dedicated
  or Windows product. The price's date is the offer's ``publicationDate`` (else the term's
  ``effectiveDate``). When the API fails (no permission, no endpoint, or an emulator without
  it, like moto) the bundled catalog's on-demand price is used, dated as the bundled file,
  and ``notes`` says so;
- spot: ``DescribeSpotPriceHistory(ProductDescriptions=["Linux/UNIX"], StartTime=now)``: the
  price in effect now, per AZ id (the newest sample of each AZ); ``spot_as_of`` is ``now``.

A (type, region) without any price is left out; one without an on-demand price is spot-only.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any

import boto3  # type: ignore[import-untyped]

from providers.aws.adapter import client_config
from providers.aws.config import AwsConfig
from providers.aws.errors import BOTO_ERRORS, PROVIDER, chunks, classify, pages
from providers.errors import ProviderError, ThrottledError
from providers.refresh import catalog_document, feed_date, listing
from shapes.catalog import Catalog
from shapes.gpus import GPU_MEMORY_GIB, normalize_gpu
from shapes.model import Provisioning

__all__ = ["PRICING_REGION", "build_catalog_document", "on_demand_offer", "on_demand_price"]

PRICING_REGION = (
    "us-east-1"  # the Price List API has endpoints in us-east-1, eu-central-1, ap-south-1
)
CHUNK = 50  # instance types per offerings / spot-history call
PRICING_ATTEMPTS = 3

ClientFactory = Callable[[str, str], Any]


def _client_factory(session_or_factory: Any) -> ClientFactory:
    """(service, region) -> client, from a boto3 Session, a factory, or None (default chain)."""
    if session_or_factory is not None and not hasattr(session_or_factory, "client"):
        given: ClientFactory = session_or_factory

        def wrapped(service: str, region: str) -> Any:
            try:
                return given(service, region)
            except BOTO_ERRORS as exc:
                raise classify(exc) from exc

        return wrapped
    try:
        session = session_or_factory or boto3.session.Session()
    except BOTO_ERRORS as exc:
        raise classify(exc) from exc

    def make(service: str, region: str) -> Any:
        try:
            return session.client(service, region_name=region, config=client_config())
        except BOTO_ERRORS as exc:
            raise classify(exc) from exc

    return make


# The attributes a plain on-demand Linux instance-hour product has; a product with another
# value (or, for the first five, without the attribute) is not one.
_ON_DEMAND_ATTRIBUTES = {
    "operatingSystem": "Linux",
    "tenancy": "Shared",
    "preInstalledSw": "NA",
    "capacitystatus": "Used",
    "operation": "RunInstances",
    "marketoption": "OnDemand",  # absent in older offer files: then not checked
}
_OPTIONAL_ATTRIBUTES = frozenset({"marketoption"})
_LINUX_SPOT = ("Linux/UNIX", "Linux/UNIX (Amazon VPC)")  # spot history product descriptions
_NOT_ON_DEMAND = ("capacity block", "reservation", "reserved", "dedicated")


def on_demand_offer(
    price_list: Iterable[str | Mapping[str, Any]],
) -> tuple[float, date | None] | None:
    """The hourly USD on-demand price in a GetProducts ``PriceList`` (JSON strings or
    decoded) and its date (the offer's ``publicationDate``, else the term's
    ``effectiveDate``); None if no product in it is a plain on-demand Linux instance hour.

    A product counts only if its attributes are those of :data:`_ON_DEMAND_ATTRIBUTES`, its
    ``usagetype`` is a ``BoxUsage`` one, and only its ``OnDemand`` terms are read: Capacity
    Block, reserved, unused-reservation, dedicated and Windows rows never do. Among several
    products that count, the lowest positive price."""
    found: list[tuple[float, date | None]] = []
    for item in price_list:
        doc = json.loads(item) if isinstance(item, str) else item
        attributes = doc.get("product", {}).get("attributes", {})
        if not _is_plain_on_demand(attributes):
            continue
        published = feed_date(doc.get("publicationDate"))
        for term in doc.get("terms", {}).get("OnDemand", {}).values():
            when = published or feed_date(term.get("effectiveDate"))
            for dimension in term.get("priceDimensions", {}).values():
                if dimension.get("unit") not in ("Hrs", "Hours"):
                    continue
                text = str(dimension.get("description", "")).lower()
                if any(word in text for word in _NOT_ON_DEMAND):
                    continue
                try:
                    usd = float(dimension.get("pricePerUnit", {}).get("USD", "0"))
                except (TypeError, ValueError):
                    continue
                if usd > 0 and math.isfinite(usd):
                    found.append((usd, when))
    if not found:
        return None
    return min(found, key=lambda offer: offer[0])


def _is_plain_on_demand(attributes: Mapping[str, Any]) -> bool:
    for key, wanted in _ON_DEMAND_ATTRIBUTES.items():
        value = attributes.get(key)
        if value is None and key in _OPTIONAL_ATTRIBUTES:
            continue
        if value != wanted:
            return False
    usage = str(attributes.get("usagetype", ""))
    return "BoxUsage" in usage and not any(w in usage for w in ("Reservation", "Unused"))


def on_demand_price(price_list: Iterable[str | Mapping[str, Any]]) -> float | None:
    """The price of :func:`on_demand_offer` alone."""
    offer = on_demand_offer(price_list)
    return None if offer is None else offer[0]


class _Pricing:
    """The Price List API, abandoned for the rest of the run at its first failure."""

    def __init__(self, factory: ClientFactory, sleep: Callable[[float], None]) -> None:
        self._factory = factory
        self._sleep = sleep
        self._client: Any = None
        self.error: ProviderError | None = None
        self.calls = 0

    def price(self, instance_type: str, region: str) -> tuple[float, date | None] | None:
        if self.error is not None:
            return None
        filters = [
            {"Type": "TERM_MATCH", "Field": field, "Value": value}
            for field, value in (
                ("instanceType", instance_type),
                ("regionCode", region),
                ("marketoption", "OnDemand"),
                ("operatingSystem", "Linux"),
                ("tenancy", "Shared"),
                ("preInstalledSw", "NA"),
                ("capacitystatus", "Used"),
            )
        ]
        for attempt in range(PRICING_ATTEMPTS):
            try:
                if self._client is None:
                    self._client = self._factory("pricing", PRICING_REGION)
                self.calls += 1
                found = pages(
                    self._client, "get_products", ServiceCode="AmazonEC2", Filters=filters
                )
            except ProviderError as exc:
                if isinstance(exc, ThrottledError) and attempt + 1 < PRICING_ATTEMPTS:
                    self._sleep(2.0**attempt)
                    continue
                self.error = exc
                return None
            return on_demand_offer(item for page in found for item in page.get("PriceList", []))
        return None  # pragma: no cover - the loop always returns


def _gpu_spec(info: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """(spec, None) for a usable GPU type, (None, why not) otherwise."""
    gpus = info["GpuInfo"].get("Gpus") or []
    if not gpus:
        return None, "no GPU listed"
    first = gpus[0]
    name = str(first.get("Name", "?"))
    if any(float(g.get("GpuPartitionSize", 1.0) or 1.0) < 1.0 for g in gpus):
        return None, f"fractional {name} GPU"
    if len({g.get("Name") for g in gpus}) > 1:
        return None, "mixed GPUs"
    memory_mib = float(first.get("MemoryInfo", {}).get("SizeInMiB", 0) or 0)
    try:
        gpu = normalize_gpu(name, memory_mib / 1024 if memory_mib else None)
    except ValueError:
        return None, f"unknown GPU {name}"
    count = sum(int(g.get("Count", 0)) for g in gpus)
    vcpus = int(info.get("VCpuInfo", {}).get("DefaultVCpus", 0))
    memory = float(info.get("MemoryInfo", {}).get("SizeInMiB", 0)) / 1024
    if count < 1 or vcpus < 1 or memory <= 0:
        return None, f"incomplete data for {name}"
    spec = {
        "gpu": gpu,
        "gpus": count,
        "gpu_memory_gib": GPU_MEMORY_GIB[gpu],
        "vcpus": vcpus,
        "memory_gib": round(memory, 3),
        "regions": {},
    }
    return spec, None


def build_catalog_document(
    session_or_factory: Any,
    config: AwsConfig,
    *,
    bundled: Catalog | None,
    today: date,
    now: datetime | None = None,
    sleep: Callable[[float], None] | None = None,
) -> dict[str, Any]:
    """The AWS catalog document (``shapes/data/aws.json`` format) for ``config.regions``.

    ``session_or_factory``: a boto3 Session, a ``(service, region) -> client`` factory, or
    None for boto3's default session. EC2 errors raise a ProviderError; a failing Price List
    API falls back to ``bundled`` (noted).
    """
    factory = _client_factory(session_or_factory)
    when = now or datetime.now(UTC)
    pricing = _Pricing(factory, sleep or time.sleep)
    types: dict[str, dict[str, Any]] = {}
    skipped: dict[str, set[str]] = {}
    fallback: list[str] = []  # "type/region" priced from the bundled catalog
    unpriced: list[str] = []  # "type/region" with no price at all (left out)
    spot_only: list[str] = []
    no_discount: list[str] = []  # "type/region (zones)" whose spot is not below on-demand
    dates: dict[tuple[str, str], date] = {}  # (type, region) -> its on-demand price's date
    bundled_date = _bundled_date(bundled)

    for region in config.regions:
        ec2 = factory("ec2", region)
        gpu_types: dict[str, dict[str, Any]] = {}
        spot_capable: set[str] = set()
        for page in pages(ec2, "describe_instance_types"):
            for info in page.get("InstanceTypes", []):
                if not info.get("GpuInfo"):
                    continue
                name = str(info["InstanceType"])
                spec, why = _gpu_spec(info)
                if spec is None:
                    skipped.setdefault(why or "?", set()).add(name)
                    continue
                gpu_types[name] = spec
                if "spot" in info.get("SupportedUsageClasses", []):
                    spot_capable.add(name)
        names = sorted(gpu_types)

        zones: dict[str, set[str]] = {}
        for chunk in chunks(names, CHUNK):
            for page in pages(
                ec2,
                "describe_instance_type_offerings",
                LocationType="availability-zone-id",
                Filters=[{"Name": "instance-type", "Values": chunk}],
            ):
                for offer in page.get("InstanceTypeOfferings", []):
                    zones.setdefault(offer["InstanceType"], set()).add(offer["Location"])

        spot = _spot_prices(ec2, sorted(spot_capable & set(zones)), when)

        for name in names:
            offered = sorted(zones.get(name, ()))
            if not offered:
                continue
            where = f"{name}/{region}"
            entry: dict[str, Any] = {"zones": offered}
            offer = pricing.price(name, region)
            price, dated = offer if offer is not None else (None, None)
            if price is None and bundled is not None:
                old = bundled.get(f"{PROVIDER}:{region}:{name}:{Provisioning.ON_DEMAND.value}")
                if old is not None:
                    price, dated = old.price_per_node_hour, bundled_date
                    fallback.append(where)
            if price is not None:
                entry["on_demand"] = round(price, 6)
                if dated is not None:
                    dates[(name, region)] = dated
            zone_prices = {z: p for z, p in sorted(spot.get(name, {}).items()) if z in offered}
            capped = sorted(z for z, p in zone_prices.items() if price is not None and p >= price)
            if capped:  # the market at (or over) the on-demand price: no spot discount there
                no_discount.append(f"{where} ({', '.join(capped)})")
                zone_prices = {z: p for z, p in zone_prices.items() if z not in capped}
            if zone_prices:
                entry["spot"] = zone_prices
            if "on_demand" not in entry and "spot" not in entry:
                unpriced.append(where)
                continue
            if "on_demand" not in entry:
                spot_only.append(where)
            spec = types.setdefault(name, {**gpu_types[name], "regions": {}})
            spec["regions"][region] = entry

    regions = ", ".join(config.regions)
    price_source = (
        f"AWS EC2 DescribeInstanceTypes, DescribeInstanceTypeOfferings (AZ ids) and "
        f"DescribeSpotPriceHistory (Linux/UNIX, price in effect at "
        f"{when.strftime('%Y-%m-%dT%H:%MZ')}) in {regions}; on-demand from the AWS Price List "
        f"API (GetProducts AmazonEC2, Linux, shared tenancy, {PRICING_REGION} endpoint)"
    )
    if fallback:
        price_source += "; bundled catalog on-demand prices where the Price List API failed"
    notes = _notes(config, bundled, pricing, skipped, fallback, unpriced, spot_only)
    if no_discount:
        notes += (
            " Spot left out in the zones where it is not below on-demand (the market at the "
            f"on-demand cap): {listing(no_discount)}."
        )
    return catalog_document(
        PROVIDER,
        today=today,
        price_source=price_source,
        notes=notes,
        instance_types=types,
        dates=dates,
        spot_as_of=when.date(),
    )


def _spot_prices(ec2: Any, names: Sequence[str], when: datetime) -> dict[str, dict[str, float]]:
    """type -> AZ id -> the spot price in effect at ``when`` (the newest entry per AZ)."""
    if not names:
        return {}
    zone_ids: dict[str, str] | None = None
    newest: dict[tuple[str, str], tuple[datetime, float]] = {}
    for chunk in chunks(names, CHUNK):
        for page in pages(
            ec2,
            "describe_spot_price_history",
            InstanceTypes=chunk,
            ProductDescriptions=["Linux/UNIX"],
            StartTime=when,
        ):
            for row in page.get("SpotPriceHistory", []):
                if row.get("ProductDescription", "Linux/UNIX") not in _LINUX_SPOT:
                    continue
                zone = row.get("AvailabilityZoneId")
                if not zone:
                    if zone_ids is None:
                        try:
                            found = ec2.describe_availability_zones()
                        except BOTO_ERRORS as exc:
                            raise classify(exc) from exc
                        zone_ids = {
                            z["ZoneName"]: z["ZoneId"] for z in found.get("AvailabilityZones", [])
                        }
                    zone = zone_ids.get(str(row.get("AvailabilityZone")))
                if not zone:
                    continue
                try:
                    price = float(row["SpotPrice"])
                except (KeyError, TypeError, ValueError):
                    continue
                stamp = row.get("Timestamp") or when
                key = (str(row["InstanceType"]), str(zone))
                if price > 0 and (key not in newest or stamp > newest[key][0]):
                    newest[key] = (stamp, price)
    out: dict[str, dict[str, float]] = {}
    for (name, zone), (_, price) in newest.items():
        out.setdefault(name, {})[zone] = price
    return out


def _notes(
    config: AwsConfig,
    bundled: Catalog | None,
    pricing: _Pricing,
    skipped: Mapping[str, set[str]],
    fallback: Sequence[str],
    unpriced: Sequence[str],
    spot_only: Sequence[str],
) -> str:
    parts = [
        f"Read live from AWS in {', '.join(config.regions)}. Zones are AZ ids. "
        "gpu_memory_gib is the canonical memory of the GPU model (EC2 reports e.g. the A10G "
        "as 22888 MiB). On-demand prices are the Price List API's plain on-demand Linux rows "
        "(no Capacity Block, reserved or unused-reservation row), dated by the offer's "
        "publicationDate. Spot prices are per AZ id, the Linux/UNIX price in effect when "
        "read (spot_as_of)."
    ]
    if pricing.error is not None:
        err = pricing.error
        parts.append(
            f"The AWS Price List API failed ({err.code}: {err.message}), so on-demand prices "
            f"of {len(fallback)} type/region pair(s) were taken from the bundled catalog"
            + (f" ({_bundled_source(bundled)})" if bundled is not None else "")
            + "; pairs the bundled catalog does not price have no on-demand price."
        )
    elif fallback:
        parts.append(
            f"The Price List API had no product for {len(fallback)} type/region pair(s); "
            f"their on-demand price is the bundled catalog's: {', '.join(sorted(fallback))}."
        )
    if spot_only:
        parts.append(f"Spot only (no on-demand price): {listing(spot_only)}.")
    if unpriced:
        parts.append(f"Left out, no price at all: {listing(unpriced)}.")
    if skipped:
        listed = "; ".join(f"{why}: {listing(sorted(skipped[why]))}" for why in sorted(skipped))
        parts.append(f"GPU instance types skipped (the broker sells whole, known GPUs): {listed}.")
    return " ".join(parts)


def _bundled_date(bundled: Catalog | None) -> date | None:
    """The date of the bundled AWS prices (a fallback price carries it), or when the file
    was written if its prices are undated."""
    for src in bundled.sources if bundled is not None else ():
        if src.provider == PROVIDER:
            return src.prices_as_of or src.retrieved
    return None


def _bundled_source(bundled: Catalog) -> str:
    sources = [s for s in bundled.sources if s.provider == PROVIDER]
    if not sources:
        return "no AWS source in it"
    src = sources[0]
    when = src.prices_as_of.isoformat() if src.prices_as_of else "date unknown"
    return f"prices as of {when}, retrieved {src.retrieved or 'unknown'}"

"""Sanity checks on a provider's price file: the faults a wrong source produces.

One function, :func:`check_document`, takes one provider file's JSON (the format of
``shapes/data/<provider>.json``: ``instance_types`` -> type -> ``regions`` -> region ->
``on_demand`` and ``spot``, spot either one number or ``{zone: price}``) and returns every
problem it finds, each naming the row (``provider/type/region[/zone]``). The build
(:mod:`shapes.build.build`) refuses to write a file with any problem, the live refresh
(``broker catalog refresh``) refuses to replace a file with one, the loader warns about a
refreshed file that has one, and ``broker catalog check`` prints them.

The rules, and why their bounds are what they are (measured on the bundled data, built
from the clouds' published list prices; ``tests/shapes/test_sanity.py`` runs every rule
over it and over a bad row it must catch):

``price``
    Every price is a number, finite and > 0.
``dated``
    The file says when its prices were true: ``prices_as_of`` is an ISO date (also a
    region's own ``prices_as_of`` where it has one), and ``spot_as_of`` is one wherever
    the file has a dated spot price. Spot is a sampled market price: its date is its own.
    A region entry may list the markets whose price date is unknown (``"undated":
    ["spot"]``: prices carried from an undated catalog); nothing else is undated.
``spot-below-on-demand``
    A spot price (every zone's) is strictly below the on-demand price of the same shape
    (type and region). Spot at or above on-demand is what a feed gives when it matched the
    wrong meter (Azure's Low Priority, GCP's DWS SKUs) or lost the spot quote.
``per-gpu-ratio``
    Within one instance family, GPU and region, the on-demand price per GPU of each
    multi-GPU size is within [:data:`PER_GPU_RATIO_MIN`, :data:`PER_GPU_RATIO_MAX`] times
    that of the family's cheapest single-GPU size. Bigger sizes carry more CPU, memory and
    network per GPU, so they cost the same per GPU (GCP a2/a3, Azure NC A100 v4) or more:
    up to 2.07x in the published prices (AWS g6.48xlarge, Azure NC64as_T4_v3). Cheaper
    per GPU than the single-GPU size is not seen in any cloud's list prices; Azure NC A100
    v4's multi-GPU sizes priced 20 % under the single-GPU size per GPU would fail it. Spot
    is a market price per size and is not held to it.
``cross-region``
    The on-demand price of one instance type is at most :data:`REGION_RATIO_MAX` times
    its cheapest region's. Regional list prices of one type differ by up to about 1.5x
    in the regions the catalog covers (AWS and Azure Asia/Europe against US East); a 2x
    gap is a wrong SKU, as GCP's a3-highgpu-8g at half its price in us-central1 was. Spot
    varies by region far more than that (a market) and is not held to it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

#: Lowest allowed ratio of a multi-GPU size's per-GPU price to the single-GPU size's.
PER_GPU_RATIO_MIN = 0.9
#: Highest allowed ratio (2.07x is the highest in the published prices; see the module doc).
PER_GPU_RATIO_MAX = 2.5
#: Highest allowed ratio of a type's on-demand price in a region to its cheapest region's.
REGION_RATIO_MAX = 1.75

RULES = ("price", "dated", "spot-below-on-demand", "per-gpu-ratio", "cross-region")


@dataclass(frozen=True, slots=True)
class SanityProblem:
    """One failed check: which rule, which row (``provider/type/region[/zone]``), and why."""

    rule: str
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message} [{self.rule}]"

    def to_json_dict(self) -> dict[str, str]:
        return {"rule": self.rule, "where": self.where, "message": self.message}


def format_problems(problems: Iterable[SanityProblem]) -> str:
    """One line per problem, sorted by row then rule: ``where: message [rule]``."""
    return "\n".join(str(p) for p in sorted(problems, key=lambda p: (p.where, p.rule)))


def _price(value: object) -> float | None:
    """The price as a float when it is a finite number > 0, else None."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    return float(value) if math.isfinite(value) and value > 0 else None


def _is_date(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return len(value) == 10


def family(provider: str, instance_type: str) -> str:
    """The instance family a type belongs to, for the per-GPU rule: ``g5.12xlarge`` ->
    ``g5``, ``a2-highgpu-8g`` -> ``a2-highgpu``, ``n1-standard-8+t4x1`` -> ``n1+t4``,
    ``Standard_NC24ads_A100_v4`` -> ``NC_A100_v4``."""
    if provider == "aws":
        return instance_type.split(".")[0]
    if provider == "azure":
        parts = instance_type.split("_")
        if len(parts) >= 2:
            series = re.match(r"[A-Za-z]+", parts[1])
            return "_".join([series.group(0) if series else parts[1], *parts[2:]])
        return instance_type
    if "+" in instance_type:  # GCP n1 host + attached GPUs
        host, gpus = instance_type.split("+", 1)
        return host.split("-")[0] + "+" + re.sub(r"x\d+$", "", gpus)
    return re.sub(r"-\d+g?$", "", instance_type)


class _Row:
    __slots__ = ("family", "gpu", "gpus", "on_demand", "region", "type")

    def __init__(
        self, type_: str, family_: str, gpu: object, gpus: int, region: str, on_demand: float
    ) -> None:
        self.type, self.family, self.gpu, self.gpus = type_, family_, gpu, gpus
        self.region, self.on_demand = region, on_demand


def check_document(doc: Mapping[str, Any]) -> list[SanityProblem]:
    """Every problem in one provider file's JSON document (empty: it passes).

    Tolerates a malformed document (the loader's validation names those faults): what
    cannot be read is skipped, a price that is not a positive finite number is a
    ``price`` problem."""
    provider = str(doc.get("provider", "?"))
    problems: list[SanityProblem] = []
    add = problems.append
    if not _is_date(doc.get("prices_as_of")):
        add(
            SanityProblem(
                "dated",
                provider,
                f"prices_as_of must be an ISO date (YYYY-MM-DD), got {doc.get('prices_as_of')!r}",
            )
        )
    types = doc.get("instance_types")
    if not isinstance(types, Mapping):
        return problems
    rows: list[_Row] = []
    has_spot = False
    for type_, spec in types.items():
        if not isinstance(spec, Mapping) or not isinstance(spec.get("regions"), Mapping):
            continue
        gpus = spec.get("gpus")
        fam = family(provider, str(type_))
        for region, entry in spec["regions"].items():
            if not isinstance(entry, Mapping):
                continue
            where = f"{provider}/{type_}/{region}"
            if "prices_as_of" in entry and not _is_date(entry["prices_as_of"]):
                add(
                    SanityProblem(
                        "dated",
                        where,
                        f"the region's prices_as_of must be an ISO date, "
                        f"got {entry['prices_as_of']!r}",
                    )
                )
            raw = entry.get("on_demand")
            on_demand = _price(raw)
            if raw is not None and on_demand is None:
                add(SanityProblem("price", where, _bad_price("on-demand", raw)))
            undated = entry.get("undated", [])
            if not (isinstance(undated, list) and set(undated) <= {"on_demand", "spot"}):
                add(
                    SanityProblem(
                        "dated",
                        where,
                        f"undated must list the markets whose price date is unknown "
                        f"(on_demand, spot), got {undated!r}",
                    )
                )
                undated = []
            spot = entry.get("spot")
            if spot is not None and "spot" not in undated:
                has_spot = True  # a dated spot price: the file must say when it was sampled
            for zone_where, market, value in _spot_prices(where, spot):
                price = _price(value)
                if price is None:
                    add(SanityProblem("price", zone_where, _bad_price(market, value)))
                elif on_demand is not None and price >= on_demand:
                    add(
                        SanityProblem(
                            "spot-below-on-demand",
                            zone_where,
                            f"{market} ${price:g}/h is not below on-demand ${on_demand:g}/h",
                        )
                    )
            counted = isinstance(gpus, int) and not isinstance(gpus, bool) and gpus > 0
            if on_demand is not None and counted:
                assert isinstance(gpus, int)
                rows.append(_Row(str(type_), fam, spec.get("gpu"), gpus, str(region), on_demand))
    if has_spot and not _is_date(doc.get("spot_as_of")):
        add(
            SanityProblem(
                "dated",
                provider,
                f"the file has dated spot prices, so spot_as_of must be an ISO date, "
                f"got {doc.get('spot_as_of')!r}",
            )
        )
    problems.extend(_per_gpu_problems(provider, rows))
    problems.extend(_region_problems(provider, rows))
    return problems


def _bad_price(market: str, value: object) -> str:
    return f"{market} price must be a finite number > 0, got {value!r}"


def _spot_prices(where: str, spot: object) -> Iterator[tuple[str, str, object]]:
    if isinstance(spot, Mapping):
        for zone, price in spot.items():
            yield f"{where}/{zone}", f"spot in {zone}", price
    elif spot is not None:
        yield where, "spot", spot


def _per_gpu_problems(provider: str, rows: list[_Row]) -> Iterator[SanityProblem]:
    groups: dict[tuple[str, str, str], list[_Row]] = {}
    for row in rows:
        groups.setdefault((row.family, str(row.gpu), row.region), []).append(row)
    for (fam, _gpu, _region), members in sorted(groups.items()):
        singles = [r for r in members if r.gpus == 1]
        if not singles:
            continue
        base = min(singles, key=lambda r: r.on_demand)
        for row in members:
            if row.gpus == 1:
                continue
            ratio = (row.on_demand / row.gpus) / base.on_demand
            if not PER_GPU_RATIO_MIN <= ratio <= PER_GPU_RATIO_MAX:
                yield SanityProblem(
                    "per-gpu-ratio",
                    f"{provider}/{row.type}/{row.region}",
                    f"on-demand ${row.on_demand / row.gpus:.4g}/GPU-h is {ratio:.2f}x the "
                    f"{fam} single-GPU size {base.type}'s ${base.on_demand:.4g}/GPU-h "
                    f"(allowed {PER_GPU_RATIO_MIN}-{PER_GPU_RATIO_MAX}x)",
                )


def _region_problems(provider: str, rows: list[_Row]) -> Iterator[SanityProblem]:
    by_type: dict[str, list[_Row]] = {}
    for row in rows:
        by_type.setdefault(row.type, []).append(row)
    for type_, members in sorted(by_type.items()):
        cheapest = min(members, key=lambda r: r.on_demand)
        for row in sorted(members, key=lambda r: r.region):
            ratio = row.on_demand / cheapest.on_demand
            if ratio > REGION_RATIO_MAX:
                yield SanityProblem(
                    "cross-region",
                    f"{provider}/{type_}/{row.region}",
                    f"on-demand ${row.on_demand:g}/h is {ratio:.2f}x its cheapest region's "
                    f"(${cheapest.on_demand:g}/h in {cheapest.region}; allowed "
                    f"{REGION_RATIO_MAX}x)",
                )


__all__ = [
    "PER_GPU_RATIO_MAX",
    "PER_GPU_RATIO_MIN",
    "REGION_RATIO_MAX",
    "RULES",
    "SanityProblem",
    "check_document",
    "family",
    "format_problems",
]

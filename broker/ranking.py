"""Ranking: which shapes can serve a request of G GPUs, in which order, at what price.

Pure functions of (request, catalog, what is known to be unavailable): no I/O, no clock.

Node split: for a shape with g GPUs per node, NNODES is the smallest n >= ceil(G/g) that
divides G, and N_PROC = G / n, so NNODES x N_PROC = G exactly (the launch-file contract).
Order: a priority list, when it names known shapes, is kept as given; otherwise every
shape is a candidate, cheapest plan first, then fewer nodes, then shape id (prices are
compared in whole micro-dollars, so float noise never reorders equal prices). A list that
names no known shape falls back to every shape with a warning saying so (and "did you mean"
for near misses), or, with ``strict_priority``, is refused.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import NamedTuple, overload
from weakref import WeakKeyDictionary

from broker.diagnostics import Diagnostic, InvalidRequest
from broker.settings import DEFAULT_BURST_MAX_GPUS, MAX_GPUS, MIN_GPUS
from shapes import checks
from shapes.catalog import Catalog, ShapeFilter
from shapes.model import Provisioning, Shape, parse_shape_id, shape_key


def split_gpus(gpus: int, gpus_per_node: int) -> tuple[int, int]:
    """(NNODES, N_PROC) for ``gpus`` GPUs on nodes of ``gpus_per_node``; NNODES*N_PROC == gpus."""
    if gpus < 1 or gpus_per_node < 1:
        raise ValueError("gpus and gpus_per_node must be positive")
    nodes = -(-gpus // gpus_per_node)  # ceil
    while gpus % nodes:
        nodes += 1
    return nodes, gpus // nodes


class Rule(StrEnum):
    """Why a shape was removed from the candidates."""

    PROVIDER = "provider"
    REGION = "region"
    GPU = "gpu"
    PROVISIONING = "provisioning"
    MAX_PRICE = "max_price"
    UNAVAILABLE = "unavailable"


class Plan(NamedTuple):
    """One way to serve the request: ``nodes`` nodes of ``shape``, ``procs_per_node`` each."""

    shape: Shape
    nodes: int
    procs_per_node: int
    price_per_hour: float  # all nodes together, USD

    @property
    def gpus_billed(self) -> int:
        return self.nodes * self.shape.gpus_per_node

    @property
    def price_per_hour_max(self) -> float:
        """The top of the plan's price range: the dearest zone it may land in, where prices
        vary by zone (``price_per_hour`` is the zone tried first), else the one price."""
        return self.nodes * self.shape.price_per_node_hour_max

    def price_in_zone(self, zone: str) -> float:
        """All nodes together in ``zone``, USD per hour."""
        return self.nodes * self.shape.price_in_zone(zone)


class Exclusion(NamedTuple):
    shape_id: str
    rule: Rule
    reason: str
    price_per_hour: float | None = None  # the plan's price, when it was computed


@dataclass(frozen=True, slots=True)
class RankRequest:
    """A request to rank shapes for G GPUs in burst mode.

    Types are checked strictly at construction (``gpus="16"`` or ``gpus=True`` is an
    :class:`InvalidRequest`, as in a launch file); the values (GPU range, burst cap, price
    cap) are checked by :func:`check_request`, which :func:`rank` calls.
    """

    gpus: int
    priority: tuple[str, ...] | None = None  # None: no list given
    priority_field: str = "priority"  # how diagnostics name the list (CLI flag or TOML key)
    filter: ShapeFilter = field(default_factory=ShapeFilter)
    max_price_per_hour: float | None = None
    burst_max_gpus: int = DEFAULT_BURST_MAX_GPUS
    # True: a priority list that names no known shape is refused instead of falling back
    # to every shape (for schedulers that want exactly the shapes they listed).
    strict_priority: bool = False

    def __post_init__(self) -> None:
        errors: list[Diagnostic] = []

        def need(name: str, why: str | None) -> None:
            if why is not None:
                errors.append(Diagnostic(field=name, message=why))

        need("gpus", checks.integer(self.gpus))
        if self.priority is not None:
            why = checks.strings(self.priority)
            need(self.priority_field if isinstance(self.priority_field, str) else "priority", why)
            if why is None and type(self.priority) is not tuple:
                object.__setattr__(self, "priority", tuple(self.priority))
        need("priority_field", checks.string(self.priority_field))
        if not isinstance(self.filter, ShapeFilter):
            need("filter", f"must be a ShapeFilter, got {checks.describe(self.filter)}")
        if self.max_price_per_hour is not None and not checks.is_number(self.max_price_per_hour):
            need(
                "max_price_per_hour",
                f"must be a number, got {checks.describe(self.max_price_per_hour)}",
            )
        need("burst_max_gpus", checks.integer(self.burst_max_gpus, MIN_GPUS, MAX_GPUS))
        need("strict_priority", checks.boolean(self.strict_priority))
        if errors:
            raise InvalidRequest(errors)

    def to_json_dict(self) -> dict[str, object]:
        flt = self.filter
        return {
            "gpus": self.gpus,
            "priority": None if self.priority is None else list(self.priority),
            "priority_field": self.priority_field,
            "filter": {
                "gpus": list(flt.gpus),
                "providers": list(flt.providers),
                "regions": list(flt.regions),
                "provisioning": None if flt.provisioning is None else flt.provisioning.value,
            },
            "max_price_per_hour": self.max_price_per_hour,
            "burst_max_gpus": self.burst_max_gpus,
            "strict_priority": self.strict_priority,
        }

    @classmethod
    def from_json_dict(cls, doc: object) -> RankRequest:
        """The inverse of :meth:`to_json_dict`; absent keys take their defaults."""
        if not isinstance(doc, dict):
            raise InvalidRequest([Diagnostic(field="rank", message="must be an object")])
        unknown = checks.unknown_keys(doc, _RANK_KEYS)
        if unknown:
            raise InvalidRequest([Diagnostic(field="rank", message=unknown)])
        values = dict(doc)
        flt = values.get("filter")
        if isinstance(flt, dict):
            market = flt.get("provisioning")
            try:
                values["filter"] = ShapeFilter(
                    gpus=flt.get("gpus", ()),
                    providers=flt.get("providers", ()),
                    regions=flt.get("regions", ()),
                    provisioning=None if market is None else Provisioning(market),
                )
            except ValueError as exc:
                raise InvalidRequest([Diagnostic(field="filter", message=str(exc))]) from None
        return cls(**values)


_RANK_KEYS = frozenset(f.name for f in fields(RankRequest))


@dataclass(frozen=True)
class Ranking:
    plans: Sequence[Plan]
    excluded: list[Exclusion]
    warnings: list[Diagnostic]
    priority_used: bool  # False when there was no list or it named no known shape


def check_request(request: RankRequest) -> None:
    """Raise InvalidRequest if the request itself cannot be served by any catalog."""
    errors: list[Diagnostic] = []
    if not MIN_GPUS <= request.gpus <= MAX_GPUS:
        errors.append(
            Diagnostic(
                field="gpus",
                message=f"must be an integer between {MIN_GPUS} and {MAX_GPUS}, got {request.gpus}",
            )
        )
    elif request.gpus > request.burst_max_gpus:
        errors.append(
            Diagnostic(
                field="gpus",
                message=(
                    f"burst experiments are limited to {request.burst_max_gpus} GPUs "
                    f"(got {request.gpus})"
                ),
            )
        )
    cap = request.max_price_per_hour
    if cap is not None and not (math.isfinite(cap) and cap > 0):
        errors.append(
            Diagnostic(field="max_price_per_hour", message=f"must be > 0 and finite, got {cap}")
        )
    if errors:
        raise InvalidRequest(errors)


BlockedZones = Mapping[str, frozenset[str]]  # shape key -> its zones blocked now


def order_zones(shape: Shape) -> list[str]:
    """The order the provisioner tries a shape's zones in: cheapest first where prices
    differ by zone (a zone with no price of its own last), else the catalog's order."""
    if not shape.zone_prices:
        return list(shape.zones)
    priced = shape.zone_prices
    return sorted(shape.zones, key=lambda z: (z not in priced, priced.get(z, 0.0), z))


def offer(
    shape: Shape, nodes: int, cap: float | None, blocked: frozenset[str] = frozenset()
) -> Shape | None:
    """``shape`` as the provisioner will try it, where its price varies by zone: only the
    zones not ``blocked`` and whose plan price (``nodes`` of them) is within ``cap``, priced
    at the cheapest of those (the zone tried first); None when no zone is left. A zone with
    no price of its own is kept only without a cap. Shapes with one price come back as they
    are (blocks and the cap apply to them whole, elsewhere)."""
    zp = shape.zone_prices
    if not zp:
        return shape
    limit = None if cap is None else round(cap * 1_000_000)
    keep = {
        z: p
        for z, p in zp.items()
        if z not in blocked and (limit is None or nodes * round(p * 1_000_000) <= limit)
    }
    if not keep:
        return None
    zones = tuple(z for z in shape.zones if z in keep or (limit is None and z not in zp))
    zones = tuple(z for z in zones if z not in blocked)
    if zones == shape.zones and len(keep) == len(zp):
        return shape
    import dataclasses

    return dataclasses.replace(
        shape, zones=zones, zone_prices=keep, price_per_node_hour=min(keep.values())
    )


def _resolve_priority(
    request: RankRequest, catalog: Catalog
) -> tuple[list[Shape], list[Diagnostic]]:
    """The catalog shapes the priority list names, in order, duplicates dropped."""
    named: list[Shape] = []
    seen: set[str] = set()
    warnings: list[Diagnostic] = []
    for i, raw in enumerate(request.priority or ()):
        field = f"{request.priority_field}[{i}]"
        try:
            parse_shape_id(raw)
        except ValueError as exc:
            warnings.append(Diagnostic(field=field, message=f"ignored: {exc}"))
            continue
        shape = catalog.get(raw)
        if shape is None:
            hint = difflib.get_close_matches(shape_key(raw), list(catalog.by_key), n=1)
            suffix = f"; did you mean {catalog.by_key[hint[0]].id}?" if hint else ""
            warnings.append(
                Diagnostic(field=field, message=f"ignored: no shape {raw!r} in the catalog{suffix}")
            )
            continue
        if shape.key in seen:
            warnings.append(Diagnostic(field=field, message=f"ignored: {shape.id} is listed twice"))
            continue
        seen.add(shape.key)
        named.append(shape)
    return named, warnings


class RankedPlans(Sequence[Plan]):
    """Plans in rank order, decoded on access from the sorted integer keys.

    Ranking a large catalog decides the order of every shape, but callers usually read the
    first few plans; building a Plan object per shape would cost more than the ranking.
    Each key is ``((nodes * price_micros) << 7 | nodes) << shift | catalog_index``.
    """

    def __init__(
        self,
        catalog: Catalog,
        keys: list[int],
        shift: int,
        gpus: int,
        offers: Mapping[int, Shape] | None = None,
    ) -> None:
        self._shapes = catalog.shapes
        self._price = catalog.columns.price
        self._keys = keys
        self._shift = shift
        self._mask = (1 << shift) - 1
        self._gpus = gpus
        self._offers = offers or {}  # catalog index -> the shape as offered (see offer())

    def __len__(self) -> int:
        return len(self._keys)

    @overload
    def __getitem__(self, i: int) -> Plan: ...
    @overload
    def __getitem__(self, i: slice) -> list[Plan]: ...
    def __getitem__(self, i: int | slice) -> Plan | list[Plan]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        key = self._keys[i]  # IndexError and negative indexes as for a list
        k = key & self._mask
        nodes = (key >> self._shift) & 127
        offered = self._offers.get(k)
        if offered is not None:
            return Plan(offered, nodes, self._gpus // nodes, nodes * offered.price_per_node_hour)
        return Plan(self._shapes[k], nodes, self._gpus // nodes, nodes * self._price[k])

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]


_KEY_BASES: WeakKeyDictionary[Catalog, tuple[int, list[int]]] = WeakKeyDictionary()


def _key_bases(catalog: Catalog) -> tuple[int, list[int]]:
    """Per catalog: ``shift`` (bits for a catalog index) and, per shape, the base b with
    ``nodes * b + index == ((nodes * price_micros) << 7 | nodes) << shift | index``.

    That integer orders plans by (price per hour in micro-dollars, nodes, id), since the
    catalog is sorted by id and nodes < 128; precomputing b leaves one multiply and one add
    per shape for each request.
    """
    cached = _KEY_BASES.get(catalog)
    if cached is None:
        micros = catalog.columns.price_micros
        shift = len(micros).bit_length()
        one = 1 << shift
        cached = shift, [(m << (7 + shift)) + one for m in micros]
        _KEY_BASES[catalog] = cached
    return cached


def _price_ordered(
    request: RankRequest,
    catalog: Catalog,
    blocked: Mapping[str, str],
    blocked_zones: BlockedZones,
) -> RankedPlans:
    """Every shape the filters keep, by (price per hour, nodes, id), over the columns. A
    shape priced by zone is ranked at its cheapest zone; where blocks or the price cap take
    zones away, at the cheapest zone left (:func:`offer`)."""
    cols = catalog.columns
    idx = request.filter.select(cols)
    if blocked:
        ids = cols.keys
        idx = [i for i in idx if ids[i] not in blocked]
    gpn = cols.gpus_per_node
    nodes_for = {g: split_gpus(request.gpus, g)[0] for g in set(gpn)}
    shift, bases = _key_bases(catalog)
    keys = [nodes_for[gpn[i]] * bases[i] + i for i in idx]
    cap = request.max_price_per_hour
    offers: dict[int, Shape] = {}
    zoned = catalog.zoned if cap is not None or blocked_zones else ()
    if zoned:
        chosen = set(idx)
        dropped: set[int] = set()
        rekeyed: dict[int, int] = {}
        one = 1 << shift
        for i in zoned:
            if i not in chosen:
                continue
            shape = catalog.shapes[i]
            nodes = nodes_for[gpn[i]]
            offered = offer(shape, nodes, cap, blocked_zones.get(shape.key, frozenset()))
            if offered is None:
                dropped.add(i)
            elif offered is not shape:
                offers[i] = offered
                micros = round(offered.price_per_node_hour * 1_000_000)
                rekeyed[i] = nodes * ((micros << (7 + shift)) + one) + i
        if dropped or rekeyed:
            mask = one - 1
            keys = [rekeyed.get(k & mask, k) for k in keys if k & mask not in dropped]
    if cap is not None:
        limit = round(cap * 1_000_000)
        keys = [k for k in keys if k >> (shift + 7) <= limit]
    keys.sort()
    return RankedPlans(catalog, keys, shift, request.gpus, offers)


def _explain(
    request: RankRequest,
    shapes: Sequence[Shape],
    blocked: Mapping[str, str],
    blocked_zones: BlockedZones,
) -> tuple[list[Plan], list[Exclusion]]:
    """Plans for ``shapes`` in the given order, and why each other shape was removed."""
    flt = request.filter
    cap = request.max_price_per_hour
    plans: list[Plan] = []
    excluded: list[Exclusion] = []
    for shape in shapes:
        rejected = flt.reject(shape)
        if rejected is not None:
            excluded.append(Exclusion(shape.id, Rule(rejected.filter), rejected.reason))
            continue
        if shape.key in blocked:
            excluded.append(Exclusion(shape.id, Rule.UNAVAILABLE, blocked[shape.key]))
            continue
        nodes, procs = split_gpus(request.gpus, shape.gpus_per_node)
        zones_blocked = blocked_zones.get(shape.key, frozenset())
        offered = offer(shape, nodes, cap, zones_blocked)
        if offered is None:
            cheapest = (
                nodes
                * min(p for z, p in (shape.zone_prices or {}).items() if z not in zones_blocked)
                if set(shape.zone_prices or ()) - zones_blocked
                else None
            )
            if cheapest is None:  # every priced zone is blocked
                reason = "every zone with a price is blocked"
                excluded.append(Exclusion(shape.id, Rule.UNAVAILABLE, reason))
                continue
            reason = (
                f"${cheapest:,.2f}/h for {nodes} node(s) in its cheapest open zone is over "
                f"the cap of ${cap or 0:,.2f}/h"
            )
            excluded.append(Exclusion(shape.id, Rule.MAX_PRICE, reason, cheapest))
            continue
        shape = offered
        price = nodes * shape.price_per_node_hour
        if cap is not None and price > cap:
            reason = f"${price:,.2f}/h for {nodes} node(s) is over the cap of ${cap:,.2f}/h"
            excluded.append(Exclusion(shape.id, Rule.MAX_PRICE, reason, price))
            continue
        plans.append(Plan(shape, nodes, procs, price))
    return plans, excluded


def rank(
    request: RankRequest,
    catalog: Catalog,
    *,
    unavailable: Mapping[str, str] | None = None,
    blocked_zones: BlockedZones | None = None,
    explain: bool = False,
) -> Ranking:
    """Rank the catalog's shapes for ``request``.

    ``unavailable`` maps shape keys (lower-case ids) to why they cannot be used now (e.g. a
    remembered stockout); ``blocked_zones`` maps shape keys to some of their zones that
    cannot be used now (a shape priced by zone is then priced at its cheapest zone left).
    Exclusions are reported for shapes the priority list named, and for every shape when
    ``explain`` is set.
    """
    check_request(request)
    named, warnings = _resolve_priority(request, catalog)
    blocked = unavailable or {}
    zones = blocked_zones or {}
    if named:
        plans, excluded = _explain(request, named, blocked, zones)
        return Ranking(plans, excluded, warnings, priority_used=True)
    if request.priority is not None:
        fallback = Diagnostic(
            field=request.priority_field,
            message="names no known shape; trying every shape in the catalog",
        )
        if request.strict_priority:
            raise InvalidRequest(
                [
                    Diagnostic(
                        field=request.priority_field,
                        message="names no known shape (strict priority: no fallback to "
                        "every shape)",
                    )
                ],
                warnings,
            )
        warnings.append(fallback)
    ranked = _price_ordered(request, catalog, blocked, zones)
    excluded = _explain(request, catalog.shapes, blocked, zones)[1] if explain else []
    return Ranking(ranked, excluded, warnings, priority_used=False)

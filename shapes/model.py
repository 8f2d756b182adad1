"""The shape: one kind of node a cloud sells, at one price.

A shape is (provider, region, instance type, provisioning). Its id is
``provider:region:instance_type:provisioning`` — e.g. ``aws:us-east-1:p5.48xlarge:spot`` —
and ids match case-insensitively (:func:`shape_key`). Shapes are frozen dataclasses that
check their own fields (no pydantic: this module is on the quote path) and do no I/O.
"""

from __future__ import annotations

import gc
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from typing import Any, NamedTuple

from shapes import checks
from shapes.gpus import CANONICAL_GPUS


class Provisioning(StrEnum):
    SPOT = "spot"
    ON_DEMAND = "on-demand"


class ShapeId(NamedTuple):
    provider: str
    region: str
    instance_type: str
    provisioning: Provisioning

    def __str__(self) -> str:
        return f"{self.provider}:{self.region}:{self.instance_type}:{self.provisioning.value}"


def parse_shape_id(text: str) -> ShapeId:
    """Parse ``provider:region:instance_type:provisioning``; raise ``ValueError`` saying why not."""
    parts = text.strip().split(":")
    if len(parts) != 4 or not all(parts):
        raise ValueError(
            f"{text!r} is not a shape id (expected provider:region:instance_type:provisioning, "
            "e.g. aws:us-east-1:p5.48xlarge:spot)"
        )
    provider, region, instance_type, provisioning = parts
    try:
        prov = Provisioning(provisioning.lower())
    except ValueError:
        raise ValueError(
            f"{text!r}: provisioning must be 'spot' or 'on-demand', got {provisioning!r}"
        ) from None
    return ShapeId(provider.lower(), region, instance_type, prov)


def shape_key(shape_id: str) -> str:
    """The case-insensitive lookup key of a shape id."""
    return shape_id.strip().lower()


_PROVIDER_NAME = re.compile(r"[a-z][a-z0-9-]*")
_FIELDS = (
    "provider",
    "region",
    "instance_type",
    "gpu",
    "gpus_per_node",
    "gpu_memory_gib",
    "vcpus",
    "memory_gib",
    "provisioning",
    "price_per_node_hour",
    "zones",
    "zone_prices",
    "prices_as_of",
    "undated",
)
_JSON_KEYS = frozenset({"id", *_FIELDS})

#: A price older than this many days is called out in quotes (``Shape.is_stale``).
STALE_DAYS = 90


@dataclass(frozen=True, slots=True)
class Shape:
    """One purchasable node type: a GPU instance type in a region, spot or on-demand.

    Construction checks every field (strict types: no string is a number, no boolean an
    integer; sizes and prices finite and > 0; ``prices_as_of`` a date, not a datetime, and
    none on an undated price) and raises ``ValueError`` naming each problem.
    Use :func:`dataclasses.replace` for a changed copy (it checks again).
    """

    provider: str
    region: str
    instance_type: str
    gpu: str
    gpus_per_node: int
    gpu_memory_gib: float
    vcpus: int
    memory_gib: float
    provisioning: Provisioning
    price_per_node_hour: float  # USD per node-hour
    zones: tuple[str, ...] = ()
    # USD per node-hour by zone, where the price varies by zone
    zone_prices: dict[str, float] | None = None
    # The day this price was true at its source (spot: when it was sampled); None when
    # unknown. A catalog file's shapes carry their region entry's or their file's date.
    prices_as_of: date | None = None
    # Carried from an older catalog with no date (a catalog's price of unknown date): such
    # a price has no prices_as_of.
    undated: bool = False
    id: str = field(init=False, repr=False, compare=False)
    key: str = field(init=False, repr=False, compare=False)  # lower-cased id

    def __post_init__(self) -> None:
        # The common case in one expression (catalogs hold 100k shapes); the slow path
        # below names every problem.
        zp = self.zone_prices
        if not (
            self.provider in _GOOD_PROVIDERS
            and type(self.region) is str
            and self.region
            and ":" not in self.region
            and type(self.instance_type) is str
            and self.instance_type
            and ":" not in self.instance_type
            and self.gpu in CANONICAL_GPUS
            and type(self.gpus_per_node) is int
            and self.gpus_per_node >= 1
            and type(self.vcpus) is int
            and self.vcpus >= 1
            and type(self.gpu_memory_gib) in _NUMBER
            and 0 < self.gpu_memory_gib < _INF
            and type(self.memory_gib) in _NUMBER
            and 0 < self.memory_gib < _INF
            and type(self.price_per_node_hour) in _NUMBER
            and 0 < self.price_per_node_hour < _INF
            and type(self.provisioning) is Provisioning
            and type(self.zones) is tuple
            and (zp is None or type(zp) is dict)
            and (self.prices_as_of is None or type(self.prices_as_of) is date)
            and (self.undated is False or (self.undated is True and self.prices_as_of is None))
        ) or (self.zones and not all(type(z) is str for z in self.zones)):
            problems = _shape_problems(self)
            if problems:
                raise ValueError(f"invalid shape: {'; '.join(problems)}")
        set_ = object.__setattr__
        if type(self.provisioning) is not Provisioning:
            set_(self, "provisioning", Provisioning(self.provisioning))
        for name in ("gpu_memory_gib", "memory_gib", "price_per_node_hour"):
            if type(getattr(self, name)) is not float:
                set_(self, name, float(getattr(self, name)))
        if type(self.zones) is not tuple:
            set_(self, "zones", tuple(self.zones))
        if zp is not None:
            problems = _zone_price_problems(zp, self.zones)
            if problems:
                raise ValueError(f"invalid shape: {'; '.join(problems)}")
            set_(self, "zone_prices", {z: float(p) for z, p in zp.items()})
        shape_id = f"{self.provider}:{self.region}:{self.instance_type}:{self.provisioning.value}"
        set_(self, "id", shape_id)
        set_(self, "key", shape_id.lower())

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def price_per_node_hour_max(self) -> float:
        """The top of the price range where prices vary by zone (``price_per_node_hour`` is
        the cheapest zone's: the one tried first), else the one price."""
        zp = self.zone_prices
        return max(zp.values()) if zp else self.price_per_node_hour

    def age_days(self, today: date | None = None) -> int | None:
        """Days since this price was true at its source; None when its date is unknown."""
        if self.prices_as_of is None:
            return None
        return ((today or date.today()) - self.prices_as_of).days

    def is_stale(self, today: date | None = None) -> bool:
        """A dated price older than :data:`STALE_DAYS` (an undated one is not: it is said
        apart, as undated)."""
        age = self.age_days(today)
        return age is not None and age > STALE_DAYS

    def price_in_zone(self, zone: str) -> float:
        """A node's price in ``zone``: its own where prices vary by zone, the top of the
        range for a zone with no price of its own, else the one price."""
        zp = self.zone_prices
        if not zp:
            return self.price_per_node_hour
        return zp.get(zone, self.price_per_node_hour_max)

    def to_json_dict(self) -> dict[str, object]:
        """Plain JSON types: ``id`` and every field (exact prices)."""
        return {
            "id": self.id,
            "provider": self.provider,
            "region": self.region,
            "instance_type": self.instance_type,
            "gpu": self.gpu,
            "gpus_per_node": self.gpus_per_node,
            "gpu_memory_gib": self.gpu_memory_gib,
            "vcpus": self.vcpus,
            "memory_gib": self.memory_gib,
            "provisioning": self.provisioning.value,
            "price_per_node_hour": self.price_per_node_hour,
            "zones": list(self.zones),
            "zone_prices": None if self.zone_prices is None else dict(self.zone_prices),
            "prices_as_of": None if self.prices_as_of is None else self.prices_as_of.isoformat(),
            "undated": self.undated,
        }

    @classmethod
    def from_json_dict(cls, doc: object) -> Shape:
        """The inverse of :meth:`to_json_dict` (``id``, if present, must match the fields)."""
        if not isinstance(doc, dict):
            raise ValueError(f"invalid shape: must be a JSON object, got {checks.describe(doc)}")
        extra = checks.unknown_keys(doc, _JSON_KEYS)
        if extra:
            raise ValueError(f"invalid shape: {extra}")
        missing = [f for f in _FIELDS[:10] if f not in doc]
        if missing:
            raise ValueError(f"invalid shape: missing field(s) {', '.join(missing)}")
        zones = doc.get("zones", ())
        if isinstance(zones, list):
            zones = tuple(zones)
        as_of = doc.get("prices_as_of")
        if as_of is not None:  # an ISO date (documents written before it have none)
            if not isinstance(as_of, str):
                raise ValueError(
                    f"invalid shape: prices_as_of must be a date (YYYY-MM-DD) or null, "
                    f"got {checks.describe(as_of)}"
                )
            try:
                as_of = date.fromisoformat(as_of)
            except ValueError:
                raise ValueError(
                    f"invalid shape: prices_as_of must be a date (YYYY-MM-DD), got {as_of!r}"
                ) from None
        fields = {f: doc[f] for f in _FIELDS if f in doc}
        shape = cls(**{**fields, "zones": zones, "prices_as_of": as_of})
        if "id" in doc and doc["id"] != shape.id:
            raise ValueError(f"invalid shape: id {doc['id']!r} does not match {shape.id}")
        return shape


class _Unchecked:
    """Shape's slot layout without its checks: :func:`prechecked_shape` fills one and turns
    it into a Shape (a frozen dataclass sets each field through ``object.__setattr__``,
    which costs more than the loader's checks of a 100k-shape catalog)."""

    __slots__ = Shape.__slots__


def prechecked_shape(
    provider: str,
    region: str,
    instance_type: str,
    gpu: str,
    gpus_per_node: int,
    gpu_memory_gib: float,
    vcpus: int,
    memory_gib: float,
    provisioning: Provisioning,
    price_per_node_hour: float,
    zones: tuple[str, ...],
    zone_prices: dict[str, float] | None,
    prices_as_of: date | None = None,
    undated: bool = False,
) -> Shape:
    """A shape from fields its caller has checked exactly as :class:`Shape` would (the
    catalog loader checks an instance type's shared fields once, then each region's); the
    floats must be floats and ``provisioning`` a :class:`Provisioning`."""
    s: Any = _Unchecked()
    s.provider = provider
    s.region = region
    s.instance_type = instance_type
    s.gpu = gpu
    s.gpus_per_node = gpus_per_node
    s.gpu_memory_gib = gpu_memory_gib
    s.vcpus = vcpus
    s.memory_gib = memory_gib
    s.provisioning = provisioning
    s.price_per_node_hour = price_per_node_hour
    s.zones = zones
    s.zone_prices = zone_prices
    s.prices_as_of = prices_as_of
    s.undated = undated
    s.id = shape_id = f"{provider}:{region}:{instance_type}:{_VALUE[provisioning]}"
    s.key = shape_id.lower()
    s.__class__ = Shape
    return s  # type: ignore[no-any-return]


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many objects that form no cycles
    (a catalog's columns and shapes): each generation's collection would walk everything
    allocated so far, which costs more than the building itself (a cold 100k-shape load:
    about 0.3 s of collections). The collector's state before is restored."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def prechecked_shapes(
    keys: Sequence[str],
    provider: Sequence[str],
    region: Sequence[str],
    instance_type: Sequence[str],
    gpu: Sequence[str],
    gpus_per_node: Sequence[int],
    gpu_memory_gib: Sequence[float],
    vcpus: Sequence[int],
    memory_gib: Sequence[float],
    provisioning: Sequence[Provisioning],
    price_per_node_hour: Sequence[float],
    zones: Sequence[tuple[str, ...]],
    zone_prices: Sequence[dict[str, float] | None],
    day_codes: Sequence[int],
) -> list[Shape]:
    """:func:`prechecked_shape` for parallel columns of checked fields, in one loop (a
    catalog's every shape; about a third faster than one call per shape). ``keys`` are
    the shapes' keys (lower-cased ids), which the caller already holds; ``day_codes``
    their ``prices_as_of`` and ``undated`` as :func:`day_code` writes them."""
    with collector_paused():
        return _build(
            keys,
            provider,
            region,
            instance_type,
            gpu,
            gpus_per_node,
            gpu_memory_gib,
            vcpus,
            memory_gib,
            provisioning,
            price_per_node_hour,
            zones,
            zone_prices,
            day_codes,
        )


def day_code(prices_as_of: date | None, undated: bool) -> int:
    """A shape's price date as one int, for compact columns (:mod:`shapes.compiled`): the
    date's ordinal, 0 for no date, -1 for undated. :func:`day_of` is the inverse."""
    if undated:
        return -1
    return 0 if prices_as_of is None else prices_as_of.toordinal()


def day_of(code: int) -> tuple[date | None, bool]:
    """``(prices_as_of, undated)`` of a :func:`day_code`."""
    if code > 0:
        day = _DAYS.get(code)
        if day is None:
            day = _DAYS[code] = date.fromordinal(code)
        return day, False
    return None, code < 0


_DAYS: dict[int, date] = {}  # one date object per day a catalog names


def _build(*columns: Sequence[Any]) -> list[Shape]:
    out: list[Shape] = []
    add = out.append
    new = _Unchecked
    value = _VALUE
    days = _DAYS
    for key, p, r, it, g, n, gm, vc, mem, prov, price, z, zp, dc in zip(*columns, strict=True):
        s: Any = new()
        s.provider = p
        s.region = r
        s.instance_type = it
        s.gpu = g
        s.gpus_per_node = n
        s.gpu_memory_gib = gm
        s.vcpus = vc
        s.memory_gib = mem
        s.provisioning = prov
        s.price_per_node_hour = price
        s.zones = z
        s.zone_prices = None if zp is None else dict(zp)
        if dc > 0:
            s.prices_as_of = days.get(dc) or day_of(dc)[0]
            s.undated = False
        else:
            s.prices_as_of = None
            s.undated = dc < 0
        s.id = f"{p}:{r}:{it}:{value[prov]}"
        s.key = key
        s.__class__ = Shape
        add(s)
    return out


_GOOD_PROVIDERS: set[str] = set()  # names already checked against the pattern


def _shape_problems(s: Shape) -> list[str]:
    """Every problem with a shape's fields, as ``field: what is wrong``."""
    problems: list[str] = []
    add = problems.append
    provider = s.provider
    if provider not in _GOOD_PROVIDERS:
        if not isinstance(provider, str) or _PROVIDER_NAME.fullmatch(provider) is None:
            add(f"provider must match [a-z][a-z0-9-]*, got {checks.describe(provider)}")
        else:
            _GOOD_PROVIDERS.add(provider)
    for name in ("region", "instance_type"):
        value = getattr(s, name)
        why = checks.string(value)
        if why is None and ":" in value:
            why = "must not contain ':' (it separates the parts of a shape id)"
        if why is not None:
            add(f"{name} {why}")
    if s.gpu not in CANONICAL_GPUS:
        add(f"gpu {s.gpu!r} is not a canonical name ({', '.join(sorted(CANONICAL_GPUS))})")
    for name in ("gpus_per_node", "vcpus"):
        why = checks.integer(getattr(s, name), low=1)
        if why is not None:
            add(f"{name} {why}")
    for name in ("gpu_memory_gib", "memory_gib", "price_per_node_hour"):
        why = checks.positive(getattr(s, name))
        if why is not None:
            add(f"{name} {why}")
    prov = s.provisioning
    if not isinstance(prov, Provisioning) and prov not in _PROVISIONING_VALUES:
        add(f"provisioning must be 'spot' or 'on-demand', got {checks.describe(prov)}")
    why = checks.strings(s.zones) if s.zones != () else None
    if why is not None:
        add(f"zones {why}")
    if isinstance(s.zone_prices, dict):
        problems.extend(_zone_price_problems(s.zone_prices, s.zones))
    elif s.zone_prices is not None:
        add(f"zone_prices must be a mapping of zone to price, got {checks.describe(s.zone_prices)}")
    if s.prices_as_of is not None and type(s.prices_as_of) is not date:
        add(f"prices_as_of must be a date or None, got {checks.describe(s.prices_as_of)}")
    if type(s.undated) is not bool:
        add(f"undated must be true or false, got {checks.describe(s.undated)}")
    elif s.undated and s.prices_as_of is not None:
        add("an undated price has no prices_as_of (its date is unknown)")
    return problems


def _zone_price_problems(prices: dict[str, float], zones: object) -> list[str]:
    problems = [
        f"zone_prices[{zone!r}] {why}"
        for zone, price in prices.items()
        if (why := checks.positive(price)) is not None
    ]
    if isinstance(zones, tuple | list) and set(prices) - set(zones):
        problems.append("zone_prices names zones that are not in zones")
    return problems


_PROVISIONING_VALUES = frozenset(p.value for p in Provisioning)
_VALUE = {p: p.value for p in Provisioning}  # faster than the enum's .value property
_NUMBER = (int, float)
_INF = math.inf

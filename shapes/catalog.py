"""The shape catalog: bundled, dated price lists, and the filters users apply to them.

The bundled data lives in ``shapes/data/<provider>.json`` (one file per cloud, each stamped
with where its prices come from and when); the clouds are the files found there, so a new
cloud's prices are a new data file. A local catalog directory (the caller's, e.g. the
broker's ``BROKER_CATALOG_DIR``) holds newer files of the same format written by ``broker
catalog refresh``; a provider's file there replaces the bundled one. Loading is JSON +
validation (strict types; every price finite and > 0) and runs on every quote, so it is
kept cheap: each file's validated parse is kept compiled (:mod:`shapes.compiled`, a sidecar
used only while the file is unchanged), a compiled catalog builds a :class:`Shape` only when
one is read, and ranking reads the columns (:class:`Columns`). ``benchmarks/run.py`` times
both loads, for the bundled catalog and a 100k-shape one.
"""

from __future__ import annotations

import bisect
import itertools
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import cached_property
from operator import attrgetter
from pathlib import Path
from typing import Any, NamedTuple, overload

from shapes import checks, compiled
from shapes.checks import describe
from shapes.errors import CatalogError
from shapes.gpus import gpu_filter_names
from shapes.model import (
    STALE_DAYS,
    Provisioning,
    Shape,
    collector_paused,
    day_code,
    day_of,
    prechecked_shape,
    prechecked_shapes,
    shape_key,
)

BUNDLED_DIR = Path(__file__).parent / "data"


@dataclass(frozen=True, slots=True)
class CatalogSource:
    """Where one provider's prices come from, and how old they are."""

    provider: str
    path: str
    bundled: bool
    prices_as_of: date | None
    retrieved: date | None
    price_source: str
    notes: str = ""
    shapes: int = 0
    spot_as_of: date | None = None  # when the spot prices were sampled
    undated: int = 0  # shapes whose price has no date (carried from an older catalog)
    problems: tuple[str, ...] = ()  # sanity problems (shapes.sanity) of a refreshed file

    def __post_init__(self) -> None:
        problems = [
            f"{name} {why}"
            for name, why in (
                ("provider", checks.string(self.provider)),
                ("path", checks.string(self.path)),
                ("bundled", checks.boolean(self.bundled)),
                ("price_source", checks.string(self.price_source, empty=True)),
                ("notes", checks.string(self.notes, empty=True)),
                ("shapes", checks.integer(self.shapes, low=0)),
                ("prices_as_of", _date_problem(self.prices_as_of)),
                ("retrieved", _date_problem(self.retrieved)),
                ("spot_as_of", _date_problem(self.spot_as_of)),
                ("undated", checks.integer(self.undated, low=0)),
                ("problems", checks.strings(self.problems)),
            )
            if why is not None
        ]
        if problems:
            raise ValueError(f"invalid catalog source: {'; '.join(problems)}")

    def age_days(self, today: date | None = None) -> int | None:
        """Days since the prices were read at the source; None when that date is unknown."""
        if self.prices_as_of is None:
            return None
        return ((today or date.today()) - self.prices_as_of).days

    def is_stale(self, today: date | None = None) -> bool:
        """Prices older than :data:`STALE_DAYS` (or of unknown date)."""
        age = self.age_days(today)
        return age is None or age > STALE_DAYS


def _date_problem(value: object) -> str | None:
    if value is None or (isinstance(value, date) and not isinstance(value, datetime)):
        return None
    return f"must be a date or null, got {checks.describe(value)}"


class _Malformed(Exception):
    """One problem in a catalog file; ``where`` names the shape or key."""

    def __init__(self, where: str, why: str) -> None:
        super().__init__(f"{where}: {why}")


def _need(where: str, why: str | None) -> None:
    if why is not None:
        raise _Malformed(where, why)


def _date(doc: dict[str, Any], key: str, where: str = "") -> date | None:
    value = doc.get(key)
    if value is None:
        return None
    at = f"{where}: {key}" if where else key
    day = _DAY_CACHE.get(value) if type(value) is str else None
    if day is not None:
        return day
    _need(at, checks.string(value))
    try:
        day = _DAY_CACHE[value] = date.fromisoformat(value)
    except ValueError:
        raise _Malformed(at, f"must be a date (YYYY-MM-DD), got {value!r}") from None
    return day


_DAY_CACHE: dict[str, date] = {}  # the few dates a catalog names, parsed once


_MARKET_KEYS = frozenset({"on_demand", "spot"})


def _undated(at: str, entry: dict[str, Any]) -> tuple[bool, bool]:
    """Whether a region entry's on-demand and spot prices are marked undated (carried
    from an older catalog: ``"undated": ["on_demand", "spot"]``)."""
    marks = entry.get("undated")
    if not marks:
        return False, False
    if type(marks) is not list or not set(marks) <= _MARKET_KEYS:
        raise _Malformed(
            f"{at}: undated",
            f"must list the markets whose price date is unknown (on_demand, spot), got {marks!r}",
        )
    return "on_demand" in marks, "spot" in marks


def _price(where: str, value: object) -> float:
    if type(value) is float and 0 < value < _INF:  # the common case, without a call
        return value
    _need(where, checks.positive(value))
    return float(value)  # type: ignore[arg-type]


_INF = float("inf")


def _instance_shapes(
    provider: str,
    instance_type: str,
    spec: object,
    prices_as_of: date | None = None,
    spot_as_of: date | None = None,
) -> Iterator[Shape]:
    """The shapes of one instance type (every region, both markets), every field checked:
    the instance type's fields once, then each region's.

    Each shape's price date: on-demand, its region entry's ``prices_as_of``, else the
    file's (``prices_as_of``); spot, the entry's ``spot_as_of``, else the file's. A market
    the entry lists as ``undated``, or one no date covers, is undated (no date)."""
    where = f"instance_types.{instance_type}"
    _need(where, None if isinstance(spec, dict) else f"must be an object, got {describe(spec)}")
    assert isinstance(spec, dict)
    for key in ("gpu", "gpus", "gpu_memory_gib", "vcpus", "memory_gib", "regions"):
        _need(where, None if key in spec else f"missing {key!r}")
    # One checked shape per instance type validates the fields all its regions share.
    try:
        first = Shape(
            provider=provider,
            region="-",
            instance_type=instance_type,
            gpu=spec["gpu"],
            gpus_per_node=spec["gpus"],
            gpu_memory_gib=spec["gpu_memory_gib"],
            vcpus=spec["vcpus"],
            memory_gib=spec["memory_gib"],
            provisioning=Provisioning.ON_DEMAND,
            price_per_node_hour=1.0,
        )
    except ValueError as exc:
        raise _Malformed(where, str(exc).removeprefix("invalid shape: ")) from None
    regions = spec["regions"]
    _need(f"{where}.regions", None if isinstance(regions, dict) else "must be an object")
    fill = _filler(first)
    for region, entry in regions.items():
        at = f"{provider}:{region}:{instance_type}"
        _need(at, checks.string(region))
        _need(at, "region must not contain ':'" if ":" in region else None)
        _need(at, None if isinstance(entry, dict) else f"must be an object, got {describe(entry)}")
        zones = entry.get("zones", [])
        if type(zones) is not list or not all(type(z) is str for z in zones):
            _need(f"{at}: zones", checks.strings(zones))
        zone_tuple = tuple(zones)
        od_undated, spot_undated = _undated(at, entry)
        on_demand = entry.get("on_demand")
        if on_demand is not None:
            day = None if od_undated else _date(entry, "prices_as_of", at) or prices_as_of
            yield fill(
                region,
                zone_tuple,
                Provisioning.ON_DEMAND,
                _price(f"{at}:on-demand", on_demand),
                None,
                day,
            )
        spot = entry.get("spot")
        if spot is not None:
            spot_day = None if spot_undated else _date(entry, "spot_as_of", at) or spot_as_of
        if isinstance(spot, dict):
            # Spot prices that vary by zone: keep every zone's price, and quote the cheapest,
            # the zone the provisioner tries first (the ranking reprices a shape whose
            # cheapest zones are blocked or over a price cap: broker.ranking.offer).
            if spot:
                prices = {z: _price(f"{at}:spot: zone {z}", p) for z, p in spot.items()}
                unknown = sorted(set(prices) - set(zone_tuple))
                _need(f"{at}:spot", f"prices zones not in zones: {unknown}" if unknown else None)
                yield fill(
                    region, zone_tuple, Provisioning.SPOT, min(prices.values()), prices, spot_day
                )
        elif spot is not None:
            price = _price(f"{at}:spot", spot)
            yield fill(region, zone_tuple, Provisioning.SPOT, price, None, spot_day)


def _filler(
    first: Shape,
) -> Callable[
    [str, tuple[str, ...], Provisioning, float, dict[str, float] | None, date | None], Shape
]:
    """Build shapes that differ from ``first`` only in the fields the loader has checked."""
    provider, instance_type = first.provider, first.instance_type
    gpu, gpus, gpu_memory = first.gpu, first.gpus_per_node, first.gpu_memory_gib
    vcpus, memory = first.vcpus, first.memory_gib

    def fill(
        region: str,
        zones: tuple[str, ...],
        market: Provisioning,
        price: float,
        zone_prices: dict[str, float] | None,
        day: date | None,
    ) -> Shape:
        # No date (marked undated, or none given for its market): undated.
        return prechecked_shape(
            provider,
            region,
            instance_type,
            gpu,
            gpus,
            gpu_memory,
            vcpus,
            memory,
            market,
            price,
            zones,
            zone_prices,
            day,
            day is None,
        )

    return fill


def parse_catalog_file(path: Path, *, bundled: bool) -> tuple[CatalogSource, list[Shape]]:
    """Read one provider's catalog file into its source stamp and its shapes.

    Raises :class:`CatalogError` naming the file and the shape or key for a file that
    cannot be read, is not JSON, or holds a malformed entry (a negative, zero, NaN or
    infinite price included).
    """
    return _parse_file(path, bundled)[:2]


def _parse_file(path: Path, bundled: bool) -> tuple[CatalogSource, list[Shape], os.stat_result]:
    """:func:`parse_catalog_file`, and the stat of the very file that was read (taken on
    its open descriptor, so a file replaced meanwhile can never be stamped as parsed)."""
    try:
        with path.open("rb") as f:
            st = os.fstat(f.fileno())
            text = f.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(f"cannot read catalog {path}: {exc}") from exc
    try:
        doc = json.loads(text, parse_constant=_no_constant)
    except (json.JSONDecodeError, _Malformed) as exc:
        raise CatalogError(f"cannot read catalog {path}: {exc}") from exc
    try:
        return (*_parse_doc(doc, path, bundled), st)
    except _Malformed as exc:
        raise CatalogError(f"malformed catalog {path}: {exc}") from None


def _no_constant(name: str) -> float:
    raise _Malformed(name, "is not a number (catalog prices must be finite)")


def _parse_doc(doc: object, path: Path, bundled: bool) -> tuple[CatalogSource, list[Shape]]:
    _need("document", None if isinstance(doc, dict) else f"must be an object, got {describe(doc)}")
    assert isinstance(doc, dict)
    for key in ("provider", "price_source", "instance_types"):
        _need("document", None if key in doc else f"missing {key!r}")
    provider = doc["provider"]
    _need("provider", checks.string(provider))
    if provider != path.name.split(".")[0]:
        raise _Malformed("provider", f"is {provider!r}, but the file is named {path.name}")
    _need("price_source", checks.string(doc["price_source"], empty=True))
    _need("notes", checks.string(doc.get("notes", ""), empty=True))
    types = doc["instance_types"]
    _need("instance_types", None if isinstance(types, dict) else "must be an object")
    prices_as_of = _date(doc, "prices_as_of")
    spot_as_of = _date(doc, "spot_as_of")
    shapes = [
        shape
        for instance_type, spec in types.items()
        for shape in _instance_shapes(provider, instance_type, spec, prices_as_of, spot_as_of)
    ]
    if bundled and prices_as_of is None:  # the build stamps every file it writes
        raise _Malformed("prices_as_of", "a bundled file must say when its prices were true")
    # A refreshed file is checked for sense (a bundled one was, by the build and its test):
    # its problems are kept and shown (quote header, broker catalog check), never fatal.
    problems: tuple[str, ...] = ()
    if not bundled:  # only here: a quote that reads compiled files never imports it
        from shapes.sanity import check_document

        problems = tuple(str(p) for p in check_document(doc))
    source = CatalogSource(
        provider=provider,
        path=str(path),
        bundled=bundled,
        prices_as_of=prices_as_of,
        retrieved=_date(doc, "retrieved"),
        price_source=doc["price_source"],
        notes=doc.get("notes", ""),
        shapes=len(shapes),
        spot_as_of=spot_as_of,
        undated=sum(1 for s in shapes if s.undated),
        problems=problems,
    )
    return source, shapes


@dataclass(frozen=True)
class Columns:
    """The catalog's fields as parallel lists, index i = ``Catalog.shapes[i]``.

    Ranking reads these instead of the shape objects: walking 100k objects costs ~0.5 us
    per attribute in cache misses, a list index a few ns (``benchmarks/run.py``, ranking).
    """

    keys: list[str]
    provider: list[str]
    region: list[str]  # lower-cased
    region_name: list[str]  # as written
    gpu: list[str]
    provisioning: list[Provisioning]
    gpus_per_node: list[int]
    price: list[float]
    price_micros: list[int]  # price in millionths of a dollar: exact, for ordering

    @classmethod
    def of(cls, shapes: Sequence[Shape]) -> Columns:
        return cls(
            keys=[s.key for s in shapes],
            provider=[s.provider for s in shapes],
            region=[s.region.lower() for s in shapes],
            region_name=[s.region for s in shapes],
            gpu=[s.gpu for s in shapes],
            provisioning=[s.provisioning for s in shapes],
            gpus_per_node=[s.gpus_per_node for s in shapes],
            price=[s.price_per_node_hour for s in shapes],
            price_micros=[round(s.price_per_node_hour * 1_000_000) for s in shapes],
        )


_by_key = attrgetter("key")
_MARKETS = (Provisioning.ON_DEMAND, Provisioning.SPOT)  # indexed by FileColumns.spot


class _Fields(NamedTuple):
    """The fields a shape needs beyond :class:`Columns`, index i = shape i."""

    instance_type: list[str]
    gpu_memory_gib: list[float]
    vcpus: list[int]
    memory_gib: list[float]
    zones: list[tuple[str, ...]]
    zone_prices: list[dict[str, float] | None]
    day_codes: list[int]  # prices_as_of and undated (shapes.model.day_code)


class ShapeList(Sequence[Shape]):
    """A catalog's shapes, each built on first access from the compiled columns (a quote
    of a 100k-shape catalog reads a few dozen). Equal to any sequence of equal shapes."""

    __slots__ = ("_cols", "_fields", "_items")

    def __init__(self, cols: Columns, fields: _Fields, items: list[Shape | None]) -> None:
        self._cols = cols
        self._fields = fields
        self._items = items

    def __len__(self) -> int:
        return len(self._items)

    @property
    def zone_prices_column(self) -> list[dict[str, float] | None]:
        """Each shape's per-zone prices (None where it has one price), without building it."""
        return self._fields.zone_prices

    @overload
    def __getitem__(self, i: int) -> Shape: ...
    @overload
    def __getitem__(self, i: slice) -> list[Shape]: ...
    def __getitem__(self, i: int | slice) -> Shape | list[Shape]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self._items)))]
        shape = self._items[i]  # IndexError and negative indexes as for a list
        if shape is None:
            shape = self._make(i if i >= 0 else i + len(self._items))
        return shape

    def _make(self, i: int) -> Shape:
        c, f = self._cols, self._fields
        zp = f.zone_prices[i]
        day, undated = day_of(f.day_codes[i])
        shape = prechecked_shape(
            c.provider[i],
            c.region_name[i],
            f.instance_type[i],
            c.gpu[i],
            c.gpus_per_node[i],
            f.gpu_memory_gib[i],
            f.vcpus[i],
            f.memory_gib[i],
            c.provisioning[i],
            c.price[i],
            f.zones[i],
            None if zp is None else dict(zp),
            day,
            undated,
        )
        self._items[i] = shape
        return shape

    def __iter__(self) -> Iterator[Shape]:
        items = self._items
        if items and all(shape is None for shape in items):  # none read yet: build all
            c, f = self._cols, self._fields
            items[:] = prechecked_shapes(
                c.keys,
                c.provider,
                c.region_name,
                f.instance_type,
                c.gpu,
                c.gpus_per_node,
                f.gpu_memory_gib,
                f.vcpus,
                f.memory_gib,
                c.provisioning,
                c.price,
                f.zones,
                f.zone_prices,
                f.day_codes,
            )
            return iter(items)  # type: ignore[arg-type]
        return (shape if shape is not None else self._make(i) for i, shape in enumerate(items))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<ShapeList of {len(self)} shapes>"


class _KeyIndex(Mapping[str, Shape]):
    """Shapes by key, by binary search over the sorted key column: nothing to build."""

    __slots__ = ("_keys", "_shapes")

    def __init__(self, keys: list[str], shapes: Sequence[Shape]) -> None:
        self._keys = keys
        self._shapes = shapes

    def __getitem__(self, key: str) -> Shape:
        keys = self._keys
        i = bisect.bisect_left(keys, key)
        if i < len(keys) and keys[i] == key:
            return self._shapes[i]
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        i = bisect.bisect_left(self._keys, key)
        return i < len(self._keys) and self._keys[i] == key

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


@dataclass(frozen=True, eq=False)
class Catalog:
    """An immutable set of shapes, sorted by id, with the sources they came from.

    Compared and hashed by identity, so per-catalog caches can key on it cheaply. A
    catalog loaded from compiled files (:mod:`shapes.compiled`) holds its columns and
    builds each :class:`Shape` when it is first read (``shapes`` is a :class:`ShapeList`).
    """

    shapes: Sequence[Shape]
    sources: tuple[CatalogSource, ...] = field(default=())

    @classmethod
    def of(cls, shapes: Iterable[Shape], sources: Iterable[CatalogSource] = ()) -> Catalog:
        ordered = sorted(shapes, key=_by_key)
        _refuse_duplicates(ordered)
        return cls(tuple(ordered), tuple(sources))

    @classmethod
    def _of_files(
        cls, parts: list[tuple[CatalogSource, compiled.FileColumns, list[Shape] | None]]
    ) -> Catalog:
        """One catalog from per-file columns (each sorted by key, checked, one provider;
        ``list[Shape]`` when that file was just parsed, None when it came compiled)."""
        sources = tuple(source for source, _, _ in parts)
        providers = [cols.provider for _, cols, _ in parts]
        if len(set(providers)) != len(providers):  # two files of one provider: merge by key
            shapes = [s for _, cols, built in parts for s in (built or _shapes_of(cols))]
            return cls.of(shapes, sources)
        # Every key starts with "<provider>:", and no such prefix is a prefix of another:
        # the files' sorted columns, in order of that prefix, are the catalog's sorted keys.
        ordered = sorted(parts, key=lambda part: part[1].provider + ":")
        files = [cols for _, cols, _ in ordered]

        def cat(name: str) -> list[Any]:
            return list(itertools.chain.from_iterable(getattr(f, name) for f in files))

        spot = cat("spot")
        columns = Columns(
            keys=cat("keys"),
            provider=list(itertools.chain.from_iterable([f.provider] * len(f.keys) for f in files)),
            region=cat("region_lower"),
            region_name=cat("region"),
            gpu=cat("gpu"),
            provisioning=list(map(_MARKETS.__getitem__, spot)),
            gpus_per_node=cat("gpus_per_node"),
            price=cat("price"),
            price_micros=cat("price_micros"),
        )
        fields = _Fields(*(cat(name) for name in _Fields._fields))
        items: list[Shape | None] = []
        for _, cols, built in ordered:
            items.extend(built if built is not None else itertools.repeat(None, len(cols.keys)))
        catalog = cls(ShapeList(columns, fields, items), sources)
        catalog.__dict__["columns"] = columns  # the cached property, already built
        return catalog

    @cached_property
    def providers(self) -> tuple[str, ...]:
        """The providers this catalog has files (or shapes) for, sorted: what ``--provider``
        may name."""
        names = {s.provider for s in self.sources} | set(self.columns.provider)
        return tuple(sorted(names))

    @cached_property
    def regions(self) -> tuple[str, ...]:
        """Every region some shape is in, as written, sorted (from the columns: reading it
        builds no shape)."""
        return tuple(sorted(set(self.columns.region_name)))

    @cached_property
    def columns(self) -> Columns:
        return Columns.of(self.shapes)

    @cached_property
    def zoned(self) -> tuple[int, ...]:
        """Indexes of the shapes whose price varies by zone (read from the columns when
        the catalog came compiled: reading it builds no shape)."""
        shapes = self.shapes
        if isinstance(shapes, ShapeList):
            prices = shapes.zone_prices_column
        else:
            prices = [s.zone_prices for s in shapes]
        return tuple(i for i, zp in enumerate(prices) if zp)

    @cached_property
    def by_key(self) -> Mapping[str, Shape]:
        """Shapes by key (lower-cased id); a view over the sorted keys, built lazily."""
        return _KeyIndex(self.columns.keys, self.shapes)

    def get(self, shape_id: str) -> Shape | None:
        """Look a shape up by id, case-insensitively."""
        return self.by_key.get(shape_key(shape_id))

    @property
    def as_of(self) -> date | None:
        """The oldest price date among the sources; None if any source's date is unknown."""
        stamps = [s.prices_as_of for s in self.sources]
        if not stamps or None in stamps:
            return None
        return min(d for d in stamps if d is not None)

    @property
    def retrieved(self) -> date | None:
        """When the oldest source file was written (not when its prices were read)."""
        stamps = [s.retrieved for s in self.sources if s.retrieved is not None]
        return min(stamps) if stamps else None

    def describe_age(self, today: date | None = None) -> str:
        """One phrase for humans: how old each source's prices are (in days), refreshed
        ones named, those older than :data:`STALE_DAYS` called out: ``prices as of aws
        2026-12-01 (3 days, refreshed), gcp 2026-07-30 (129 days); older than 90 days:
        gcp; price date unknown for azure``."""
        today = today or date.today()
        dated = []
        for s in self.sources:
            if s.prices_as_of is None:
                continue
            notes = [f"{s.age_days(today)} days"]
            if not s.bundled:
                notes.append("refreshed")
            if s.undated:
                notes.append(f"{s.undated} of {s.shapes} prices undated")
            dated.append(f"{s.provider} {s.prices_as_of.isoformat()} ({', '.join(notes)})")
        unknown = sorted({s.provider for s in self.sources if s.prices_as_of is None})
        stale = sorted({s.provider for s in self.sources if s.prices_as_of and s.is_stale(today)})
        parts = [f"prices as of {', '.join(dated)}"] if dated else []
        if stale:
            parts.append(f"older than {STALE_DAYS} days: {', '.join(stale)}")
        if unknown:
            when = f", catalog written {self.retrieved.isoformat()}" if self.retrieved else ""
            parts.append(f"price date unknown for {'/'.join(unknown)}{when}")
        failing = [f"{s.provider} ({len(s.problems)})" for s in self.sources if s.problems]
        if failing:
            parts.append(f"sanity problems in {', '.join(failing)}: see broker catalog check")
        return "; ".join(parts)

    def __len__(self) -> int:
        return len(self.shapes)


def catalog_paths(local_dir: Path | None = None) -> list[tuple[Path, bool]]:
    """The catalog files to load, as (path, bundled): every ``*.json`` of the bundled data
    directory and of ``local_dir``; a local file replaces the bundled one of the same name,
    and a local file of a new name adds a cloud (its name is its provider's)."""
    chosen = {p.name: (p, True) for p in BUNDLED_DIR.glob("*.json")}
    if local_dir is not None and local_dir.is_dir():
        for path in local_dir.glob("*.json"):
            if path.is_file():
                chosen[path.name] = (path, False)
    return [chosen[name] for name in sorted(chosen)]


_CACHE: dict[tuple[tuple[Path, bool, tuple[int, int, int, int]], ...], Catalog] = {}


def load_catalog(local_dir: Path | None = None, *, cache_dir: Path | None = None) -> Catalog:
    """The bundled catalog, with the files of ``local_dir`` (refreshed by ``broker catalog
    refresh``; None: bundled files only) replacing or adding providers. Cached per process
    and per set of files (a file rewritten in place is read again).

    Each file's validated parse is kept compiled (:mod:`shapes.compiled`) next to a local
    file, or in ``cache_dir`` (bundled files, or a directory we cannot write), and later
    loads read that instead while the file is unchanged. ``cache_dir`` None and nowhere
    writable: every load parses the JSON, as it would without compiled files."""
    return _load(catalog_paths(local_dir), cache_dir)


def load_bundled_catalog(*, cache_dir: Path | None = None) -> Catalog:
    """The catalog shipped with the package, ignoring any refreshed files."""
    return load_catalog(None, cache_dir=cache_dir)


def _load(files: list[tuple[Path, bool]], cache_dir: Path | None = None) -> Catalog:
    stamps = []
    for path, bundled in files:
        try:
            st = path.stat()
        except OSError as exc:
            raise CatalogError(f"cannot read catalog {path}: {exc}") from exc
        stamps.append((path, bundled, compiled.file_stamp(st)))
    key = tuple(stamps)
    cached = _CACHE.get(key)
    if cached is not None:
        return cached
    with collector_paused():
        parts = [_load_file(path, bundled, stamp, cache_dir) for path, bundled, stamp in stamps]
        catalog = Catalog._of_files(parts)
    _CACHE[key] = catalog
    return catalog


def _load_file(
    path: Path, bundled: bool, stamp: tuple[int, int, int, int], cache_dir: Path | None
) -> tuple[CatalogSource, compiled.FileColumns, list[Shape] | None]:
    """One file's source and columns: from its compiled sidecar when one matches, else
    from the validating parse (which then writes the sidecar), with the parsed shapes."""
    cols = compiled.read(path, stamp, bundled=bundled, cache_dir=cache_dir)
    source = None if cols is None else _compiled_source(path, bundled, cols)
    if cols is not None and source is not None:
        return source, cols, None
    source, shapes, st = _parse_file(path, bundled)
    shapes.sort(key=_by_key)
    _refuse_duplicates(shapes)
    cols = _file_columns(source, shapes)
    compiled.write(path, compiled.file_stamp(st), cols, bundled=bundled, cache_dir=cache_dir)
    return source, cols, shapes


def _compiled_source(path: Path, bundled: bool, cols: compiled.FileColumns) -> CatalogSource | None:
    """The source stamp a sidecar holds; None if it makes none (the sidecar is not used)."""
    try:
        return CatalogSource(
            provider=cols.provider,
            path=str(path),
            bundled=bundled,
            prices_as_of=None
            if cols.prices_as_of is None
            else date.fromisoformat(cols.prices_as_of),
            retrieved=None if cols.retrieved is None else date.fromisoformat(cols.retrieved),
            price_source=cols.price_source,
            notes=cols.notes,
            shapes=len(cols.keys),
            spot_as_of=None if cols.spot_as_of is None else date.fromisoformat(cols.spot_as_of),
            undated=cols.undated,
            problems=tuple(cols.problems.splitlines()),
        )
    except ValueError:
        return None


def _refuse_duplicates(ordered: Sequence[Shape]) -> None:
    for a, b in itertools.pairwise(ordered):
        if a.key == b.key:
            raise CatalogError(f"duplicate shape id {b.id}")


def _file_columns(source: CatalogSource, shapes: Sequence[Shape]) -> compiled.FileColumns:
    """A checked file's shapes (sorted by key) as compiled columns. Equal values are made
    one object, which :mod:`marshal` then writes once."""
    memo: dict[object, Any] = {}
    one = memo.setdefault
    return compiled.FileColumns(
        provider=source.provider,
        prices_as_of=None if source.prices_as_of is None else source.prices_as_of.isoformat(),
        retrieved=None if source.retrieved is None else source.retrieved.isoformat(),
        price_source=source.price_source,
        notes=source.notes,
        spot_as_of=None if source.spot_as_of is None else source.spot_as_of.isoformat(),
        problems="\n".join(source.problems),
        undated=source.undated,
        keys=[s.key for s in shapes],
        region=[one(s.region, s.region) for s in shapes],
        region_lower=[one(r := s.region.lower(), r) for s in shapes],
        instance_type=[one(s.instance_type, s.instance_type) for s in shapes],
        gpu=[one(s.gpu, s.gpu) for s in shapes],
        gpus_per_node=[s.gpus_per_node for s in shapes],
        gpu_memory_gib=[s.gpu_memory_gib for s in shapes],
        vcpus=[s.vcpus for s in shapes],
        memory_gib=[s.memory_gib for s in shapes],
        spot=[s.provisioning is Provisioning.SPOT for s in shapes],
        price=[s.price_per_node_hour for s in shapes],
        price_micros=[round(s.price_per_node_hour * 1_000_000) for s in shapes],
        zones=[one(s.zones, s.zones) for s in shapes],
        zone_prices=[s.zone_prices for s in shapes],
        day_codes=[day_code(s.prices_as_of, s.undated) for s in shapes],
    )


def _shapes_of(cols: compiled.FileColumns) -> list[Shape]:
    """Every shape of one compiled file."""
    n = len(cols.keys)
    return prechecked_shapes(
        cols.keys,
        [cols.provider] * n,
        cols.region,
        cols.instance_type,
        cols.gpu,
        cols.gpus_per_node,
        cols.gpu_memory_gib,
        cols.vcpus,
        cols.memory_gib,
        list(map(_MARKETS.__getitem__, cols.spot)),
        cols.price,
        cols.zones,
        cols.zone_prices,
        cols.day_codes,
    )


class Rejection(NamedTuple):
    """A filter's verdict on one shape: which filter (``provider``, ``region``, ``gpu``,
    ``provisioning``) removed it, and a sentence saying why."""

    filter: str
    reason: str


@dataclass(frozen=True)
class ShapeFilter:
    """What a user narrows the shapes to. Empty tuples mean "any"; lists are taken as
    tuples. Every GPU name must be known (a family such as ``A100`` selects every size)."""

    gpus: tuple[str, ...] = ()  # as the user typed them (--gpu); families allowed
    providers: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()
    provisioning: Provisioning | None = None

    def __post_init__(self) -> None:
        problems: list[str] = []
        for name in ("gpus", "providers", "regions"):
            value = getattr(self, name)
            why = checks.strings(value)
            if why is not None:
                problems.append(f"{name} {why}")
            elif type(value) is not tuple:
                object.__setattr__(self, name, tuple(value))
        if self.provisioning is not None and not isinstance(self.provisioning, Provisioning):
            problems.append(
                f"provisioning must be a Provisioning or None, got {describe(self.provisioning)}"
            )
        if not problems:
            try:
                self._gpu_names  # noqa: B018 (unknown GPU names are refused here)
            except ValueError as exc:
                problems.append(f"gpus: {exc}")
        if problems:
            raise ValueError(f"invalid shape filter: {'; '.join(problems)}")

    @cached_property
    def _gpu_names(self) -> frozenset[str]:
        names: set[str] = set()
        for query in self.gpus:
            names |= gpu_filter_names(query)
        return frozenset(names)

    @cached_property
    def _providers(self) -> frozenset[str]:
        return frozenset(p.lower() for p in self.providers)

    @cached_property
    def _regions(self) -> frozenset[str]:
        return frozenset(r.lower() for r in self.regions)

    def reject(self, shape: Shape) -> Rejection | None:
        """Which part of this filter removes the shape and why, or None if it keeps it."""
        if self._providers and shape.provider not in self._providers:
            wanted = "/".join(sorted(self._providers))
            return Rejection("provider", f"provider is {shape.provider}, not {wanted}")
        if self._regions and shape.region.lower() not in self._regions:
            wanted = "/".join(sorted(self._regions))
            return Rejection("region", f"region is {shape.region}, not {wanted}")
        if self._gpu_names and shape.gpu not in self._gpu_names:
            wanted = "/".join(sorted(self._gpu_names))
            return Rejection("gpu", f"GPU is {shape.gpu}, not {wanted}")
        if self.provisioning is not None and shape.provisioning is not self.provisioning:
            return Rejection(
                "provisioning",
                f"provisioning is {shape.provisioning.value}, not {self.provisioning.value}",
            )
        return None

    def apply(self, shapes: Sequence[Shape]) -> list[Shape]:
        return [s for s in shapes if self.reject(s) is None]

    def select(self, columns: Columns) -> list[int]:
        """Indexes of the shapes this filter keeps, ascending; same verdicts as :meth:`reject`."""
        idx: list[int] = list(range(len(columns.keys)))
        if self._providers:
            col, want = columns.provider, self._providers
            idx = [i for i in idx if col[i] in want]
        if self._regions:
            col, want = columns.region, self._regions
            idx = [i for i in idx if col[i] in want]
        if self._gpu_names:
            col, want = columns.gpu, self._gpu_names
            idx = [i for i in idx if col[i] in want]
        if self.provisioning is not None:
            pcol, market = columns.provisioning, self.provisioning
            idx = [i for i in idx if pcol[i] is market]
        return idx

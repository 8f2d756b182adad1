"""The shape catalog: bundled, dated price lists, and the filters users apply to them.

The bundled data lives in ``shapes/data/<provider>.json`` (one file per cloud, each stamped
with where its prices come from and when). The local catalog directory
(``BROKER_CATALOG_DIR``, default ``$XDG_DATA_HOME/burst-broker/catalog``) holds newer files
of the same format written by ``broker catalog refresh``; a provider's file there replaces
the bundled one. Loading is pure JSON + validation and runs on every quote, so it
is kept cheap (see ``benchmarks/bench_catalog.py``).
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict

from shapes.errors import CatalogError
from shapes.gpus import gpu_filter_names
from shapes.model import Provisioning, Shape, shape_key

BUNDLED_DIR = Path(__file__).parent / "data"
PROVIDERS = ("aws", "gcp", "azure")


class CatalogSource(BaseModel):
    """Where one provider's prices come from, and how old they are."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: str
    path: str
    bundled: bool
    prices_as_of: date | None
    retrieved: date | None
    price_source: str
    notes: str = ""
    shapes: int

    def age_days(self, today: date | None = None) -> int | None:
        """Days since the prices were read at the source; None when that date is unknown."""
        if self.prices_as_of is None:
            return None
        return ((today or date.today()) - self.prices_as_of).days


def _region_shapes(
    provider: str, instance_type: str, spec: dict[str, Any], region: str, entry: dict[str, Any]
) -> Iterator[Shape]:
    common = {
        "provider": provider,
        "region": region,
        "instance_type": instance_type,
        "gpu": spec["gpu"],
        "gpus_per_node": spec["gpus"],
        "gpu_memory_gib": spec["gpu_memory_gib"],
        "vcpus": spec["vcpus"],
        "memory_gib": spec["memory_gib"],
        "zones": tuple(entry.get("zones", ())),
    }
    on_demand = entry.get("on_demand")
    if on_demand is not None:
        yield Shape.model_validate(
            {**common, "provisioning": Provisioning.ON_DEMAND, "price_per_node_hour": on_demand}
        )
    spot = entry.get("spot")
    if isinstance(spot, dict):
        # Spot prices that vary by zone: keep every zone's price, and quote the highest so
        # a quote (and a --max-price-per-hour cap) holds in whichever zone the gang lands.
        if spot:
            yield Shape.model_validate(
                {
                    **common,
                    "provisioning": Provisioning.SPOT,
                    "price_per_node_hour": max(spot.values()),
                    "zone_prices": spot,
                }
            )
    elif spot is not None:
        yield Shape.model_validate(
            {**common, "provisioning": Provisioning.SPOT, "price_per_node_hour": spot}
        )


def parse_catalog_file(path: Path, *, bundled: bool) -> tuple[CatalogSource, list[Shape]]:
    """Read one provider's catalog file into its source stamp and its shapes."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CatalogError(f"cannot read catalog {path}: {exc}") from exc
    try:
        provider = doc["provider"]
        shapes = [
            shape
            for instance_type, spec in doc["instance_types"].items()
            for region, entry in spec["regions"].items()
            for shape in _region_shapes(provider, instance_type, spec, region, entry)
        ]
        source = CatalogSource(
            provider=provider,
            path=str(path),
            bundled=bundled,
            prices_as_of=doc.get("prices_as_of"),
            retrieved=doc.get("retrieved"),
            price_source=doc["price_source"],
            notes=doc.get("notes", ""),
            shapes=len(shapes),
        )
    except (KeyError, TypeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        raise CatalogError(f"malformed catalog {path}: {exc}") from exc
    return source, shapes


@dataclass(frozen=True)
class Columns:
    """The catalog's fields as parallel lists, index i = ``Catalog.shapes[i]``.

    Ranking reads these instead of the shape objects: walking 100k pydantic objects costs
    ~0.5 us per attribute in cache misses, a list index a few ns (benchmarks/bench_rank.py).
    """

    keys: list[str]
    provider: list[str]
    region: list[str]  # lower-cased
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
            gpu=[s.gpu for s in shapes],
            provisioning=[s.provisioning for s in shapes],
            gpus_per_node=[s.gpus_per_node for s in shapes],
            price=[s.price_per_node_hour for s in shapes],
            price_micros=[round(s.price_per_node_hour * 1_000_000) for s in shapes],
        )


@dataclass(frozen=True, eq=False)
class Catalog:
    """An immutable set of shapes, sorted by id, with the sources they came from.

    Compared and hashed by identity, so per-catalog caches can key on it cheaply.
    """

    shapes: tuple[Shape, ...]
    sources: tuple[CatalogSource, ...] = field(default=())

    @classmethod
    def of(cls, shapes: Iterable[Shape], sources: Iterable[CatalogSource] = ()) -> Catalog:
        ordered = sorted(shapes, key=lambda s: s.key)
        for a, b in itertools.pairwise(ordered):
            if a.key == b.key:
                raise CatalogError(f"duplicate shape id {b.id}")
        return cls(tuple(ordered), tuple(sources))

    @cached_property
    def columns(self) -> Columns:
        return Columns.of(self.shapes)

    @cached_property
    def by_key(self) -> dict[str, Shape]:
        return {s.key: s for s in self.shapes}

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

    def describe_age(self) -> str:
        """One phrase for humans: how old the prices are, or that nobody knows."""
        if self.as_of is not None:
            return f"prices as of {self.as_of.isoformat()}"
        known = sorted({s.provider for s in self.sources if s.prices_as_of is None})
        when = f", catalog written {self.retrieved.isoformat()}" if self.retrieved else ""
        return f"price date unknown for {'/'.join(known)}{when}"

    def __len__(self) -> int:
        return len(self.shapes)


def local_catalog_dir() -> Path:
    """Where refreshed catalogs are written and read: BROKER_CATALOG_DIR, else the user's
    data directory."""
    env = os.environ.get("BROKER_CATALOG_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "burst-broker" / "catalog"


def catalog_paths(override_dir: str | os.PathLike[str] | None = None) -> list[tuple[Path, bool]]:
    """The file to use for each provider: a refreshed one where present, else the bundled one."""
    override = override_dir if override_dir is not None else local_catalog_dir()
    chosen: list[tuple[Path, bool]] = []
    for provider in PROVIDERS:
        local = Path(override) / f"{provider}.json" if override else None
        if local is not None and local.is_file():
            chosen.append((local, False))
        else:
            chosen.append((BUNDLED_DIR / f"{provider}.json", True))
    return chosen


_CACHE: dict[tuple[tuple[Path, bool], ...], Catalog] = {}


def load_catalog(override_dir: str | os.PathLike[str] | None = None) -> Catalog:
    """Load the catalog (cached per process and per set of files)."""
    return _load(tuple(catalog_paths(override_dir)))


def _load(files: tuple[tuple[Path, bool], ...]) -> Catalog:
    cached = _CACHE.get(files)
    if cached is not None:
        return cached
    sources: list[CatalogSource] = []
    shapes: list[Shape] = []
    for path, bundled in files:
        source, found = parse_catalog_file(path, bundled=bundled)
        sources.append(source)
        shapes.extend(found)
    catalog = Catalog.of(shapes, sources)
    _CACHE[files] = catalog
    return catalog


class Rejection(NamedTuple):
    """A filter's verdict on one shape: which filter (``provider``, ``region``, ``gpu``,
    ``provisioning``) removed it, and a sentence saying why."""

    filter: str
    reason: str


def load_bundled_catalog() -> Catalog:
    """The catalog shipped with the package, ignoring any refreshed files."""
    return _load(tuple((BUNDLED_DIR / f"{p}.json", True) for p in PROVIDERS))


class ShapeFilter(BaseModel):
    """What a user narrows the shapes to. Empty tuples mean "any"."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    gpus: tuple[str, ...] = ()  # as the user typed them (--gpu); families allowed
    providers: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()
    provisioning: Provisioning | None = None

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

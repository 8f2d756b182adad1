"""Blocked scopes: where a recent failure says not to ask again for a while.

A scope is a value (zone, region bucket or whole provider, on one backend), never a string
split back apart. ``key`` is its one stored form, which users also type (``broker unblock``).
Pure: no store, no clock. :func:`read_blocks_sqlite` reads the blocks of a SQLite store with
the standard library alone, so a plain quote never pays for SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from shapes.model import Shape


class ScopeKind(StrEnum):
    ZONE = "zone"  # one shape in one zone (a stockout)
    REGION = "region"  # one quota bucket of one market in one region
    PROVIDER = "provider"  # a whole cloud (auth, account-wide quota)


@dataclass(frozen=True)
class BlockScope:
    kind: ScopeKind
    backend: str  # the adapter that served it: the shape's cloud, or "sim"
    provider: str
    region: str | None = None
    zone: str | None = None
    instance_type: str | None = None
    bucket: str | None = None  # the quota bucket (region scopes)
    provisioning: str | None = None

    @classmethod
    def zone_of(cls, backend: str, shape: Shape, zone: str) -> BlockScope:
        return cls(
            ScopeKind.ZONE,
            backend,
            shape.provider,
            region=shape.region,
            zone=zone,
            instance_type=shape.instance_type,
            provisioning=shape.provisioning.value,
        )

    @classmethod
    def region_of(cls, backend: str, shape: Shape, bucket: str) -> BlockScope:
        return cls(
            ScopeKind.REGION,
            backend,
            shape.provider,
            region=shape.region,
            bucket=bucket,
            provisioning=shape.provisioning.value,
        )

    @classmethod
    def provider_of(cls, backend: str, shape: Shape) -> BlockScope:
        return cls(ScopeKind.PROVIDER, backend, shape.provider)

    @property
    def key(self) -> str:
        """``sim/zone:aws:us-east-1:use1-az1:p5.48xlarge:spot``, ``aws/region:aws:us-east-1:
        family-p:spot``, ``gcp/provider:gcp``: unique, stable, what users type."""
        parts: tuple[str | None, ...]
        if self.kind is ScopeKind.ZONE:
            parts = (self.region, self.zone, self.instance_type, self.provisioning)
        elif self.kind is ScopeKind.REGION:
            parts = (self.region, self.bucket, self.provisioning)
        else:
            parts = ()
        return f"{self.backend}/{self.kind.value}:" + ":".join(
            [self.provider, *(p or "" for p in parts)]
        )

    def describe(self) -> str:
        """For people: what is blocked, without the backend prefix."""
        if self.kind is ScopeKind.ZONE:
            return (
                f"{self.provider}:{self.region}:{self.instance_type}:{self.provisioning} "
                f"in zone {self.zone}"
            )
        if self.kind is ScopeKind.REGION:
            return f"{self.provider} {self.region} {self.provisioning} quota ({self.bucket})"
        return f"every {self.provider} shape"


@dataclass(frozen=True)
class Block:
    scope: BlockScope
    reason: str
    until: float


def blocked_shapes(
    shapes: Sequence[Shape],
    blocks: Iterable[Block],
    backend_of: Callable[[Shape], str],
    bucket_of: Callable[[Shape], str],
) -> dict[str, str]:
    """Shapes that cannot be tried now (every zone, its region bucket or its provider
    blocked), keyed by shape key, with the reason: the ranking's ``unavailable`` input."""
    by_key: Mapping[str, Block] = {b.scope.key: b for b in blocks}
    if not by_key:
        return {}
    # Every scope names its backend and provider, and a zone or region scope its region:
    # a shape outside all of them cannot be blocked, and costs no scope built.
    named = {(b.scope.backend, b.scope.provider, b.scope.region) for b in by_key.values()}
    out: dict[str, str] = {}
    for shape in shapes:
        backend = backend_of(shape)
        if (backend, shape.provider, None) not in named and (
            (backend, shape.provider, shape.region) not in named
        ):
            continue
        wide = (
            BlockScope.provider_of(backend, shape),
            BlockScope.region_of(backend, shape, bucket_of(shape)),
        )
        hit = next((by_key[s.key] for s in wide if s.key in by_key), None)
        if hit is not None:
            out[shape.key] = f"{hit.scope.describe()} blocked: {hit.reason}"
            continue
        zones = [by_key.get(BlockScope.zone_of(backend, shape, z).key) for z in shape.zones]
        if zones and all(zones):
            first = zones[0]
            assert first is not None
            out[shape.key] = f"every zone blocked: {first.reason}"
    return out


def blocked_zones(
    shapes: Iterable[Shape], blocks: Iterable[Block], backend_of: Callable[[Shape], str]
) -> dict[str, frozenset[str]]:
    """For shapes priced by zone: the zones of each that are blocked now (shapes with none
    blocked are left out). The ranking then prices such a shape at its cheapest open zone."""
    zone_blocks = {b.scope.key for b in blocks if b.scope.zone is not None}
    if not zone_blocks:
        return {}
    out: dict[str, frozenset[str]] = {}
    for shape in shapes:
        backend = backend_of(shape)
        hit = frozenset(
            z for z in shape.zones if BlockScope.zone_of(backend, shape, z).key in zone_blocks
        )
        if hit:
            out[shape.key] = hit
    return out


_COLUMNS = "kind, backend, provider, region, zone, instance_type, bucket, provisioning"


def block_from_row(row: Sequence[object]) -> Block:
    """A Block from (kind, backend, provider, region, zone, instance_type, bucket,
    provisioning, reason, until): the column order of the store's ``blocks`` table."""
    kind, backend, provider, region, zone, itype, bucket, prov, reason, until = row
    scope = BlockScope(
        ScopeKind(str(kind)),
        str(backend),
        str(provider),
        region=None if region is None else str(region),
        zone=None if zone is None else str(zone),
        instance_type=None if itype is None else str(itype),
        bucket=None if bucket is None else str(bucket),
        provisioning=None if prov is None else str(prov),
    )
    return Block(scope, str(reason), float(str(until)))


def read_blocks_sqlite(path: Path, now: float) -> list[Block]:
    """The active blocks of the SQLite store at ``path``, read-only, with the standard
    library; [] when there is no store yet. Errors are sqlite3.Error (the caller names them)."""
    if not path.is_file() or path.stat().st_size == 0:
        return []
    uri = f"{path.resolve().as_uri()}?mode=ro"
    import sqlite3  # only when a store exists

    with closing(sqlite3.connect(uri, uri=True, timeout=30)) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "blocks" not in tables:
            return []
        columns = {r[1] for r in db.execute("PRAGMA table_info(blocks)")}
        if "kind" not in columns:  # a store from before scopes were values: no usable blocks
            return []
        rows = db.execute(
            f"SELECT {_COLUMNS}, reason, until FROM blocks WHERE until > ? AND kind IS NOT NULL",
            (now,),
        ).fetchall()
    return [block_from_row(r) for r in rows]


__all__ = [
    "Block",
    "BlockScope",
    "ScopeKind",
    "block_from_row",
    "blocked_shapes",
    "blocked_zones",
    "read_blocks_sqlite",
]

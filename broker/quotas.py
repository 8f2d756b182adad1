"""Quota-aware failover: know the quota before asking, skip the regions where a gang cannot fit.

Readings (providers.quotas) come from the adapters (``quotas(region)``) and are cached in the
store's ``quota_readings`` table for :data:`QUOTA_TTL` seconds: one row per quota, plus a
*marker* row (bucket ``""``) per region read, holding what could not be read. The
provisioner asks a :class:`QuotaGate` before each plan: a plan whose gang needs more of a
quota than is free is skipped without a launch call (cause ``quota``, with the numbers); an
attempt the cloud refuses for quota refreshes the region's readings. A quota that cannot be
read (a missing permission) is said once, and the plan is tried as before.

:func:`read_quota_rows_sqlite` reads the cache of a SQLite store with the standard library,
so ``broker quote --explain`` never loads SQLAlchemy or a cloud SDK.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from providers.base import QuotaSource
from providers.errors import ProviderError
from providers.quotas import (
    GLOBAL,
    QuotaReading,
    QuotaReport,
    QuotaUnit,
    Shortfall,
    needs,
    shortfalls,
    unknown,
)

if TYPE_CHECKING:
    from broker.state import Store
    from providers.base import Provider
    from shapes.model import Shape

QUOTA_TTL = 300.0  # seconds a reading is trusted: quotas change rarely, usage often
MARKER = ""  # the bucket of a region's marker row


def rows_of(report: QuotaReport, now: float) -> list[dict[str, Any]]:
    """The store rows of a report: its readings, and the region's marker (its warnings)."""
    rows: list[dict[str, Any]] = [
        {
            "provider": r.provider,
            "region": r.region,
            "bucket": r.bucket,
            "name": r.name,
            "unit": r.unit.value,
            "market": r.market,
            "quota_limit": r.limit,
            "usage": r.usage,
            "note": None,
            "read_at": now,
        }
        for r in report.readings
    ]
    rows.append(
        {
            "provider": report.provider,
            "region": report.region,
            "bucket": MARKER,
            "name": None,
            "unit": None,
            "market": None,
            "quota_limit": None,
            "usage": None,
            "note": "\n".join(report.warnings) or None,
            "read_at": now,
        }
    )
    return rows


def reports_of(
    rows: Iterable[Mapping[str, Any]], *, now: float, ttl: float = QUOTA_TTL
) -> dict[tuple[str, str], QuotaReport]:
    """(provider, region) -> the cached report of every region read within ``ttl``; each
    holds its region's readings and the provider's ``global`` ones read within ``ttl``."""
    fresh = [r for r in rows if float(r["read_at"]) >= now - ttl]
    readings: dict[tuple[str, str], list[QuotaReading]] = {}
    for r in fresh:
        if r["bucket"] == MARKER or r["quota_limit"] is None:
            continue
        reading = QuotaReading(
            provider=str(r["provider"]),
            region=str(r["region"]),
            bucket=str(r["bucket"]),
            name=str(r["name"] or r["bucket"]),
            unit=QuotaUnit(str(r["unit"])),
            market=str(r["market"] or ""),
            limit=float(r["quota_limit"]),
            usage=float(r["usage"] or 0.0),
        )
        readings.setdefault((reading.provider, reading.region), []).append(reading)
    reports: dict[tuple[str, str], QuotaReport] = {}
    for r in fresh:
        if r["bucket"] != MARKER:
            continue
        provider, region = str(r["provider"]), str(r["region"])
        found = readings.get((provider, region), []) + readings.get((provider, GLOBAL), [])
        note = str(r["note"] or "")
        reports[(provider, region)] = QuotaReport(
            provider,
            region,
            tuple(found),
            tuple(line for line in note.split("\n") if line),
            read_at=float(r["read_at"]),
        )
    return reports


_COLUMNS = (
    "provider",
    "region",
    "bucket",
    "name",
    "unit",
    "market",
    "quota_limit",
    "usage",
    "note",
    "read_at",
)


def read_quota_rows_sqlite(path: Path) -> list[dict[str, Any]]:
    """The cached quota rows of a SQLite store, read with the standard library ([] when
    the store or its table does not exist yet). Opens the file read-only."""
    if not path.exists():
        return []
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
        have = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'quota_readings'"
        ).fetchone()
        if have is None:
            return []
        rows = db.execute(f"SELECT {', '.join(_COLUMNS)} FROM quota_readings").fetchall()
    return [dict(zip(_COLUMNS, row, strict=True)) for row in rows]


def plan_shortfalls(
    source: str, shape: Shape, nodes: int, reports: Mapping[tuple[str, str], QuotaReport]
) -> list[Shortfall]:
    """What a gang would lack, by the cached reports alone (no report: nothing known)."""
    report = reports.get((source, shape.region))
    if report is None:
        return []
    return shortfalls(needs(source, shape, nodes), report.readings)


class QuotaGate:
    """The provisioner's quota check: cached readings first, a live read when they are
    missing or stale, at most once per region and run (a refusal for quota reads again)."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], float],
        say: Callable[[str], None],
        ttl: float = QUOTA_TTL,
    ) -> None:
        self.store = store
        self.clock = clock
        self.say = say
        self.ttl = ttl
        self._reports: dict[tuple[str, str], QuotaReport] = {}
        self._warned: set[tuple[str, str]] = set()

    def shortfalls(self, provider: Provider, shape: Shape, nodes: int) -> list[Shortfall]:
        """The quotas a gang of ``nodes`` x ``shape`` would exceed on ``provider`` ([]:
        it fits, or nothing is known, or the provider cannot read quotas)."""
        if not isinstance(provider, QuotaSource):
            return []
        wanted = needs(provider.name, shape, nodes)
        if not wanted:
            return []
        report = self._report(provider, shape.region)
        short = shortfalls(wanted, report.readings)
        if not short and unknown(wanted, report.readings):
            self._warn(report)
        return short

    def refresh(self, provider: Provider, region: str) -> None:
        """Read the region again (an attempt was refused for quota: usage moved)."""
        if isinstance(provider, QuotaSource):
            self._live(provider, region)

    def _report(self, provider: QuotaSource, region: str) -> QuotaReport:
        key = (provider.name, region)
        known = self._reports.get(key)
        if known is not None:
            return known
        rows = self.store.quota_rows(provider=provider.name, regions=(region, GLOBAL))
        cached = reports_of(rows, now=self.clock(), ttl=self.ttl).get(key)
        if cached is not None:
            self._reports[key] = cached
            return cached
        return self._live(provider, region)

    def _live(self, provider: QuotaSource, region: str) -> QuotaReport:
        try:
            report = provider.quotas(region)
        except ProviderError as exc:
            report = QuotaReport(
                provider.name,
                region,
                warnings=(f"the quotas of {region} could not be read: {exc}",),
            )
        now = self.clock()
        self.store.save_quotas(rows_of(report, now))
        report = QuotaReport(
            report.provider, report.region, report.readings, report.warnings, read_at=now
        )
        self._reports[(provider.name, region)] = report
        return report

    def _warn(self, report: QuotaReport) -> None:
        key = (report.provider, report.region)
        if key in self._warned or not report.warnings:
            return
        self._warned.add(key)
        for line in report.warnings[:3]:
            self.say(f"  quota unknown on {report.provider} {report.region}: {line}")
        self.say(f"  ({report.provider} {report.region} is tried without a quota check)")


def describe_shortfalls(short: Sequence[Shortfall]) -> str:
    return "; ".join(s.describe() for s in short)


__all__ = [
    "MARKER",
    "QUOTA_TTL",
    "QuotaGate",
    "describe_shortfalls",
    "plan_shortfalls",
    "read_quota_rows_sqlite",
    "reports_of",
    "rows_of",
]

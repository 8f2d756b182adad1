"""``broker quotas`` (read the clouds' quotas live, show limit / in use / free per quota, and
keep them for the provisioner) and the quota part of ``broker quote --explain`` (which plans
the cached readings say would be skipped: no cloud call, no SDK, no SQLAlchemy on SQLite)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from broker.cli.output import emit_json, say
from broker.cli.render import table
from broker.settings import Settings
from shapes.errors import Exit

if TYPE_CHECKING:
    from broker.api import Broker
    from broker.ranking import Plan
    from providers.quotas import QuotaReport, Shortfall

SIM = "sim"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return "now"
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.0f}h ago"


def _num(value: float) -> str:
    return f"{value:g}"


def _targets(args: argparse.Namespace, broker: Broker) -> list[tuple[str, list[str]]]:
    """(provider, regions) to read: the named providers (default: every enabled cloud;
    sim only when named), each in --region or its configured regions."""
    from broker.diagnostics import Diagnostic
    from broker.errors import InvalidRequest
    from providers.clouds import KNOWN_PROVIDERS

    named = list(dict.fromkeys(args.provider or ()))
    unknown = [p for p in named if p not in (*KNOWN_PROVIDERS, SIM)]
    if unknown:
        raise InvalidRequest(
            [
                Diagnostic(
                    field="provider",
                    message=f"unknown provider {unknown[0]!r} "
                    f"(known: {', '.join((*KNOWN_PROVIDERS, SIM))})",
                )
            ]
        )
    chosen = named or list(broker.config.broker.providers)
    targets: list[tuple[str, list[str]]] = []
    for name in chosen:
        if name == SIM:  # no configuration needed
            scenario = broker.sim_scenario
            regions = sorted(scenario.regions) if scenario is not None else []
        else:
            regions = sorted(broker.config.regions(name) or ())
        if args.region:
            regions = list(dict.fromkeys(args.region))
        targets.append((name, regions))
    return targets


def _read_live(broker: Broker, targets: Sequence[tuple[str, list[str]]]) -> list[QuotaReport]:
    """Read every target region now and keep the readings in the store's cache."""
    from broker.quotas import rows_of
    from providers.base import QuotaSource
    from providers.errors import ProviderError
    from providers.quotas import QuotaReport

    reports: list[QuotaReport] = []
    for name, regions in targets:
        try:
            provider = broker.provider(name)
        except ProviderError as exc:
            reports.append(QuotaReport(name, "-", warnings=(f"{name} cannot be used: {exc}",)))
            continue
        if not isinstance(provider, QuotaSource):
            reports.append(QuotaReport(name, "-", warnings=(f"{name} has no quota reading",)))
            continue
        for region in regions:
            try:
                report = provider.quotas(region)
            except ProviderError as exc:
                report = QuotaReport(name, region, warnings=(f"could not be read: {exc}",))
            now = broker.clock()
            broker.store.save_quotas(rows_of(report, now))
            reports.append(
                QuotaReport(report.provider, region, report.readings, report.warnings, now)
            )
    return reports


def _cached(broker: Broker, targets: Sequence[tuple[str, list[str]]]) -> list[QuotaReport]:
    """The cache as it is (any age), for the targets: no cloud call."""
    from broker.quotas import reports_of

    wanted = {(name, region) for name, regions in targets for region in regions}
    found = reports_of(cached_rows(broker), now=broker.clock(), ttl=float("inf"))
    return [found[key] for key in sorted(found) if key in wanted]


def cached_rows(broker: Broker) -> list[dict[str, Any]]:
    """The store's cached quota rows; a SQLite store read with the standard library."""
    from broker.errors import StoreError
    from broker.quotas import read_quota_rows_sqlite
    from broker.settings import STATE_DB_FILENAME

    if broker.store_url or "store" in broker.__dict__:
        return broker.store.quota_rows()
    path = broker.state_dir / STATE_DB_FILENAME
    try:
        return read_quota_rows_sqlite(path)
    except Exception as exc:  # sqlite3.Error, OSError: say which store, touch nothing
        raise StoreError(f"cannot read the quota cache of the store {path}: {exc}") from None


def quotas_document(reports: Sequence[QuotaReport], now: float) -> dict[str, Any]:
    quotas: list[dict[str, Any]] = []
    warnings: list[dict[str, str]] = []
    for report in reports:
        age = None if report.read_at is None else max(now - report.read_at, 0.0)
        for r in report.readings:
            quotas.append(
                {
                    "provider": r.provider,
                    "region": r.region,
                    "quota": r.bucket,
                    "name": r.name,
                    "market": r.market,
                    "unit": r.unit.value,
                    "limit": r.limit,
                    "usage": r.usage,
                    "free": r.free,
                    "read_at": report.read_at,
                    "age_seconds": age,
                }
            )
        for w in report.warnings:
            warnings.append({"provider": report.provider, "region": report.region, "message": w})
    return {"quotas": quotas, "warnings": warnings}


def cmd_quotas(args: argparse.Namespace, settings: Settings) -> int:
    from broker.api import Broker

    broker = Broker(settings)
    targets = _targets(args, broker)
    if not targets:
        say(
            "broker: no cloud is configured here: enable one under [broker] providers in the "
            "configuration file (`broker providers` says where it is read from), or use "
            "--provider sim"
        )
        return Exit.INVALID
    reports = _cached(broker, targets) if args.cached else _read_live(broker, targets)
    unusable = [r for r in reports if r.region == "-"]
    if unusable and len(unusable) == len(reports):  # not one provider could be opened
        for r in unusable:
            say(f"broker: error: {r.warnings[0]}")
        return Exit.INVALID
    now = broker.clock()
    doc = quotas_document(reports, now)
    if args.json:
        emit_json(doc)
        return Exit.OK
    seen: set[tuple[str, str, str]] = set()
    rows: list[tuple[object, ...]] = []
    for q in doc["quotas"]:
        key = (q["provider"], q["region"], q["quota"])
        if key in seen:  # a project-wide quota shows once, with the first region read
            continue
        seen.add(key)
        rows.append(
            (
                q["provider"],
                q["region"],
                q["quota"],
                q["market"],
                q["unit"],
                _num(q["limit"]),
                _num(q["usage"]),
                _num(q["free"]),
                _age(q["age_seconds"]),
            )
        )
    if rows:
        headers = ["PROVIDER", "REGION", "QUOTA", "MARKET", "UNIT", "LIMIT", "IN USE", "FREE"]
        print(table([*headers, "READ"], rows, right={5, 6, 7}))
    elif args.cached:
        print("no cached quota readings (`broker quotas` reads them live)")
    for w in doc["warnings"]:
        say(f"warning: {w['provider']} {w['region']}: {w['message']}")
    if not args.cached and rows:
        say("(kept for the provisioner: a plan whose gang does not fit is skipped without a call)")
    return Exit.OK


# -- broker quote --explain -------------------------------------------------------------------


@dataclass(frozen=True)
class QuotaSkip:
    rank: int  # the plan's place in the quote (1-based)
    plan: Plan
    short: tuple[Shortfall, ...]
    age: float | None  # seconds since the region was read


def quota_skips(broker: Broker, plans: Sequence[Plan]) -> list[QuotaSkip]:
    """The plans the cached readings say the provisioner would skip for quota."""
    from broker.quotas import QUOTA_TTL, plan_shortfalls, reports_of

    rows = cached_rows(broker)
    if not rows:
        return []
    now = broker.clock()
    reports = reports_of(rows, now=now, ttl=QUOTA_TTL)
    found: list[QuotaSkip] = []
    for rank, plan in enumerate(plans, start=1):
        source = broker.backend or plan.shape.provider
        short = plan_shortfalls(source, plan.shape, plan.nodes, reports)
        if short:
            read_at = reports[(source, plan.shape.region)].read_at
            age = None if read_at is None else max(now - read_at, 0.0)
            found.append(QuotaSkip(rank, plan, tuple(short), age))
    return found


def quota_skips_document(skips: Sequence[QuotaSkip]) -> list[dict[str, Any]]:
    return [
        {
            "plan": s.rank,
            "shape_id": s.plan.shape.id,
            "nodes": s.plan.nodes,
            "age_seconds": s.age,
            "shortfalls": [
                {
                    "quota": f.reading.bucket,
                    "region": f.reading.region,
                    "unit": f.reading.unit.value,
                    "needed": f.need.amount,
                    "free": f.reading.free,
                    "limit": f.reading.limit,
                    "usage": f.reading.usage,
                }
                for f in s.short
            ],
        }
        for s in skips
    ]


def print_quota_skips(skips: Sequence[QuotaSkip]) -> None:
    if not skips:
        return
    print(f"\nSkipped for quota by `broker provision` (cached readings; {len(skips)} plan(s)):")
    for s in skips:
        why = "; ".join(f.describe() for f in s.short)
        print(f"  #{s.rank} {s.plan.shape.id} (read {_age(s.age)}): {why}")


__all__ = [
    "QuotaSkip",
    "cached_rows",
    "cmd_quotas",
    "print_quota_skips",
    "quota_skips",
    "quota_skips_document",
    "quotas_document",
]

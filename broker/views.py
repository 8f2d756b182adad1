"""The JSON documents the broker shows: one function per document, plain JSON types only.

The CLI prints these (``--json``) and renders its human tables from them; the HTTP API
returns them. Money is exact (only human tables round); times are ISO 8601 UTC with a ``Z``.
Nothing here reads the store or decides anything: each function maps a value to a document.
Importing this module loads no pydantic, SQLAlchemy or cloud SDK (the quote path uses it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from datetime import date
from json.encoder import encode_basestring_ascii
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from broker.api import ClusterReport, LogPage
    from broker.credits import CreditsSummary
    from broker.diagnostics import Diagnostic
    from broker.quote import Quote
    from broker.ranking import Plan
    from broker.reconcile import ReconcileReport
    from broker.scopes import Block
    from broker.state import AttemptRecord, ClusterRecord, NodeRecord, TokenRecord
    from shapes.catalog import Catalog
    from shapes.errors import BrokerError
    from shapes.model import Shape

Document = dict[str, Any]


def when(ts: float | None) -> str | None:
    """A store timestamp as ISO 8601 UTC (``2026-12-01T21:14:09Z``), None for None."""
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


# -- quotes and shapes ----------------------------------------------------------------------


def shape_document(shape: Shape, today: date | None = None) -> Document:
    """A shape's fields, with how old its price is (``price_age_days``: days since its
    ``prices_as_of``, counted from ``today``; null when undated)."""
    doc = shape.to_json_dict()
    doc["price_age_days"] = shape.age_days(today)
    return doc


def plan_document(quote: Quote, rank_no: int, plan: Plan, today: date | None = None) -> Document:
    """One plan of ``broker quote --json``. Its price's date: ``prices_as_of`` (the
    shape's: its region's or its catalog file's; spot's own sampling date), null when
    ``undated`` (carried from an older catalog); ``price_age_days`` counted from
    ``today``."""
    from broker.ranking import order_zones  # loaded with the quote already

    s = plan.shape
    price = plan.price_per_hour
    day = s.prices_as_of
    if today is None:
        today = date.today()
    if s.zone_prices:  # priced by zone: the order tried, and the price in each
        zones = order_zones(s)
        zone_prices: list[float] | None = [plan.price_in_zone(z) for z in zones]
        top = plan.price_per_hour_max
    else:
        zones, zone_prices, top = list(s.zones), None, price
    return {
        "rank": rank_no,
        "shape_id": s.id,
        "provider": s.provider,
        "region": s.region,
        "instance_type": s.instance_type,
        "gpu": s.gpu,
        "gpus_per_node": s.gpus_per_node,
        "nodes": plan.nodes,
        "procs_per_node": plan.procs_per_node,
        "gpus_billed": plan.gpus_billed,
        "provisioning": s.provisioning.value,
        "price_per_node_hour": s.price_per_node_hour,
        "price_per_hour": price,
        "price_per_hour_max": top,
        "estimated_cost": price * quote.request.hours,
        "zones": zones,  # in the order the provisioner tries them
        "zone_prices_per_hour": zone_prices,  # the plan's price in each (None: one price)
        "prices_as_of": None if day is None else _ISO_DAYS.get(day) or _iso_day(day),
        "price_age_days": None if day is None else (today - day).days,
        "undated": s.undated,
    }


def _iso_day(day: date) -> str:
    text = _ISO_DAYS[day] = day.isoformat()
    return text


_ISO_DAYS: dict[date, str] = {}  # the few days a catalog names, written once


def quote_document(
    quote: Quote, *, limit: int | None = None, today: date | None = None
) -> Document:
    """``broker quote --json``; ``limit`` None or 0 shows every plan. Money is exact:
    ``price_per_hour`` is nodes x the catalog's node price, as a float, never rounded."""
    r = quote.request.rank
    flt = r.filter
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    plans = quote.plans if not limit else quote.plans[:limit]
    today = today or date.today()  # one day for every plan's age
    return {
        "request": {
            "gpus": r.gpus,
            "hours": quote.request.hours,
            "compute_mode": "burst",
            "burst_max_gpus": r.burst_max_gpus,
            "priority": list(r.priority) if r.priority is not None else None,
            "priority_used": quote.ranking.priority_used,
            "strict_priority": r.strict_priority,
            "filters": {
                "gpu": list(flt.gpus),
                "provider": list(flt.providers),
                "region": list(flt.regions),
                "provisioning": flt.provisioning.value if flt.provisioning else None,
                "max_price_per_hour": r.max_price_per_hour,
            },
            "launch_file": quote.request.launch_file,
            "experiment_name": quote.request.experiment_name,
        },
        "plans": [plan_document(quote, i, p, today) for i, p in enumerate(plans, start=1)],
        "plans_total": len(quote.plans),
        "excluded": [
            {"shape_id": e.shape_id, "rule": e.rule.value, "reason": e.reason}
            for e in quote.ranking.excluded
        ],
        "warnings": [diagnostic_document(w) for w in quote.warnings],
        "catalog": catalog_document(quote.catalog, today),
    }


def quote_json(quote: Quote, *, limit: int | None = None, today: date | None = None) -> str:
    """``json.dumps(quote_document(...), indent=2)``, the same text, in about half the time:
    the standard library's indenting encoder is pure Python and generic, so the plans (all
    of them by default: 100k for a 100k-shape catalog) are written by :func:`_flat_object`."""
    doc = quote_document(quote, limit=limit, today=today)
    plans = doc["plans"]
    doc["plans"] = []
    text = json.dumps(doc, indent=2)
    if not plans:
        return text
    marker = '\n  "plans": [],\n'  # the one key at the top level's indent
    body = ",\n".join([_flat_object(p, "    ") for p in plans])
    return text.replace(marker, f'\n  "plans": [\n{body}\n  ],\n', 1)


def _flat_object(doc: Document, pad: str) -> str:
    """One JSON object of scalars and lists of scalars, as ``json.dumps(indent=2)`` writes
    it at indent ``pad``."""
    inner = pad + "  "
    parts = []
    for key, value in doc.items():
        if type(value) is list:
            if value:
                items = f",\n{inner}  ".join([_scalar(v) for v in value])
                text = f"[\n{inner}  {items}\n{inner}]"
            else:
                text = "[]"
        else:
            text = _scalar(value)
        parts.append(f"{_string(key)}: {text}")
    return f"{pad}{{\n{inner}" + f",\n{inner}".join(parts) + f"\n{pad}}}"


def _scalar(value: object) -> str:
    if isinstance(value, str):
        return _string(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, float):
        if value != value or value in (_INF, -_INF):
            raise ValueError(f"{value} is not JSON")  # never: prices are checked finite
        return float.__repr__(value)
    if isinstance(value, int):
        return int.__repr__(value)
    raise TypeError(f"not a JSON scalar: {value!r}")


_string = encode_basestring_ascii  # C; what json.dumps uses with ensure_ascii


_INF = float("inf")


def catalog_document(catalog: Catalog, today: date | None = None) -> Document:
    as_of = catalog.as_of
    retrieved = catalog.retrieved
    return {
        "as_of": as_of.isoformat() if as_of else None,
        "retrieved": retrieved.isoformat() if retrieved else None,
        "shapes": len(catalog),
        "sources": [
            {
                "provider": s.provider,
                "prices_as_of": s.prices_as_of.isoformat() if s.prices_as_of else None,
                "retrieved": s.retrieved.isoformat() if s.retrieved else None,
                "age_days": s.age_days(today),
                "stale": s.is_stale(today),  # older than 90 days, or undated
                "spot_as_of": s.spot_as_of.isoformat() if s.spot_as_of else None,
                "undated_prices": s.undated,  # shapes whose price has no date
                "sanity_problems": len(s.problems),
                "bundled": s.bundled,
                "price_source": s.price_source,
                "shapes": s.shapes,
            }
            for s in catalog.sources
        ],
    }


# -- errors -----------------------------------------------------------------------------------


def diagnostic_document(d: Diagnostic) -> Document:
    return {"field": d.field, "message": d.message, "line": d.line}


def errors_document(errors: Sequence[Diagnostic], warnings: Sequence[Diagnostic] = ()) -> Document:
    """``{"errors": [...], "warnings": [...]}``: what every ``--json`` command prints on error."""
    return {
        "errors": [diagnostic_document(e) for e in errors],
        "warnings": [diagnostic_document(w) for w in warnings],
    }


def error_document(exc: BrokerError) -> Document:
    """Any named error as the errors document (one error, no field), with its kind."""
    doc = errors_document(getattr(exc, "errors", None) or [], getattr(exc, "warnings", ()))
    if not doc["errors"]:
        doc["errors"] = [{"field": None, "message": str(exc), "line": None}]
    doc["error"] = type(exc).__name__
    return doc


# -- clusters ---------------------------------------------------------------------------------


# What the provisioner does after a failed attempt, by the reach of its error (the
# provisioner decides from the reach alone, so the reach says it exactly).
NEXT_STEP: Mapping[str, str] = {
    "call": "retried, then next zone",
    "zone": "next zone",
    "region": "next region",
    "provider": "skipped the cloud",
    "request": "failed the request",
}
# The outcomes of an attempt that did not fail (nothing came next because of it).
_NO_NEXT: Mapping[str, str] = {
    "running": "ran the gang",
    "intent": "in flight (or its process died)",
    "cancelled": "stopped by someone else",
    "interrupted": "stopped by a signal",
    "aborted": "stopped by a broker error",
}
_SKIPS_LEAD = "skipped without a call: "


def next_step(outcome: str, reach: str | None) -> str:
    """What the broker did after an attempt: from its outcome, or its error's reach."""
    if outcome in _NO_NEXT:
        return _NO_NEXT[outcome]
    step = NEXT_STEP.get(reach or "", "moved on")
    return f"{step} (nodes may be left: see reconcile)" if outcome == "leaked" else step


def skip_summary(skips: Mapping[str, int]) -> str:
    """Plans and zones skipped without a launch call, by cause: ``"skipped without a call:
    4 blocked, 2 not configured"`` ("" for none). The provisioner ends a FAILED cluster's
    detail with it, so ``describe`` and the service's clients read the same counts
    (:func:`skips_in`); causes are free words (``blocked``, ``not configured``, ``quota``)."""
    parts = [f"{n} {cause}" for cause, n in sorted(skips.items(), key=lambda x: (-x[1], x[0])) if n]
    return _SKIPS_LEAD + ", ".join(parts) if parts else ""


def skips_in(detail: str | None) -> dict[str, int]:
    """The counts :func:`skip_summary` wrote at the end of a cluster's detail ({} if none)."""
    if not detail or _SKIPS_LEAD not in detail:
        return {}
    found: dict[str, int] = {}
    for part in detail.rsplit(_SKIPS_LEAD, 1)[1].split(", "):
        count, _, cause = part.strip().partition(" ")
        if count.isdigit() and cause:
            found[cause] = found.get(cause, 0) + int(count)
    return found


def attempt_document(a: AttemptRecord) -> Document:
    outcome = str(a.outcome)
    return {
        "attempt": a.attempt_no,
        "cycle": a.cycle,
        "shape_id": a.shape_id,
        "zone": a.zone,
        "nodes": a.nodes,
        "outcome": outcome,
        "error_code": a.error_code,
        "reach": a.reach,
        "next": next_step(outcome, a.reach),
        "reason": a.reason,
        "message": a.message,
        "retries": a.retries,
        "nodes_created": a.nodes_created,
        "nodes_cleaned": a.nodes_cleaned,
        "duration_s": a.duration,
    }


def node_document(n: NodeRecord) -> Document:
    return {
        "rank": n.rank,
        "provider_id": n.provider_id,
        "private_ip": n.private_ip,
        "zone": n.zone,
    }


def cluster_document(c: ClusterRecord, attempts: Sequence[AttemptRecord] | None = None) -> Document:
    doc: Document = {
        "cluster_id": c.id,
        "org": c.org,
        "name": c.name,
        "mode": c.mode,
        "gpus": c.gpus,
        "status": c.status.value,
        "reason": c.reason,
        "detail": c.detail,
        "cycle": c.cycle,
        "backend": c.backend,
        "shape_id": c.shape_id,
        "provider": c.provider,
        "region": c.region,
        "zone": c.zone,
        "nodes": [node_document(n) for n in c.nodes],
        "procs_per_node": c.procs_per_node,
        "gpus_billed": c.gpus_billed,
        "price_per_hour": c.price_per_hour,
        "created_at": when(c.created_at),
        "updated_at": when(c.updated_at),
    }
    if attempts is not None:
        doc["attempts"] = [attempt_document(a) for a in attempts]
        doc["skipped"] = skips_in(c.detail) if c.status.value == "FAILED" else {}
    return doc


def report_document(r: ClusterReport) -> Document:
    """``broker describe --json``: the cluster, its attempts, lifecycle and usage."""
    from broker.recovery import max_recoveries_of, recoveries_made

    doc = cluster_document(r.cluster, r.attempts)
    doc["transitions"] = [
        {
            "cycle": t.cycle,
            "status": t.status.value,
            "at": when(t.at),
            "reason": t.reason,
            "detail": t.detail,
        }
        for t in r.transitions
    ]
    doc["gpu_hours"] = r.usage.gpu_hours
    doc["cost"] = r.usage.cost
    if r.syncs:  # what the nodes' artifact syncs sent, per cycle, rank and kind
        doc["artifact_syncs"] = r.syncs
    experiment = r.cluster.experiment or {}
    if experiment.get("command"):
        doc["run"] = {  # what the nodes run ("image": null is on the host)
            "command": experiment["command"],
            "image": experiment.get("image") or None,
            "datasets": list(experiment.get("dataset_id_list") or ()),
            "max_hours": experiment.get("max_hours"),  # per run; None: unlimited
            "max_recoveries": max_recoveries_of(r.cluster),  # its own, else the default
            "recoveries": recoveries_made(r.transitions),
        }
    return doc


def logs_document(page: LogPage) -> Document:
    """``broker logs --json`` and ``GET /v1/clusters/{id}/logs``: a rank's lines, oldest
    first; ``next_after`` continues from the last one (``after=``)."""
    return {
        "cluster_id": page.cluster.id,
        "status": page.cluster.status.value,
        "rank": page.rank,
        "lines": [{"id": x.id, "cycle": x.cycle, "seq": x.seq, "line": x.line} for x in page.lines],
        "dropped": page.dropped,
        "next_after": page.lines[-1].id if page.lines else None,
    }


def token_document(t: TokenRecord, secret: str | None = None) -> Document:
    """A token as ``broker token list --json`` shows it; ``secret`` only when just made."""
    doc: Document = {
        "token_id": t.id,
        "org": t.org,
        "name": t.name,
        "role": t.role,
        "created_at": when(t.created_at),
        "revoked_at": when(t.revoked_at),
    }
    if secret is not None:
        doc["token"] = secret
    return doc


def env_document(env: Mapping[str, str]) -> Document:
    return dict(env)


def util_document(util: Mapping[str, Mapping[str, float]], credits: CreditsSummary) -> Document:
    """``broker util --json`` and ``GET /v1/util``. ``providers``: per provider (or backend)
    the clusters, GPUs starting and running, and spend per hour. ``credits``: one entry per
    organisation (the caller's; a local, unscoped broker's lists every organisation with a
    grant or a live cluster, ``credits_more`` counting those left out): ``has_grant`` false
    means no grant, so no limit, and its USD figures and ``hours_left`` are null;
    ``burn_per_hour`` is what its live clusters cost per hour now (those accounting bills:
    STARTING, RUNNING, TERMINATING); ``hours_left`` is what is left at that rate, null when
    nothing burns."""
    return {
        "providers": {name: dict(row) for name, row in sorted(util.items())},
        "credits": [c.to_json_dict() for c in credits.orgs],
        "credits_more": credits.more,
    }


def reconcile_document(report: ReconcileReport) -> Document:
    return {
        "terminated": [
            {"provider_id": n.provider_id, "shape_id": n.shape_id, "cluster_id": n.cluster_id}
            for n in report.terminated
        ],
        "settled": list(report.settled),
        "lost": list(report.lost),
        "recovered": list(report.recovered),
        "handed": list(report.handed),
        "problems": list(report.problems),
        "skipped": list(report.skipped),
    }


def blocks_document(blocks: Sequence[Block]) -> Document:
    """``broker blocks --json``: the scopes recent failures block, until when, and why.
    ``scope`` is the key ``broker unblock`` takes."""
    return {
        "blocks": [
            {
                "scope": b.scope.key,
                "kind": b.scope.kind.value,
                "what": b.scope.describe(),
                "reason": b.reason,
                "until": when(b.until),
            }
            for b in blocks
        ]
    }

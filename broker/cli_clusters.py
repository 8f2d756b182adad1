"""CLI commands for clusters: provision, list, describe, env, release, stop, restart, delete,
reconcile, util. Parsing and rendering only; the Broker (broker.api) decides everything.

broker.api (SQLAlchemy, the provisioner) is imported inside the commands, so ``broker
quote`` and ``broker --help`` never load it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from broker.render import money, table
from broker.settings import Settings

if TYPE_CHECKING:
    from broker.api import Broker, ClusterReport
    from broker.state import AttemptRecord, ClusterRecord
    from shapes.catalog import Catalog

EXIT_OK = 0
EXIT_INVALID = 2
EXIT_NO_SHAPE = 3
EXIT_LEAK = 4  # a failed attempt's nodes could not be removed: look now


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + "Z"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _broker(args: argparse.Namespace, *, backend: str | None = None) -> Broker:
    from broker.api import Broker
    from broker.provisioner import ProvisionPolicy

    policy = ProvisionPolicy(timeout=getattr(args, "timeout", None) or 1800.0)
    return Broker(
        backend=backend,
        sim_scenario=getattr(args, "sim_scenario", None),
        policy=policy,
        progress=_say,
    )


def blocked_for_explain(
    catalog: Catalog, backend: str | None = None
) -> tuple[dict[str, str], list[dict[str, str]]]:
    """From the state store, if there is one: the shapes that recent failures block for
    ``backend`` (None: the real clouds), and every active blocked scope, for --explain."""
    from broker.provisioner import blocked_shapes
    from broker.state import STATE_DB_FILENAME, Store, default_state_dir

    has_store = (
        os.environ.get("BROKER_STATE_URL") or (default_state_dir() / STATE_DB_FILENAME).exists()
    )
    if not has_store:
        return {}, []
    blocks = Store.open().active_blocks(time.time())
    reasons = {scope: b.reason for scope, b in blocks.items()}
    unavailable = blocked_shapes(catalog.shapes, reasons, lambda s: backend or s.provider)
    listing = [
        {"scope": scope, "reason": b.reason, "until": _when(b.until)}
        for scope, b in sorted(blocks.items())
    ]
    return unavailable, listing


def print_blocked(listing: list[dict[str, str]]) -> None:
    if listing:
        _say("Blocked scopes (recent provisioning failures; not asked again until they expire):")
        for b in listing:
            _say(f"  {b['scope']}: {b['reason']}")


def attempt_json(a: AttemptRecord) -> dict[str, Any]:
    return {
        "attempt": a.attempt_no,
        "cycle": a.cycle,
        "shape_id": a.shape_id,
        "zone": a.zone,
        "nodes": a.nodes,
        "outcome": a.outcome,
        "error_code": a.error_code,
        "reach": a.reach,
        "reason": a.reason,
        "message": a.message,
        "retries": a.retries,
        "nodes_created": a.nodes_created,
        "nodes_cleaned": a.nodes_cleaned,
        "duration_s": None if a.duration is None else round(a.duration, 3),
    }


def cluster_json(c: ClusterRecord, attempts: list[AttemptRecord] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "cluster_id": c.id,
        "status": c.status.value,
        "reason": c.reason,
        "detail": c.detail,
        "cycle": c.cycle,
        "backend": c.backend,
        "shape_id": c.shape_id,
        "provider": c.provider,
        "region": c.region,
        "zone": c.zone,
        "nodes": [
            {k: n[k] for k in ("rank", "provider_id", "private_ip", "zone")} for n in c.nodes or []
        ],
        "procs_per_node": c.procs_per_node,
        "gpus_billed": c.gpus_billed,
        "price_per_hour": c.price_per_hour,
        "created_at": _when(c.created_at),
        "updated_at": _when(c.updated_at),
    }
    if attempts is not None:
        doc["attempts"] = [attempt_json(a) for a in attempts]
    return doc


def _print_attempts(attempts: list[AttemptRecord]) -> None:
    rows = [
        (
            f"{a.cycle}.{a.attempt_no}",
            a.shape_id,
            a.zone,
            a.nodes,
            a.outcome,
            a.error_code or "-",
            a.retries,
            "-" if a.duration is None else f"{a.duration:.2f}s",
        )
        for a in attempts
    ]
    headers = ["#", "SHAPE", "ZONE", "NODES", "OUTCOME", "ERROR", "RETRIES", "TOOK"]
    print(table(headers, rows, right={3, 6, 7}))


# -- provision ----------------------------------------------------------------------------------


def cmd_provision(args: argparse.Namespace, settings: Settings) -> int:
    from broker.cli import quote_request_from_args
    from broker.launchfile import parse_launch_file
    from broker.provisioner import CleanupFailed, ProvisionFailed
    from providers.registry import SIMULATED

    backend = SIMULATED if SIMULATED in [p.lower() for p in args.provider] else None
    args.provider = [p for p in args.provider if p.lower() != SIMULATED]
    request = quote_request_from_args(args, settings)
    experiment: dict[str, Any] | None = None
    if args.launch_file is not None:
        exp = parse_launch_file(args.launch_file, burst_max_gpus=settings.burst_max_gpus)
        experiment = exp.experiment_or_raise().model_dump(mode="json")
    for w in request.warnings:
        _say(f"warning: {w.render()}")
    broker = _broker(args, backend=backend)
    if args.explain:
        print_blocked(blocked_for_explain(broker.catalog, backend)[1])
        for e in broker.quote(request, explain=True).ranking.excluded:
            _say(f"  excluded {e.shape_id}: {e.reason}")
    try:
        cluster = broker.provision(request, experiment=experiment)
    except CleanupFailed as exc:
        return _provision_failed(exc, args.json, EXIT_LEAK)
    except ProvisionFailed as exc:
        return _provision_failed(exc, args.json, EXIT_NO_SHAPE)
    attempts = broker.store.attempts(cluster.id)
    if args.json:
        print(json.dumps(cluster_json(cluster, attempts), indent=2))
    else:
        _print_running(cluster)
    return EXIT_OK


def _print_running(c: ClusterRecord) -> None:
    print(
        f"{c.id} RUNNING: {len(c.nodes or [])} x {c.shape_id} in {c.zone}, "
        f"{c.procs_per_node} proc(s) per node, {money(c.price_per_hour or 0)}/h"
    )
    rows = [(n["rank"], n["private_ip"], n["provider_id"], n["zone"]) for n in c.nodes or []]
    print(table(["RANK", "PRIVATE IP", "NODE", "ZONE"], rows, right={0}))
    print(f"environment: broker env {c.id} --rank R")


def _provision_failed(exc: Any, as_json: bool, code: int) -> int:
    cluster, attempts = exc.cluster, exc.attempts
    if as_json:
        print(json.dumps(cluster_json(cluster, attempts), indent=2))
    else:
        if attempts:
            _print_attempts(attempts)
        banner = "!! NODES MAY BE LEFT RUNNING: " if code == EXIT_LEAK else ""
        _say(f"broker: {banner}{cluster.id} FAILED ({cluster.reason}): {cluster.detail}")
    return code


# -- tracking -----------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    clusters = _broker(args).list_clusters()
    if args.json:
        print(json.dumps([cluster_json(c) for c in clusters], indent=2))
        return EXIT_OK
    rows = [
        (
            c.id,
            c.status.value,
            c.reason or "",
            c.shape_id or "-",
            len(c.nodes or []),
            money(c.price_per_hour) if c.price_per_hour else "-",
            _when(c.created_at),
        )
        for c in clusters
    ]
    headers = ["CLUSTER", "STATUS", "REASON", "SHAPE", "NODES", "$/H", "CREATED"]
    print(table(headers, rows, right={4, 5}))
    return EXIT_OK


def report_json(r: ClusterReport) -> dict[str, Any]:
    doc = cluster_json(r.cluster, r.attempts)
    doc["transitions"] = [
        {"cycle": t.cycle, "status": t.status.value, "at": _when(t.at), "reason": t.reason}
        for t in r.transitions
    ]
    doc["gpu_hours"] = round(r.usage.gpu_hours, 6)
    doc["cost"] = round(r.usage.cost, 6)
    return doc


def cmd_describe(args: argparse.Namespace, settings: Settings) -> int:
    report = _broker(args).describe(args.cluster_id)
    if args.json:
        print(json.dumps(report_json(report), indent=2))
        return EXIT_OK
    c = report.cluster
    reason = f" ({c.reason}: {c.detail})" if c.reason else ""
    print(f"{c.id}  {c.status.value}{reason}  cycle {c.cycle}")
    print(f"shape {c.shape_id or '-'}  zone {c.zone or '-'}  {len(c.nodes or [])} node(s)")
    print(f"usage {report.usage.gpu_hours:.4f} GPU-hours, {money(report.usage.cost)}")
    print("\nLifecycle:")
    for t in report.transitions:
        note = f"  {t.reason}" if t.reason else ""
        print(f"  {_when(t.at)}  cycle {t.cycle}  {t.status.value}{note}")
    if report.attempts:
        print("\nAttempts:")
        _print_attempts(report.attempts)
    return EXIT_OK


def cmd_env(args: argparse.Namespace, settings: Settings) -> int:
    from broker.env import export_lines

    env = _broker(args).env(args.cluster_id, args.rank)
    sys.stdout.write(json.dumps(env, indent=2) + "\n" if args.json else export_lines(env))
    return EXIT_OK


def _ender(method: str) -> Callable[[argparse.Namespace, Settings], int]:
    def run(args: argparse.Namespace, settings: Settings) -> int:
        broker = _broker(args)
        cluster = getattr(broker, method)(args.cluster_id)
        if args.json:
            print(json.dumps(cluster_json(cluster), indent=2))
        else:
            print(f"{cluster.id} {cluster.status.value}")
        return EXIT_OK

    return run


def cmd_restart(args: argparse.Namespace, settings: Settings) -> int:
    from broker.provisioner import CleanupFailed, ProvisionFailed

    broker = _broker(args)
    try:
        cluster = broker.restart(args.cluster_id)
    except CleanupFailed as exc:
        return _provision_failed(exc, args.json, EXIT_LEAK)
    except ProvisionFailed as exc:
        return _provision_failed(exc, args.json, EXIT_NO_SHAPE)
    if args.json:
        print(json.dumps(cluster_json(cluster, broker.store.attempts(cluster.id)), indent=2))
    else:
        _print_running(cluster)
    return EXIT_OK


def cmd_delete(args: argparse.Namespace, settings: Settings) -> int:
    _broker(args).delete(args.cluster_id)
    if args.json:
        print(json.dumps({"deleted": args.cluster_id}))
    else:
        print(f"deleted {args.cluster_id}")
    return EXIT_OK


def cmd_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    report = _broker(args).reconcile()
    doc = {
        "terminated": [
            {"provider_id": n.provider_id, "shape_id": n.shape_id, "cluster_id": n.cluster_id}
            for n in report.terminated
        ],
        "settled": report.settled,
        "lost": report.lost,
        "problems": report.problems,
    }
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(
            f"terminated {len(report.terminated)} orphaned node(s); "
            f"settled {len(report.settled)} cluster(s) of dead provisioners; "
            f"{len(report.lost)} running cluster(s) had lost a node (now FAILED NodeLost)"
        )
        for n in report.terminated:
            print(f"  terminated {n.provider_id} ({n.shape_id}, cluster {n.cluster_id})")
        for p in report.problems:
            _say(f"problem: {p}")
    return EXIT_OK if not report.problems else EXIT_LEAK


def cmd_util(args: argparse.Namespace, settings: Settings) -> int:
    util = _broker(args).util()
    if args.json:
        print(json.dumps(util, indent=2))
        return EXIT_OK
    rows = [
        (
            name,
            int(u["clusters"]),
            int(u["gpus_starting"]),
            int(u["gpus_running"]),
            money(u["spend_per_hour"]),
        )
        for name, u in sorted(util.items())
    ]
    if not rows:
        print("no cluster is starting or running")
        return EXIT_OK
    print(
        table(["PROVIDER", "CLUSTERS", "GPUS STARTING", "GPUS RUNNING", "$/H"], rows, {1, 2, 3, 4})
    )
    return EXIT_OK


class BrokerCommandError(Exception):
    """A cluster command could not be done; ``exit_code`` says how bad it is."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


Command = Callable[[argparse.Namespace, Settings], int]


def _translated(command: Command) -> Command:
    """Turn the library's refusals into messages and exit codes (never a traceback)."""

    def run(args: argparse.Namespace, settings: Settings) -> int:
        from broker.env import EnvError
        from broker.state import StateError
        from providers.errors import ProviderError

        try:
            return command(args, settings)
        except (StateError, EnvError) as exc:  # unknown cluster, wrong state, no such rank
            raise BrokerCommandError(str(exc), EXIT_INVALID) from exc
        except (ProviderError, RuntimeError) as exc:  # the cloud refused to terminate
            raise BrokerCommandError(
                f"{exc} (nodes may still be running: try again, or `broker reconcile`)", EXIT_LEAK
            ) from exc

    return run


COMMANDS: dict[str, Command] = {
    name: _translated(fn)
    for name, fn in {
        "provision": cmd_provision,
        "list": cmd_list,
        "describe": cmd_describe,
        "env": cmd_env,
        "release": _ender("release"),
        "stop": _ender("stop"),
        "restart": cmd_restart,
        "delete": cmd_delete,
        "reconcile": cmd_reconcile,
        "util": cmd_util,
    }.items()
}


def add_parsers(sub: Any, add_request_args: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register the cluster commands on the ``broker`` parser's subcommands."""
    p = sub.add_parser(
        "provision",
        help="bring up a whole cluster (all nodes or none), falling back through the plans",
        description=(
            "Rank shapes as `broker quote` does, then launch the gang shape by shape and zone "
            "by zone until every node runs. Transient errors are retried; capacity errors move "
            "to the next zone, quota errors to the next region, provider-wide errors past the "
            "provider. Progress goes to stderr. `--provider sim` uses the simulated cloud "
            "(state in BROKER_STATE_DIR, behaviour from --sim-scenario/BROKER_SIM_SCENARIO). "
            "Exit 0 RUNNING, 2 invalid input, 3 no shape could be provisioned, 4 a failed "
            "attempt's nodes could not be removed."
        ),
    )
    add_request_args(p)
    p.add_argument("--timeout", type=float, metavar="S", help="overall deadline (1800 s)")
    p.add_argument("--sim-scenario", metavar="FILE", help="TOML scenario for --provider sim")
    p.add_argument(
        "--explain", action="store_true", help="first list blocked scopes and excluded shapes"
    )
    p.add_argument("--json", action="store_true", help="print the cluster as JSON")

    for name, text in (
        ("list", "list clusters"),
        ("util", "GPUs starting and running per provider, and spend per hour"),
        ("reconcile", "terminate tagged nodes no live cluster owns; settle dead provisionings"),
    ):
        q = sub.add_parser(name, help=text, description=text)
        q.add_argument("--json", action="store_true")
    for name, text in (
        ("describe", "lifecycle, attempts, GPU-hours and cost of a cluster"),
        ("release", "terminate a RUNNING cluster's nodes: COMPLETED"),
        ("stop", "stop a cluster (also one being provisioned): STOPPED"),
        ("restart", "provision a finished cluster again, as a new cycle"),
        ("delete", "forget a COMPLETED, STOPPED or FAILED cluster"),
    ):
        q = sub.add_parser(name, help=text, description=text)
        q.add_argument("cluster_id", metavar="ID", help="cluster id (a unique prefix will do)")
        q.add_argument("--json", action="store_true")
    e = sub.add_parser(
        "env",
        help="a node's environment (NNODES, N_PROC, NODE_RANK, MASTER_ADDR, ...)",
        description="Shell `export` lines (or --json) for one node of a RUNNING cluster.",
    )
    e.add_argument("cluster_id", metavar="ID")
    e.add_argument("--rank", type=int, required=True, help="node rank, 0..NNODES-1")
    e.add_argument("--json", action="store_true")

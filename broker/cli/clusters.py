"""Cluster commands: provision, restart, list, describe, env, release, stop, delete,
reconcile, util, blocks, unblock. Each calls the Broker once and renders a view document.

With BROKER_URL set, the commands a scheduler uses call a broker service instead, through a
:class:`~broker.client.Client` (same methods, same records, so the same rendering below);
``provision`` and ``restart`` run there through :mod:`broker.cli.remote`."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from broker.api import Broker
from broker.cli.output import emit_json, follow, print_warnings, say
from broker.cli.quote import print_blocks
from broker.cli.render import attempts_report, money, table
from broker.errors import Cancelled, Interrupted, ProvisionFailed
from broker.lifecycle import LIVE, TERMINAL, Status
from broker.settings import Settings
from broker.views import (
    Document,
    blocks_document,
    cluster_document,
    diagnostic_document,
    env_document,
    reconcile_document,
    report_document,
    util_document,
)
from shapes.errors import Exit

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from broker.api import LogPage
    from broker.client import Client
    from broker.diagnostics import Diagnostic
    from broker.state import ClusterRecord


def _broker(args: argparse.Namespace, settings: Settings, backend: str | None = None) -> Broker:
    from broker.provisioner import ProvisionPolicy

    timeout = getattr(args, "timeout", None)
    policy = ProvisionPolicy(
        timeout=timeout or 1800.0,
        deployment=settings.deployment,
        lease_seconds=settings.lease_seconds,
    )
    return Broker(
        settings,
        backend=backend,
        sim_scenario=getattr(args, "sim_scenario", None),
        policy=policy,
        progress=say,
    )


def _open(settings: Settings, local: Callable[[], Broker] | None = None) -> Broker | Client:
    """The Broker over the local store, or the Client of the service BROKER_URL names."""
    if settings.service_url:
        from broker.cli.remote import client

        return client(settings)
    return local() if local is not None else Broker(settings)


def _local_only(settings: Settings, command: str) -> None:
    if settings.service_url:
        say(f"note: `broker {command}` works on the local store; BROKER_URL is not used")


def _short(ts: str | None) -> str:
    return (ts or "-").replace("T", " ")


def _print_attempts(doc: Document) -> None:
    """The attempts table, each failed attempt's message, and the skips by cause."""
    print(attempts_report(doc["attempts"], doc.get("skipped")))


def _print_running(doc: Document) -> None:
    print(
        f"{doc['cluster_id']} RUNNING: {len(doc['nodes'])} x {doc['shape_id']} in {doc['zone']}, "
        f"{doc['procs_per_node']} proc(s) per node, {money(doc['price_per_hour'] or 0)}/h"
    )
    rows = [(n["rank"], n["private_ip"], n["provider_id"], n["zone"]) for n in doc["nodes"]]
    print(table(["RANK", "PRIVATE IP", "NODE", "ZONE"], rows, right={0}))
    print(f"environment: broker env {doc['cluster_id']} --rank R")


def _provisioned(
    broker: Broker | Client, run: Any, as_json: bool, warnings: Sequence[Diagnostic] = ()
) -> int:
    """Run the provisioning and render its outcome, whatever it is."""
    try:
        cluster: ClusterRecord = run()
    except ProvisionFailed as exc:
        doc = cluster_document(exc.cluster, exc.attempts)
        if as_json:
            emit_json(doc)
        else:
            _print_attempts(doc)
            banner = "!! NODES MAY BE LEFT RUNNING: " if exc.exit_code == Exit.LEAK else ""
            say(f"broker: {banner}{exc.cluster.id} FAILED ({exc.cluster.reason}): "
                f"{exc.cluster.detail}")  # fmt: skip
        return int(exc.exit_code)
    except Cancelled as exc:
        if as_json and exc.cluster is not None:
            emit_json(cluster_document(exc.cluster, broker.attempts(exc.cluster.id)))
        status = exc.cluster.status.value if exc.cluster is not None else "moved"
        who = exc.cluster.id if exc.cluster is not None else "the cluster"
        say(f"broker: {who} was stopped by someone else while it was being provisioned "
            f"(it is {status}); this attempt's nodes were given back")  # fmt: skip
        return int(exc.exit_code)
    except Interrupted as exc:
        c = exc.cluster
        if c is not None:
            if as_json:
                emit_json(cluster_document(c, broker.attempts(c.id)))
            say(f"broker: {exc}: {c.id} is {c.status.value}" + (
                "; its nodes were terminated" if c.status is Status.STOPPED else
                "; run `broker reconcile` to finish the cleanup"))  # fmt: skip
        else:
            say(f"broker: {exc}")
        return exc.exit_code
    doc = cluster_document(cluster, broker.attempts(cluster.id))
    if as_json:
        doc["warnings"] = [diagnostic_document(w) for w in warnings]
        emit_json(doc)
    else:
        _print_running(doc)
        print("\nAttempts:")
        _print_attempts(doc)
    return Exit.OK


def cmd_provision(args: argparse.Namespace, settings: Settings) -> int:
    if settings.service_url:
        from broker.cli import remote

        return remote.cmd_provision(args, settings)
    from broker.cli.quote import inputs_from_args
    from broker.inputs import build_request, split_backend

    backend, args.provider = split_backend(args.provider)
    broker = _broker(args, settings, backend)  # checks the scenario and the policy first
    request, experiment = build_request(
        inputs_from_args(args), burst_max_gpus=settings.burst_max_gpus, catalog=broker.catalog
    )
    print_warnings(request.warnings)
    if args.explain:
        print_blocks(broker.blocks())
        for e in broker.quote(request, explain=True).ranking.excluded:
            say(f"  excluded {e.shape_id}: {e.reason}")
    quoted = broker.quote(request)
    print_warnings(quoted.ranking.warnings)
    submitted = broker.submit(request, experiment=experiment)
    say(f"submitted {submitted.id}")
    run = lambda: broker.run(submitted.id)  # noqa: E731
    return _provisioned(broker, run, args.json, quoted.warnings)


def cmd_restart(args: argparse.Namespace, settings: Settings) -> int:
    if settings.service_url:
        from broker.cli import remote

        return remote.cmd_restart(args, settings)
    current = Broker(settings).get(args.cluster_id)
    broker = _broker(args, settings, current.backend)
    return _provisioned(broker, lambda: broker.restart(current.id), args.json)


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    statuses = None
    if args.status:
        known = {s.value for s in Status}
        wrong = [s for s in args.status if s.upper() not in known]
        if wrong:
            from broker.diagnostics import Diagnostic
            from broker.errors import InvalidRequest

            raise InvalidRequest(
                [
                    Diagnostic(
                        field="status",
                        message=f"unknown status {w!r} (known: {', '.join(sorted(known))})",
                    )
                    for w in wrong
                ]
            )
        statuses = [Status(s.upper()) for s in args.status]
    limit = None if args.all else (args.limit if args.limit else 50)
    broker = _open(settings)
    if statuses is None and limit is not None:  # every live cluster, and the newest others
        live = broker.list_clusters(LIVE | {Status.TERMINATING}, limit=None)
        done = broker.list_clusters(TERMINAL, limit=limit)
        clusters = sorted([*live, *done], key=lambda c: (c.created_at, c.id))
    else:
        clusters = broker.list_clusters(statuses, limit=limit)
    docs = [cluster_document(c) for c in clusters]
    if args.json:
        emit_json(docs)
        return Exit.OK
    rows = [
        (
            d["cluster_id"],
            d["status"],
            d["reason"] or "",
            d["shape_id"] or "-",
            len(d["nodes"]),
            money(d["price_per_hour"]) if d["price_per_hour"] else "-",
            _short(d["created_at"]),
        )
        for d in docs
    ]
    headers = ["CLUSTER", "STATUS", "REASON", "SHAPE", "NODES", "$/H", "CREATED"]
    print(table(headers, rows, right={4, 5}))
    if limit is not None and len(docs) >= limit:
        say(f"(live clusters and the newest {limit} others; --all for every cluster)")
    return Exit.OK


def cmd_describe(args: argparse.Namespace, settings: Settings) -> int:
    doc = report_document(_open(settings).describe(args.cluster_id))
    if args.json:
        emit_json(doc)
        return Exit.OK
    reason = f" ({doc['reason']}: {doc['detail']})" if doc["reason"] else ""
    print(f"{doc['cluster_id']}  {doc['status']}{reason}  cycle {doc['cycle']}")
    print(f"shape {doc['shape_id'] or '-'}  zone {doc['zone'] or '-'}  {len(doc['nodes'])} node(s)")
    print(f"usage {doc['gpu_hours']:.4f} GPU-hours, {money(doc['cost'])}")
    print("\nLifecycle:")
    for t in doc["transitions"]:
        note = f"  {t['reason']}" if t["reason"] else ""
        if t["detail"] and t["status"] in ("PENDING", "TERMINATING", "FAILED", "STOPPED"):
            note += f": {t['detail']}"  # each cycle's story: why it ended or went again
        print(f"  {_short(t['at'])}  cycle {t['cycle']}  {t['status']}{note}")
    run = doc.get("run")
    if run is not None and (run["recoveries"] or run["max_recoveries"]):
        print(f"recoveries: {run['recoveries']} of {run['max_recoveries']} used")
    if doc["attempts"] or doc.get("skipped"):
        print("\nAttempts:")
        _print_attempts(doc)
    if doc.get("artifact_syncs"):
        print("\nArtifact syncs (sent; FAILED: files the last sync could not send):")
        for x in doc["artifact_syncs"]:
            final = "final sync done" if x["final"] else "no final sync yet"
            failed = f", {x['failed']} FAILED ({'; '.join(x['errors'])})" if x["failed"] else ""
            print(
                f"  cycle {x['cycle']} rank {x['rank']} {x['kind']}: {x['files']} file(s), "
                f"{x['bytes']:,} bytes{failed}; {final}"
            )
    return Exit.OK


def cmd_env(args: argparse.Namespace, settings: Settings) -> int:
    from broker.env import export_lines

    env = _open(settings).env(args.cluster_id, args.rank)
    if args.json:
        emit_json(env_document(env))
    else:
        sys.stdout.write(export_lines(env))
    return Exit.OK


def cmd_logs(args: argparse.Namespace, settings: Settings) -> int:
    """Print a rank's lines; with --follow, new ones as they come (each call held up to
    10 s) until the experiment has ended and every line is out."""
    import itertools

    from broker.views import logs_document

    if not 1 <= args.tail <= 10_000:
        say("broker logs: --tail must be 1-10000")
        return Exit.INVALID
    opened = _open(settings)
    page = opened.logs(args.cluster_id, args.rank, tail=args.tail)
    if args.json and not args.follow:
        emit_json(logs_document(page))
        return Exit.OK
    if page.dropped:
        say(f"({page.dropped} earlier line(s) dropped: the per-rank cap, or the node's spool)")
    pages: Iterable[LogPage] = [page]
    if args.follow and not (page.cluster.status in TERMINAL and not page.lines):
        after = page.lines[-1].id if page.lines else 0
        pages = itertools.chain(pages, follow(opened, page.cluster.id, args.rank, after=after))
    for shown in pages:
        for line in shown.lines:
            if args.json:
                emit_json({"rank": shown.rank, "seq": line.seq, "line": line.line})
            else:
                print(line.line, flush=True)
    return Exit.OK


def cmd_artifacts(args: argparse.Namespace, settings: Settings) -> int:
    """List an experiment's artifacts, or (``get ID PATH``) download one."""
    from pathlib import Path

    words = list(args.words)
    if words[0] == "get":
        if len(words) != 3:
            say("usage: broker artifacts get ID PATH [--to DIR]")
            return Exit.INVALID
        _, cluster_id, path = words
        dest = Path(args.to) / Path(path).name
        size = _open(settings).fetch_artifact(cluster_id, path, dest)
        if args.json:
            emit_json({"path": path, "file": str(dest), "bytes": size})
        else:
            say(f"{path}: {size:,} bytes -> {dest}")
        return Exit.OK
    if len(words) != 1:
        say("usage: broker artifacts ID [--kind KIND] [--json]")
        return Exit.INVALID
    opened = _open(settings)
    found = opened.artifacts(words[0], args.kind)
    if args.json:
        emit_json(
            {
                "cluster_id": words[0],
                "artifacts": [a.to_json_dict() for a in found],
                "total_bytes": sum(a.size for a in found),
            }
        )
        return Exit.OK
    if not found:
        say(f"{words[0]}: no artifacts yet (nodes sync them while the command runs and at its end)")
        return Exit.OK
    rows = [
        (a.path, f"{a.size:,}", time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(a.modified)))
        for a in found
    ]
    print(table(["PATH", "BYTES", "MODIFIED (UTC)"], rows, right={1}))
    say(f"{len(found)} file(s), {sum(a.size for a in found):,} bytes")
    return Exit.OK


END_POLL = 1.0  # seconds between looks at a cluster being wound down
END_NUDGE = 30.0  # seconds between asking again (takes over a wind-down whose owner died)


def _end(args: argparse.Namespace, settings: Settings, verb: str) -> int:
    broker = _open(settings, lambda: _broker(args, settings))
    before = broker.get(args.cluster_id)
    end = broker.release if verb == "release" else broker.stop
    cluster = end(before.id)
    if cluster.status is Status.TERMINATING and not args.no_wait:
        try:
            cluster = wait_ended(cluster, broker.get, end)
        except KeyboardInterrupt:
            say(
                f"\nbroker: stopped waiting; {cluster.id} is still being wound down "
                f"(`broker describe {cluster.id}` shows when it has ended)"
            )
            return Exit.SIGINT
    if args.json:
        emit_json(cluster_document(cluster))
    elif before.status in TERMINAL:
        print(f"{cluster.id} was already {cluster.status.value}: nothing to {verb}")
    elif cluster.status is Status.TERMINATING:
        by = f" by {cluster.owner}" if cluster.owner else ""
        print(
            f"{cluster.id} TERMINATING: being wound down{by}; "
            f"`broker describe {cluster.id}` shows when it has ended"
        )
    else:
        print(f"{cluster.id} {cluster.status.value}")
    return Exit.OK


def wait_ended(
    cluster: ClusterRecord,
    get: Callable[[str], ClusterRecord],
    end: Callable[[str], ClusterRecord],
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ClusterRecord:
    """Poll a TERMINATING cluster until it has ended, saying so now and then on stderr.
    Every END_NUDGE seconds the stop is asked again: a no-op while its owner winds it down,
    a take-over when that owner died (its lease ran out)."""
    if cluster.status is Status.TERMINATING:
        say(
            f"{cluster.id} TERMINATING: its commands stop, their artifacts get a final sync, "
            "then its nodes are terminated (Ctrl-C stops the waiting, not the wind-down)"
        )
    start = last = clock()
    while cluster.status is Status.TERMINATING:
        sleep(END_POLL)
        if clock() - last >= END_NUDGE:
            last = clock()
            cluster = end(cluster.id)
            say(f"  still TERMINATING after {last - start:.0f} s")
        else:
            cluster = get(cluster.id)
    return cluster


def cmd_release(args: argparse.Namespace, settings: Settings) -> int:
    return _end(args, settings, "release")


def cmd_stop(args: argparse.Namespace, settings: Settings) -> int:
    return _end(args, settings, "stop")


def cmd_delete(args: argparse.Namespace, settings: Settings) -> int:
    broker = _open(settings)
    cluster = broker.get(args.cluster_id)
    broker.delete(cluster.id)
    if args.json:
        emit_json({"deleted": cluster.id})
    else:
        print(f"deleted {cluster.id}")
    return Exit.OK


def cmd_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    _local_only(settings, "reconcile")
    report = _broker(args, settings).reconcile()
    doc = reconcile_document(report)
    if args.json:
        emit_json(doc)
    else:
        print(
            f"terminated {len(doc['terminated'])} orphaned node(s); "
            f"settled {len(doc['settled'])} cluster(s) whose owner's lease expired; "
            f"{len(doc['lost'])} running cluster(s) had lost a node (now FAILED NodeLost)"
            + (
                f"; {len(doc['recovered'])} experiment(s) queued again as their next cycle"
                if doc["recovered"]
                else ""
            )
        )
        for n in doc["terminated"]:
            print(f"  terminated {n['provider_id']} ({n['shape_id']}, cluster {n['cluster_id']})")
        for s in doc["skipped"]:
            say(f"skipped: {s}")
        for p in doc["problems"]:
            say(f"problem: {p}")
    return Exit.OK if not doc["problems"] else Exit.LEAK


def cmd_util(args: argparse.Namespace, settings: Settings) -> int:
    target = _open(settings)
    doc = util_document(target.util(), target.util_credits())
    if args.json:
        emit_json(doc)
        return Exit.OK
    rows = [
        (
            name,
            int(u["clusters"]),
            int(u["gpus_starting"]),
            int(u["gpus_running"]),
            money(u["spend_per_hour"]),
        )
        for name, u in doc["providers"].items()
    ]
    if rows:
        headers = ["PROVIDER", "CLUSTERS", "GPUS STARTING", "GPUS RUNNING", "$/H"]
        print(table(headers, rows, {1, 2, 3, 4}))
    else:
        print("no cluster is starting or running")
    for entry in doc["credits"]:
        print(credits_line(entry))
    if doc["credits_more"]:
        print(
            f"credits: {doc['credits_more']} more organisation(s) not shown "
            "(`broker credits show` lists every grant)"
        )
    return Exit.OK


def credits_line(c: Document) -> str:
    """One organisation's credits for people, from a ``util`` document's ``credits`` entry."""
    burn = c["burn_per_hour"]
    burning = f"burning {money(burn)}/h" if burn > 0 else "nothing burning now"
    if not c["has_grant"]:
        return f"credits: {c['org']} has no grant (no limit); {burning}"
    left, granted, spent = c["remaining_usd"], c["granted_usd"], c["spent_usd"]
    if left <= 0:
        return (
            f"credits: {c['org']} has none left ({money(spent)} spent of {money(granted)}); "
            f"{burning}"
        )
    line = f"credits: {c['org']} has {money(left)} left of {money(granted)} ({money(spent)} spent)"
    if c["hours_left"] is None:
        return f"{line}; {burning}"
    return f"{line}; {burning}, about {c['hours_left']:,.1f} h at this rate"


def cmd_blocks(args: argparse.Namespace, settings: Settings) -> int:
    _local_only(settings, "blocks")
    doc = blocks_document(Broker(settings).blocks())
    if args.json:
        emit_json(doc)
        return Exit.OK
    if not doc["blocks"]:
        print("nothing is blocked")
        return Exit.OK
    rows = [(b["scope"], b["reason"]) for b in doc["blocks"]]
    print(table(["SCOPE", "REASON"], rows, right=set()))
    print("(`broker unblock SCOPE` or `broker unblock --all` to ask again now)")
    return Exit.OK


def cmd_unblock(args: argparse.Namespace, settings: Settings) -> int:
    from broker.diagnostics import Diagnostic
    from broker.errors import InvalidRequest

    if bool(args.scope) == bool(args.all):
        raise InvalidRequest(
            [Diagnostic(field="scope", message="give one SCOPE (see `broker blocks`) or --all")]
        )
    _local_only(settings, "unblock")
    broker = Broker(settings)
    removed = broker.unblock(None if args.all else args.scope)
    if args.scope and not removed:
        raise InvalidRequest(
            [Diagnostic(field="scope", message=f"no block {args.scope!r} (see `broker blocks`)")]
        )
    if args.json:
        emit_json({"removed": removed})
    else:
        print(f"removed {removed} block(s)")
    return Exit.OK

"""``broker run FILE.isc``: submit an experiment, stream rank 0's output, exit with its
outcome. Through the service BROKER_URL names, or (``--provider sim`` without BROKER_URL)
through a service started in this process on loopback for the duration."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from broker.cli.output import emit_json, follow, say
from broker.client import Client
from broker.diagnostics import Diagnostic
from broker.errors import BrokerError, Interrupted, InvalidRequest, ServerExtraMissing
from broker.lifecycle import TERMINAL, FailReason, Status
from broker.settings import Settings
from broker.state import ClusterRecord
from shapes.errors import Exit

PROVISIONING_REASONS = frozenset(
    {
        FailReason.NO_CAPACITY.value,
        FailReason.QUOTA_EXCEEDED.value,
        FailReason.UNAUTHORIZED.value,
        FailReason.NOT_CONFIGURED.value,
        FailReason.TIMEOUT.value,
        FailReason.INVALID_REQUEST.value,
        FailReason.CLEANUP_FAILED.value,
    }
)


@contextmanager
def _service(args: argparse.Namespace, settings: Settings) -> Iterator[Client]:
    if settings.service_url:
        from broker.cli.remote import client

        yield client(settings)
        return
    if "sim" not in [p.lower() for p in args.provider]:
        raise InvalidRequest(
            [
                Diagnostic(
                    field="provider",
                    message="on a real cloud the nodes must reach a broker service: run "
                    "`broker serve --public-url URL` where they can reach it and set BROKER_URL "
                    "and BROKER_TOKEN; or try it here with --provider sim",
                )
            ]
        )
    try:
        from broker.server.embedded import embedded_service
    except ImportError as exc:
        raise ServerExtraMissing(
            f"running on sim here needs the server extra ({exc.name} is not installed): "
            "pip install 'burst-broker[server]'"
        ) from None
    with embedded_service(settings, sim_scenario=args.sim_scenario) as local:
        say(f"broker run: a service on {local.url} for this run (simulated cloud)")
        yield Client(local.url, local.token)


def _exit_code(cluster: ClusterRecord) -> int:
    if cluster.status is Status.COMPLETED:
        return Exit.OK
    if cluster.status is Status.STOPPED:
        return Exit.CONFLICT
    if cluster.reason in PROVISIONING_REASONS:
        return Exit.NO_SHAPE
    return Exit.EXPERIMENT_FAILED


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from broker.cli.remote import body_from_args
    from broker.views import cluster_document

    with _service(args, settings) as service:
        body = body_from_args(args)
        if args.hours is not None:
            body["hours"] = args.hours
        cluster = service.submit(body)
        say(f"submitted {cluster.id}; following rank {args.rank}'s output")
        try:
            cluster = _follow(service, cluster.id, args.rank)
        except (KeyboardInterrupt, Interrupted) as exc:
            signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
            say(f"{signal.Signals(signum).name}: stopping {cluster.id} ...")
            try:
                stopped = service.stop(cluster.id)
                if stopped.status is Status.TERMINATING:  # its command stops and syncs first
                    from broker.cli.clusters import wait_ended

                    stopped = wait_ended(stopped, service.get, service.stop)
                say(f"{cluster.id} is {stopped.status.value}")
            except BrokerError as err:
                say(f"!! could not stop {cluster.id}: {err}; run `broker stop {cluster.id}`")
            return 128 + int(signum)
        if args.json:
            emit_json(cluster_document(cluster, service.attempts(cluster.id)))
        elif cluster.status is Status.FAILED and cluster.reason in PROVISIONING_REASONS:
            from broker.cli.render import attempts_report

            doc = cluster_document(cluster, service.attempts(cluster.id))
            say(attempts_report(doc["attempts"], doc["skipped"]))
        say(f"{cluster.id} {cluster.status.value}{_why(cluster)}")
        return _exit_code(cluster)


def _why(cluster: ClusterRecord) -> str:
    """`` (reason: detail)``, `` (detail)`` (a stop has no reason code), or nothing."""
    said = ": ".join(x for x in (cluster.reason, cluster.detail) if x)
    return f" ({said})" if said else ""


def _follow(service: Client, cluster_id: str, rank: int) -> ClusterRecord:
    """Print the rank's lines as they come, until the cluster has ended and every line is
    out; the ended cluster."""
    seen: tuple[Status, int] | None = None
    cluster: ClusterRecord | None = None
    for page in follow(service, cluster_id, rank, wait=5):
        for line in page.lines:
            sys.stdout.write(line.line + "\n")
        sys.stdout.flush()
        cluster = page.cluster
        now = (cluster.status, cluster.cycle)
        if now != seen and cluster.status not in TERMINAL:
            # A lost node's gang winds down and goes again: say why, and which cycle.
            telling = cluster.status in (Status.TERMINATING, Status.PENDING)
            why = _why(cluster) if telling else ""
            cycle = f" [cycle {cluster.cycle}]" if cluster.cycle > 1 else ""
            say(f"{cluster_id}: {cluster.status.value}{cycle}{why}")
            seen = now
    assert cluster is not None  # follow yields at least one page
    return cluster


__all__ = ["cmd_run"]

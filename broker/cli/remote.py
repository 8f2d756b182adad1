"""The cluster commands against a broker service: ``BROKER_URL`` (and ``BROKER_TOKEN``) set.

``list``, ``describe``, ``env``, ``stop``, ``release``, ``delete`` and ``util`` call the same
methods on a :class:`~broker.client.Client` as on a Broker (``broker.cli.clusters`` picks one
with :func:`client`) and share their rendering. ``provision`` and ``restart`` differ in how
they run, so they are here: the request goes to the service as the flags and the launch
file's text (the service validates it, with its catalog and its burst cap), a worker of the
service provisions it, and this process polls until it is RUNNING or ended, with progress on
stderr and the same output as locally. Ctrl-C or SIGTERM while waiting stops the cluster on
the service (exit 130/143); ``--timeout S`` stops it after S seconds of waiting (exit 3).
``quote``, ``shapes`` and ``validate`` need no service and stay local, as do the service's
own chores (``serve``, ``token``, ``reconcile``, ``blocks``, ``unblock``).
"""

from __future__ import annotations

import argparse
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from broker.cli.clusters import _provisioned
from broker.cli.output import say
from broker.client import Client, check_url
from broker.diagnostics import Diagnostic
from broker.errors import BrokerError, ConfigError, Interrupted, WaitTimeout
from broker.settings import Settings
from broker.state import ClusterRecord


def client(settings: Settings) -> Client:
    """The Client of the service BROKER_URL names, with BROKER_TOKEN (ConfigError, exit 2,
    when the token is missing or the URL is not one; neither is ever printed)."""
    url = settings.service_url or ""
    why = check_url(url)
    if why is not None:
        raise ConfigError(f"BROKER_URL {why}")
    if not settings.service_token:
        raise ConfigError(
            "BROKER_URL is set but BROKER_TOKEN is not: set BROKER_TOKEN to an API token of "
            "that service (`broker token create --org ORG` where it runs), or unset BROKER_URL "
            "to use the local store"
        )
    try:
        return Client(url, settings.service_token, progress=say)
    except BrokerError as exc:
        raise ConfigError(f"BROKER_TOKEN or BROKER_URL: {exc}") from None


def body_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """``provision``'s flags as the API's request fields; a launch file goes as its text."""
    body: dict[str, Any] = {
        "gpus": args.gpus,
        "priority": list(args.priority or ()),
        "strict_priority": bool(args.strict_priority),
        "gpu": list(args.gpu),
        "provider": list(args.provider),
        "region": list(args.region),
        "provisioning": "spot" if args.spot else "on-demand" if args.on_demand else None,
        "max_price_per_hour": args.max_price_per_hour,
        "hours": getattr(args, "hours", None),
        "image": getattr(args, "image", None),  # "" (the host) is kept
        "max_hours": getattr(args, "max_hours", None),
        "max_recoveries": getattr(args, "max_recoveries", None),
    }
    if args.launch_file is not None:
        body["launch_file"] = Path(args.launch_file).read_text(encoding="utf-8")
    return {k: v for k, v in body.items() if v not in (None, [], False)}


def _waiting(
    service: Client, cluster_id: str, start: Callable[[], object], timeout: float | None
) -> Callable[[], ClusterRecord]:
    """What ``_provisioned`` runs: ``start`` then wait for the cluster. A signal, or the
    end of ``timeout``, stops it on the service before the error goes on."""

    def run() -> ClusterRecord:
        try:
            start()
            return service.wait(cluster_id, timeout=timeout)
        except WaitTimeout as exc:
            was = exc.cluster.status.value if exc.cluster is not None else "not RUNNING"
            stopped = _stop(service, cluster_id)
            now = f"; stopped it: it is {stopped.status.value}" if stopped else ""
            raise WaitTimeout(
                f"cluster {cluster_id} was still {was} after --timeout {timeout:g} s{now}",
                stopped or exc.cluster,
            ) from None
        except (KeyboardInterrupt, Interrupted) as exc:
            signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
            say(f"{signal.Signals(signum).name}: stopping {cluster_id} on the service ...")
            err = Interrupted(signum)
            err.cluster = _stop(service, cluster_id)
            raise err from None

    return run


def _stop(service: Client, cluster_id: str) -> ClusterRecord | None:
    try:
        return service.stop(cluster_id)
    except BrokerError as exc:
        say(f"!! could not stop {cluster_id}: {exc}; run `broker stop {cluster_id}`")
        return None


def _scenario_ignored(args: argparse.Namespace) -> None:
    if getattr(args, "sim_scenario", None):
        say("warning: --sim-scenario is ignored with BROKER_URL: the service's scenario applies")


def cmd_provision(args: argparse.Namespace, settings: Settings) -> int:
    service = client(settings)
    _scenario_ignored(args)
    body = body_from_args(args)
    quoted = service.quote(body, explain=bool(args.explain), limit=1)  # validates; warnings
    warnings = [Diagnostic.from_json_dict(w) for w in quoted.get("warnings") or ()]
    for w in warnings:
        say(f"warning: {w.render()}")
    if args.explain:
        for e in quoted.get("excluded") or ():
            say(f"  excluded {e['shape_id']}: {e['reason']}")
    submitted = service.submit(body)
    say(f"submitted {submitted.id} to {service.url}")
    run = _waiting(service, submitted.id, lambda: None, args.timeout)
    return _provisioned(service, run, args.json, warnings)


def cmd_restart(args: argparse.Namespace, settings: Settings) -> int:
    service = client(settings)
    _scenario_ignored(args)
    current = service.get(args.cluster_id)
    run = _waiting(service, current.id, lambda: service.requeue(current.id), args.timeout)
    return _provisioned(service, run, args.json)


__all__ = ["body_from_args", "client", "cmd_provision", "cmd_restart"]

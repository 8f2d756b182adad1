"""The ``broker`` argument parser: argparse and the standard library only.

``broker --help`` and every parse run on this module alone, so they cost no more than
starting Python and argparse: the command modules (and what they import) load after parsing,
only the one that runs. Numbers are checked here (finite, in range) so nothing is written
for a bad flag; everything else is checked by the library before it writes.
"""

from __future__ import annotations

import argparse
import difflib
import math
from collections.abc import Sequence
from typing import Any, NoReturn

EPILOG = (
    "Shape ids look like aws:us-east-1:p5.48xlarge:spot "
    "(provider:region:instance_type:spot|on-demand). Exit codes: 0 ok, 2 invalid input, "
    "3 no shape can serve the request, 4 nodes may be left running (run broker reconcile), "
    "5 someone else moved the cluster, 6 the state store cannot be used, 7 the experiment's "
    "command failed (broker run), 8 the organisation's credits cannot pay for it, "
    "130/143 interrupted. "
    "Settings come from BROKER_STATE_DIR, BROKER_STATE_URL, BROKER_CONFIG, BROKER_CATALOG_DIR, "
    "BROKER_DEPLOYMENT, BROKER_SIM_SCENARIO, BROKER_BURST_MAX_GPUS and BROKER_LEASE_SECONDS. "
    "With BROKER_URL (and BROKER_TOKEN) set, provision, restart, list, describe, env, stop, "
    "release, delete and util call that broker service instead of the local store "
    "(6 also means the service cannot be reached)."
)


class UsageError(Exception):
    """A command line argparse refused; ``usage`` is the (sub)command's own usage line."""

    def __init__(self, message: str, usage: str) -> None:
        super().__init__(message)
        self.usage = usage


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {_hinted(self, message)}", self.format_usage())


def _hinted(parser: argparse.ArgumentParser, message: str) -> str:
    """argparse's message, with a close match for an unknown flag where it gives none."""
    if not message.startswith("unrecognized arguments:"):
        return message
    flags = [o for a in parser._actions for o in a.option_strings]
    hints = []
    for word in message.split(":", 1)[1].split():
        if word.startswith("-"):
            close = difflib.get_close_matches(word.split("=", 1)[0], flags, n=1)
            if close:
                hints.append(f"{word}: did you mean {close[0]}?")
    return message + ("; " + "; ".join(hints) if hints else "")


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive(text: str) -> float:
    """A finite number > 0 (seconds, hours, dollars)."""
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def recoveries(text: str) -> int:
    """A whole number of recoveries, 0 to 20."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if not 0 <= value <= 20:  # broker.recovery.MAX_RECOVERIES (not imported: --help stays light)
        raise argparse.ArgumentTypeError(f"must be 0 to 20, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (dollars of credits)."""
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return value


def count(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def non_negative(text: str) -> int:
    value = count(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return value


class _SplitAppend(argparse.Action):
    """``--priority A --priority B,C`` -> [A, B, C]: one value per flag, commas allowed,
    so the flag never swallows the launch file that follows it."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        items = list(getattr(namespace, self.dest, None) or [])
        items.extend(v.strip() for v in str(values).split(",") if v.strip())
        setattr(namespace, self.dest, items)


def _json(p: argparse.ArgumentParser, what: str = "print one JSON document") -> None:
    p.add_argument("--json", action="store_true", help=what)


def add_filters(p: argparse.ArgumentParser, *, per_plan_price: bool) -> None:
    g = p.add_argument_group("filters")
    g.add_argument(
        "--gpu",
        action="append",
        default=[],
        metavar="MODEL",
        help="GPU model, e.g. H100, A100-80GB, L4; a family (A100, V100, H100) selects all "
        "sizes. Repeat for several. (The number of GPUs is --gpus.)",
    )
    g.add_argument(
        "--provider",
        action="append",
        default=[],
        help="aws, gcp or azure (repeatable); provision also takes sim, the simulated cloud",
    )
    g.add_argument("--region", action="append", default=[], help="e.g. us-east-1 (repeatable)")
    market = g.add_mutually_exclusive_group()
    market.add_argument("--spot", action="store_true", help="spot shapes only")
    market.add_argument("--on-demand", action="store_true", help="on-demand shapes only")
    g.add_argument(
        "--max-price-per-hour",
        type=positive,
        metavar="USD",
        help=(
            "cap on the plan's price per hour, all nodes together"
            if per_plan_price
            else "cap on the price per node-hour"
        ),
    )


def add_request_args(p: argparse.ArgumentParser) -> None:
    """What a quote and a provision both take: the GPUs (or a launch file), the priority
    list and the filters."""
    p.add_argument("launch_file", nargs="?", metavar="FILE.isc", help="a burst launch file")
    p.add_argument(
        "--gpus", type=count, help="number of GPUs (1..72; burst mode allows at most 48)"
    )
    p.add_argument(
        "--priority",
        action=_SplitAppend,
        metavar="SHAPE_ID[,SHAPE_ID...]",
        help="preferred shapes in order (repeatable, or comma-separated); overrides the "
        "file's burst_shape_priority_list. If no listed id is a known shape, every shape "
        "is tried (with a warning) unless --strict-priority",
    )
    p.add_argument(
        "--strict-priority",
        action="store_true",
        help="refuse the request when the priority list names no known shape, instead of "
        "falling back to every shape",
    )
    add_filters(p, per_plan_price=True)


def _image(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-hours",
        type=positive,
        metavar="H",
        help="run-time limit in hours of RUNNING (recovered cycles share it; a restart gets it "
        "whole): at the limit the command is signalled, artifacts "
        "get their final sync and the cluster ends STOPPED (run-time limit); the nodes see "
        "STRONG_CYCLE_TIME_MS",
    )
    p.add_argument(
        "--max-recoveries",
        type=recoveries,
        metavar="N",
        help="times the experiment is recovered when its gang loses a node (spot "
        "preemption, a node gone): wound down and provisioned again as the next cycle, the "
        "lost zone blocked, the latest checkpoints restored. Default: 3 on spot, 0 on on-demand",
    )
    p.add_argument(
        "--image",
        metavar="IMAGE",
        help="run the launch file's command in this container image on every node "
        "(docker run --gpus all --network host --ipc host); '' runs it on the host. "
        "Default: the configuration's [node] image, else the host",
    )


class _Skipped:
    """What :func:`build_parser` hands out for a command it was told to leave out: every
    call (add_argument, add_argument_group, add_subparsers, ...) does nothing, cheaply."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: self


class _OnlyOne:
    """The subparsers action, keeping the full definition of one command only."""

    def __init__(self, real: Any, only: str) -> None:
        self._real, self._only = real, only

    def add_parser(self, name: str, **kwargs: Any) -> Any:
        if name == self._only:
            return self._real.add_parser(name, **kwargs)
        return _Skipped()


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with ``only`` (a command the caller knows is being run), only
    that command's subparser is built: ``broker quote`` must start in about the time Python
    takes, and building all 30 subparsers costs ~12 ms (benchmarks/run.py)."""
    parser = _Parser(
        prog="broker",
        description=(
            "Find, quote and provision GPU clusters on AWS, GCP and Azure for burst-mode ML "
            "experiments. Quotes are dry runs: they spend nothing and need no cloud account."
        ),
        epilog=EPILOG,
    )
    from broker import __version__

    parser.add_argument("--version", action="version", version=f"burst-broker {__version__}")
    sub: Any = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    if only is not None:
        sub = _OnlyOne(sub, only)

    q = sub.add_parser(
        "quote",
        help="rank and price shapes for a request (dry run)",
        description=(
            "Rank catalog shapes for G GPUs and price each plan, as `broker provision` would "
            "try them: shapes outside a configured cloud's regions and recently blocked ones "
            "are left out (--explain says why). With a priority list, only the listed shapes "
            "are candidates, in the listed order; without one (or if it names no known "
            "shape) every shape is a candidate, cheapest first. Each plan splits the GPUs "
            "into NNODES x N_PROC = G. Exit 0 plans found, 2 invalid input, 3 no shape."
        ),
    )
    add_request_args(q)
    q.add_argument("--hours", type=positive, default=1.0, help="hours to estimate the cost for (1)")
    q.add_argument(
        "--explain", action="store_true", help="list blocked scopes and every excluded shape"
    )
    q.add_argument(
        "--limit",
        type=non_negative,
        metavar="N",
        help="show at most N plans (table default 20; JSON default all; 0 for all)",
    )
    _json(q)

    s = sub.add_parser("shapes", help="list the shape catalog", description="List catalog shapes.")
    add_filters(s, per_plan_price=False)
    _json(s, "print a JSON list of shapes")

    v = sub.add_parser(
        "validate",
        help="check an experiment launch file",
        description="Check a .isc launch file against every rule of the format. Exit 0 valid, "
        "2 invalid.",
    )
    v.add_argument("launch_file", metavar="FILE.isc")
    _json(v, "print the verdict as JSON")

    p = sub.add_parser(
        "provision",
        help="bring up a whole cluster (all nodes or none), falling back through the plans",
        description=(
            "Rank shapes as `broker quote` does, then launch the gang shape by shape and zone "
            "by zone until every node runs. Transient errors are retried; capacity errors move "
            "to the next zone, quota errors to the next region, provider-wide errors past the "
            "provider. Progress goes to stderr. `--provider sim` uses the simulated cloud "
            "(state in BROKER_STATE_DIR, behaviour from --sim-scenario/BROKER_SIM_SCENARIO). "
            "Ctrl-C or SIGTERM stops the cluster and removes its nodes first. Exit 0 RUNNING, "
            "2 invalid input (nothing is written), 3 no shape could be provisioned, 4 a failed "
            "attempt's nodes could not be removed, 5 someone stopped it meanwhile, 130/143 "
            "interrupted."
        ),
    )
    add_request_args(p)
    _image(p)
    p.add_argument("--timeout", type=positive, metavar="S", help="overall deadline (1800 s)")
    p.add_argument("--sim-scenario", metavar="FILE", help="TOML scenario for --provider sim")
    p.add_argument(
        "--explain", action="store_true", help="first list blocked scopes and excluded shapes"
    )
    _json(p, "print the cluster as JSON")

    rn = sub.add_parser(
        "run",
        help="run an experiment: submit it, stream rank 0's output, exit with its outcome",
        description="Submit a burst launch file's experiment, print the output of rank 0 "
        "(the master node) as it comes, and exit with the outcome: 0 COMPLETED, 7 the "
        "command failed on a node (FAILED Error, FailedImagePull, NodeLost), 3 no shape "
        "could be provisioned, 5 stopped by someone, 130/143 interrupted (the experiment is "
        "stopped first). With BROKER_URL (and BROKER_TOKEN) it runs on that service; with "
        "--provider sim and no BROKER_URL, a service is started in this process on loopback "
        "for the duration, so it works on a fresh machine.",
    )
    add_request_args(rn)
    _image(rn)
    rn.add_argument("--rank", type=count, default=0, help="whose output to stream (0)")
    rn.add_argument("--hours", type=positive, help="the run length for the cost estimate")
    rn.add_argument("--sim-scenario", metavar="FILE", help="TOML scenario for --provider sim")
    _json(rn, "print the ended cluster as JSON at the end (the output still streams)")

    ls = sub.add_parser(
        "list",
        help="list clusters (the newest 50; --all for every one)",
        description="List clusters, newest last: the newest 50 unless --limit or --all.",
    )
    ls.add_argument("--all", action="store_true", help="every cluster ever made")
    ls.add_argument("--limit", type=non_negative, metavar="N", help="the newest N (50)")
    ls.add_argument(
        "--status",
        action="append",
        default=[],
        metavar="STATUS",
        help="only these statuses (repeatable): PENDING, QUEUED, STARTING, RUNNING, "
        "TERMINATING, COMPLETED, STOPPED, FAILED",
    )
    _json(ls)
    for name, text in (
        ("util", "GPUs starting and running per provider, and spend per hour"),
        (
            "reconcile",
            "settle clusters whose owner's lease expired; fail gangs that lost a node; "
            "terminate tagged nodes no live cluster owns",
        ),
        ("blocks", "scopes recent failures block (zone, region quota, cloud), why, until when"),
    ):
        c = sub.add_parser(name, help=text, description=text)
        _json(c)
    ub = sub.add_parser(
        "unblock",
        help="forget a blocked scope (or all of them)",
        description="Forget one blocked scope (as `broker blocks` prints it) or, with --all, "
        "every block: the next provision asks those zones, regions or clouds again.",
    )
    ub.add_argument("scope", nargs="?", metavar="SCOPE")
    ub.add_argument("--all", action="store_true", help="forget every block")
    _json(ub)
    for name, text in (
        ("describe", "lifecycle, attempts, GPU-hours and cost of a cluster"),
        ("release", "terminate a RUNNING cluster's nodes: COMPLETED"),
        ("stop", "stop a cluster (also one being provisioned): STOPPED"),
        ("restart", "provision a finished cluster again, as a new cycle"),
        ("delete", "forget a COMPLETED, STOPPED or FAILED cluster"),
    ):
        c = sub.add_parser(name, help=text, description=text)
        c.add_argument("cluster_id", metavar="ID", help="cluster id (a unique prefix will do)")
        if name == "restart":
            c.add_argument("--sim-scenario", metavar="FILE", help="TOML scenario for sim")
            c.add_argument("--timeout", type=positive, metavar="S", help="deadline (1800 s)")
        if name in ("stop", "release"):
            c.description = (
                f"{text}. A running command is signalled and its artifacts get their final "
                "sync before the nodes are terminated, which can take minutes; this waits for "
                "the end, saying how it goes on stderr."
            )
            c.add_argument(
                "--no-wait",
                action="store_true",
                help="with BROKER_URL: return once the service has the cluster TERMINATING "
                "and winds it down (a local store's wind-down runs in this process: it waits)",
            )
        _json(c)
    e = sub.add_parser(
        "env",
        help="a node's environment (NNODES, N_PROC, NODE_RANK, MASTER_ADDR, ...)",
        description="Shell `export` lines (or --json) for one node of a RUNNING cluster.",
    )
    e.add_argument("cluster_id", metavar="ID")
    e.add_argument("--rank", type=count, required=True, help="node rank, 0..NNODES-1")
    _json(e)

    lg = sub.add_parser(
        "logs",
        help="a node's output (rank 0, the master node, by default)",
        description="The output of the experiment's command on one node, as its agent sent "
        "it (stdout and stderr in order). --follow prints new lines until the experiment ends.",
    )
    lg.add_argument("cluster_id", metavar="ID")
    lg.add_argument("--rank", type=count, default=0, help="node rank (0)")
    lg.add_argument("--tail", type=count, default=100, help="last N lines (100)")
    lg.add_argument("--follow", "-f", action="store_true", help="keep printing new lines")
    _json(lg)

    cr = sub.add_parser(
        "credits",
        help="organisation credits: grant them, see what is left",
        description="Credits per organisation, in USD, in the local store. Spend since the "
        "grant is the accounting of `broker describe`; a submission whose first hour costs "
        "more than what is left is refused (exit 8, HTTP 402), and when nothing is left the "
        "service stops the organisation's live experiments (STOPPED, credits exhausted).",
    )
    crs = cr.add_subparsers(
        dest="credits_command", metavar="COMMAND", required=True, parser_class=_Parser
    )
    cs = crs.add_parser("set", help="grant ORG N USD from now on", description="Grant credits.")
    cs.add_argument("--org", required=True)
    cs.add_argument("--usd", type=non_negative_float, required=True, metavar="N")
    _json(cs)
    cw = crs.add_parser("show", help="granted, spent, left, burn rate", description="Show them.")
    cw.add_argument("--org", help="one organisation (default: every one with a grant)")
    _json(cw)

    ds = sub.add_parser(
        "datasets",
        help="put a directory into the artifact store as a dataset, or list them",
        description="Datasets live in the artifact store ([artifacts] url; default "
        "file://<state dir>/artifacts), per organisation; an experiment that lists an ID in "
        "dataset_id_list finds it at /data/<ID>/ on every node (a missing one is refused at "
        "submit). Writes with the store's own credentials.",
    )
    dsub = ds.add_subparsers(
        dest="datasets_command", metavar="COMMAND", required=True, parser_class=_Parser
    )
    du = dsub.add_parser("upload", help="upload DIR as dataset ID", description="Upload DIR.")
    du.add_argument("dataset_id", metavar="ID")
    du.add_argument("dir", metavar="DIR")
    dl = dsub.add_parser("list", help="the organisation's datasets", description="List them.")
    for d in (du, dl):
        d.add_argument(
            "--org",
            default="local",
            help="whose dataset (local: the organisation of `broker run`'s own service)",
        )
        _json(d)

    ar = sub.add_parser(
        "artifacts",
        help="the files an experiment wrote, and downloading them",
        usage="broker artifacts ID [--kind KIND] [--json]\n"
        "       broker artifacts get ID PATH [--to DIR]",
        description="`broker artifacts ID` lists what the experiment's nodes synced to the "
        "artifact store (checkpoints, crud, lossy, logs; each rank apart), with the sync "
        "totals; `broker artifacts get ID PATH` downloads one (PATH as listed: "
        "<kind>/rank-<r>/<file>) into --to DIR (the current directory).",
    )
    ar.add_argument("words", nargs="+", metavar="ID | get ID PATH", help=argparse.SUPPRESS)
    ar.add_argument("--kind", choices=["checkpoints", "crud", "lossy", "logs"])
    ar.add_argument("--to", metavar="DIR", default=".", help="where `get` writes (.)")
    _json(ar)

    pr = sub.add_parser(
        "providers",
        help="which clouds are configured and usable, and why not",
        description="Read the configuration file (BROKER_CONFIG, default "
        "~/.config/burst-broker/config.toml) and check each enabled cloud with its own "
        "credential chain. Credentials are never printed.",
    )
    _json(pr)
    qu = sub.add_parser(
        "quotas",
        help="the clouds' GPU quotas: limit, in use, free (read live)",
        description="Read the quotas GPU gangs draw on, live, from each enabled cloud (or "
        "--provider, sim included) in its configured regions (or --region), and show limit, "
        "in use and free per quota. The readings are kept for a few minutes: `broker "
        "provision` skips a plan whose gang does not fit without asking the cloud, and "
        "`broker quote --explain` names those plans. A quota that cannot be read (a missing "
        "permission) is a warning; its cloud is tried as before.",
    )
    qu.add_argument("--provider", action="append", metavar="P", help="aws, gcp, azure or sim")
    qu.add_argument("--region", action="append", metavar="R", help="this region only")
    qu.add_argument(
        "--cached", action="store_true", help="show the kept readings and their age (no call)"
    )
    _json(qu)
    cat = sub.add_parser("catalog", help="manage the local shape catalog")
    csub = cat.add_subparsers(
        dest="catalog_command", metavar="COMMAND", required=True, parser_class=_Parser
    )
    r = csub.add_parser(
        "refresh",
        help="fetch live GPU shapes and prices into the local catalog",
        description="List GPU instance types, their zones and prices from the cloud's APIs "
        "and write a dated catalog file that takes precedence over the bundled one "
        "(BROKER_CATALOG_DIR, default ~/.local/share/burst-broker/catalog).",
    )
    r.add_argument("--provider", required=True, help="the cloud to refresh (aws, gcp, azure)")
    r.add_argument("--output", metavar="DIR", help="write here instead of the local catalog dir")
    r.add_argument(
        "--prices-only",
        action="store_true",
        help="azure: prices from the public Retail Prices API only, no Azure account needed "
        "(sizes and zones from the bundled catalog)",
    )
    _json(r)
    ck = csub.add_parser(
        "check",
        help="run the price sanity checks on the catalog in use",
        description="Check every catalog file in use (bundled, and refreshed ones in "
        "BROKER_CATALOG_DIR): prices > 0 and finite, dated, spot below on-demand, per-GPU "
        "price of multi-GPU sizes near the single-GPU size, one type's price across regions "
        "near its cheapest region's. Prints the rows that fail; exits 2 when any does.",
    )
    _json(ck)

    sv = sub.add_parser(
        "serve",
        help="run the HTTP API, the web console and provisioning workers",
        description="Serve the /v1 API, the web console (/burst, /experiments), background "
        "provisioning workers and a periodic reconcile, over the same store as the CLI "
        "(BROKER_STATE_DIR or BROKER_STATE_URL). Needs the server extra: "
        "pip install 'burst-broker[server]'. SIGTERM stops it gracefully.",
    )
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    sv.add_argument("--port", type=port_number, default=8080, help="port (8080)")
    sv.add_argument("--workers", type=worker_count, default=4, help="provisioning workers (4)")
    sv.add_argument(
        "--reconcile-every", type=positive, default=30.0, metavar="S", help="seconds (30)"
    )
    sv.add_argument(
        "--grace", type=positive, default=20.0, metavar="S",
        help="seconds in-flight provisionings and wind-downs get on shutdown (20)",
    )  # fmt: skip
    sv.add_argument("--sim", action="store_true", help="provision every cluster on sim")
    sv.add_argument(
        "--public-url",
        metavar="URL",
        help="where the nodes reach this server (http(s)://host:port), needed to run an "
        "experiment's command on a real cloud (default: the configuration's [service] "
        "public_url); simulated nodes use the loopback address",
    )
    sv.add_argument("--sim-scenario", metavar="FILE", help="TOML scenario for sim")
    sv.add_argument(
        "--heartbeat-timeout",
        type=positive,
        default=60.0,
        metavar="S",
        help="a running node whose agent is silent this long is lost: FAILED NodeLost (60)",
    )
    sv.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")

    tk = sub.add_parser(
        "token",
        help="create, list and revoke API tokens (organisations)",
        description="API tokens for `broker serve`. A token belongs to one organisation and "
        "sees only its clusters; an admin token also manages the organisation's tokens. "
        "The secret is printed once, at creation, and only its digest is stored.",
    )
    tsub = tk.add_subparsers(
        dest="token_command", metavar="COMMAND", required=True, parser_class=_Parser
    )
    tc = tsub.add_parser("create", help="a new token (printed once)")
    tc.add_argument("--org", required=True, help="organisation, e.g. acme")
    tc.add_argument("--name", default="token", help="a label to recognise it by")
    tc.add_argument("--role", choices=["member", "admin"], default="member")
    _json(tc)
    tl = tsub.add_parser("list", help="tokens (never their secrets)")
    tl.add_argument("--org", help="only this organisation's")
    _json(tl)
    tr = tsub.add_parser("revoke", help="revoke a token by its id")
    tr.add_argument("token_id", metavar="TOKEN_ID")
    _json(tr)

    db = sub.add_parser(
        "db",
        help="the store's schema: its revision, and upgrading it to this release's",
        description="The store (BROKER_STATE_URL, else SQLite in BROKER_STATE_DIR) is "
        "versioned by migrations. `status` says its revision against this release's "
        "(--check: exit 6 unless they match); `upgrade` applies the missing migrations in "
        "one transaction and says from which revision to which. Only this upgrades an older "
        "PostgreSQL store (an empty one is created on first use); SQLite's upgrades itself.",
    )
    dsub = db.add_subparsers(
        dest="db_command", metavar="COMMAND", required=True, parser_class=_Parser
    )
    ds = dsub.add_parser("status", help="the store's schema revision and this release's")
    ds.add_argument("--check", action="store_true", help="exit 6 unless the store is current")
    _json(ds)
    _json(dsub.add_parser("upgrade", help="apply this release's migrations to the store"))
    return parser


def port_number(text: str) -> int:
    value = count(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 1-65535, got {text!r}")
    return value


def worker_count(text: str) -> int:
    value = count(text)
    if not 0 <= value <= 64:
        raise argparse.ArgumentTypeError(f"must be 0-64, got {text!r}")
    return value


def parse(argv: Sequence[str]) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


__all__ = ["UsageError", "add_filters", "add_request_args", "build_parser", "parse"]

"""The ``broker`` command line: parse arguments, call the library, render the result.

No decisions are made here. Exit codes: 0 success, 2 invalid input, 3 no shape can serve
the request. ``--json`` prints one JSON document on stdout, also for errors. Cloud SDKs are
never imported on the paths in this module (``broker --help``, ``quote``, ``shapes``,
``validate``): see tests/broker/test_imports.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence
from typing import NoReturn

from broker import __version__, cli_clusters, cli_providers
from broker.diagnostics import Diagnostic, InvalidRequest
from broker.errors import BrokerError
from broker.launchfile import parse_launch_file, request_from_launch_file
from broker.quote import QuoteRequest, quote
from broker.ranking import Exclusion, RankRequest
from broker.render import money, table
from broker.settings import Settings
from broker.views import quote_document
from shapes.catalog import ShapeFilter, load_catalog
from shapes.gpus import gpu_filter_names
from shapes.model import Provisioning

EXIT_OK = 0
EXIT_INVALID = 2
EXIT_NO_SHAPE = 3


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def _add_filters(p: argparse.ArgumentParser, *, per_plan_price: bool) -> None:
    g = p.add_argument_group("filters")
    g.add_argument(
        "--gpu",
        action="append",
        default=[],
        metavar="MODEL",
        help="GPU model, e.g. H100, A100-80GB, L4; a family (A100, V100, H100) selects all sizes. "
        "Repeat for several.",
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
        type=float,
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
    p.add_argument("--gpus", type=int, help="number of GPUs (1..72; burst mode allows at most 48)")
    p.add_argument(
        "--priority",
        nargs="+",
        action="extend",
        metavar="SHAPE_ID",
        help="preferred shapes in order (overrides the file's burst_shape_priority_list)",
    )
    _add_filters(p, per_plan_price=True)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="broker",
        description=(
            "Find, quote and provision GPU clusters on AWS, GCP and Azure for burst-mode ML "
            "experiments. Quotes are dry runs: they spend nothing and need no cloud account."
        ),
        epilog="Shape ids look like aws:us-east-1:p5.48xlarge:spot "
        "(provider:region:instance_type:spot|on-demand). Exit codes: 0 ok, 2 invalid input, "
        "3 no shape can serve the request, 4 nodes may be left running (run broker reconcile).",
    )
    parser.add_argument("--version", action="version", version=f"burst-broker {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    q = sub.add_parser(
        "quote",
        help="rank and price shapes for a request (dry run)",
        description=(
            "Rank catalog shapes for G GPUs and price each plan. With a priority list, only the "
            "listed shapes are candidates, in the listed order; without one (or if it names no "
            "known shape) every shape is a candidate, cheapest first. Each plan splits the GPUs "
            "into NNODES x N_PROC = G."
        ),
    )
    add_request_args(q)
    q.add_argument("--hours", type=float, default=1.0, help="hours to estimate the cost for (1)")
    q.add_argument("--explain", action="store_true", help="list every excluded shape and why")
    q.add_argument(
        "--limit",
        type=int,
        metavar="N",
        help="show at most N plans (table default 20; JSON default all)",
    )
    q.add_argument("--json", action="store_true", help="print one JSON document")

    s = sub.add_parser("shapes", help="list the shape catalog", description="List catalog shapes.")
    _add_filters(s, per_plan_price=False)
    s.add_argument("--json", action="store_true", help="print a JSON list of shapes")

    v = sub.add_parser(
        "validate",
        help="check an experiment launch file",
        description="Check a .isc launch file against every rule of the format. Exit 0 valid, "
        "2 invalid.",
    )
    v.add_argument("launch_file", metavar="FILE.isc")
    v.add_argument("--json", action="store_true", help="print the verdict as JSON")
    cli_clusters.add_parsers(sub, add_request_args)
    cli_providers.add_parsers(sub)
    return parser


def _emit_json(doc: object) -> None:
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")


def _print_warnings(warnings: Sequence[Diagnostic]) -> None:
    for w in warnings:
        print(f"warning: {w.render()}", file=sys.stderr)


def _fail(errors: Sequence[Diagnostic], warnings: Sequence[Diagnostic], as_json: bool) -> int:
    if as_json:
        _emit_json(
            {
                "errors": [e.to_json_dict() for e in errors],
                "warnings": [w.to_json_dict() for w in warnings],
            }
        )
    else:
        _print_warnings(warnings)
        for e in errors:
            print(f"broker: error: {e.render()}", file=sys.stderr)
    return EXIT_INVALID


def _shape_filter(args: argparse.Namespace, settings: Settings) -> ShapeFilter:
    errors: list[Diagnostic] = []
    known = load_catalog(settings.catalog_dir).providers
    for name in args.gpu:
        try:
            gpu_filter_names(name)
        except ValueError as exc:
            errors.append(Diagnostic(field="gpu", message=str(exc)))
    for prov in args.provider:
        if prov.lower() not in known:
            errors.append(
                Diagnostic(
                    field="provider",
                    message=f"unknown provider {prov!r} (known: {', '.join(known)})",
                )
            )
    if args.max_price_per_hour is not None and not args.max_price_per_hour > 0:
        errors.append(
            Diagnostic(
                field="max_price_per_hour", message=f"must be > 0, got {args.max_price_per_hour}"
            )
        )
    if errors:
        raise InvalidRequest(errors)
    provisioning = (
        Provisioning.SPOT if args.spot else Provisioning.ON_DEMAND if args.on_demand else None
    )
    return ShapeFilter(
        gpus=tuple(args.gpu),
        providers=tuple(args.provider),
        regions=tuple(args.region),
        provisioning=provisioning,
    )


def cmd_validate(args: argparse.Namespace, settings: Settings) -> int:
    result = parse_launch_file(args.launch_file, burst_max_gpus=settings.burst_max_gpus)
    if args.json:
        _emit_json(result.to_json_dict())
    else:
        _print_warnings(result.warnings)
        for e in result.errors:
            print(f"{result.source}: error: {e.render()}", file=sys.stderr)
        if result.valid and result.experiment is not None:
            exp = result.experiment
            print(
                f"{result.source}: valid ({exp.compute_mode.value} experiment "
                f"{exp.experiment_name!r}, {exp.gpus} GPUs)"
            )
    return EXIT_OK if result.valid else EXIT_INVALID


def quote_request_from_args(args: argparse.Namespace, settings: Settings) -> QuoteRequest:
    """The request that ``quote`` and ``provision`` arguments describe."""
    flt = _shape_filter(args, settings)
    overrides: dict[str, object] = {
        "filter": flt,
        "max_price_per_hour": args.max_price_per_hour,
        "burst_max_gpus": settings.burst_max_gpus,
        "priority": tuple(args.priority) if args.priority else None,
    }
    if args.launch_file is not None:
        if args.gpus is not None:
            raise InvalidRequest(
                [Diagnostic(field="gpus", message="give either FILE.isc or --gpus, not both")]
            )
        result = parse_launch_file(args.launch_file, burst_max_gpus=settings.burst_max_gpus)
        hours = getattr(args, "hours", 1.0)
        return request_from_launch_file(result, rank_overrides=overrides, hours=hours)
    if args.gpus is None:
        raise InvalidRequest(
            [Diagnostic(field="gpus", message="give --gpus N or a burst launch file FILE.isc")]
        )
    rank = RankRequest(
        **{k: v for k, v in {**overrides, "gpus": args.gpus}.items() if v is not None}
    )
    return QuoteRequest(rank=rank, hours=getattr(args, "hours", 1.0))


_FILTER_FLAGS = {
    "provider": "--provider",
    "region": "--region",
    "gpu": "--gpu",
    "provisioning": "--spot/--on-demand",
    "max_price": "--max-price-per-hour",
    "unavailable": "known unavailable",
}


def _print_refusal(excluded: Sequence[Exclusion]) -> None:
    """Why no plan: counts per rule, and the nearest misses (cheapest over the price cap)."""
    counts = Counter(e.rule.value for e in excluded)
    parts = [f"{n} by {_FILTER_FLAGS.get(rule, rule)}" for rule, n in counts.most_common()]
    print(
        f"broker: no shape can serve this request ({', '.join(parts) or 'no candidates'})",
        file=sys.stderr,
    )
    over_cap = sorted(
        (e for e in excluded if e.price_per_hour is not None),
        key=lambda e: (e.price_per_hour, e.shape_id),
    )
    for e in over_cap[:3]:
        print(f"  nearest: {e.shape_id}: {e.reason}", file=sys.stderr)


def cmd_quote(args: argparse.Namespace, settings: Settings) -> int:
    request = quote_request_from_args(args, settings)
    catalog = load_catalog(settings.catalog_dir)
    # Only --explain reads the state store (recent stockouts): a plain quote stays pure.
    unavailable, blocked = cli_clusters.blocked_for_explain(catalog) if args.explain else ({}, [])
    result = quote(request, catalog, unavailable=unavailable, explain=args.explain)
    if not result.plans and not args.explain:
        result = quote(request, catalog, explain=True)  # so the refusal can say why
    if args.json:
        doc = quote_document(result, limit=args.limit)
        if args.explain:
            doc["blocked"] = blocked
        _emit_json(doc)
        return EXIT_OK if result.plans else EXIT_NO_SHAPE
    cli_clusters.print_blocked(blocked)

    _print_warnings(result.warnings)
    r = request.rank
    mode = "priority list" if result.ranking.priority_used else "cheapest first"
    print(
        f"Quote: {r.gpus} GPUs, burst mode, {request.hours:g} h; {mode}; "
        f"{len(catalog)} shapes, {catalog.describe_age()} (dry run: nothing is created)"
    )
    limit = 20 if args.limit is None else args.limit
    shown = result.plans[:limit]
    if shown:
        rows = [
            (
                i,
                p.shape.id,
                p.shape.gpu,
                f"{p.nodes} x {p.procs_per_node}",
                money(p.shape.price_per_node_hour),
                money(p.price_per_hour),
                money(p.price_per_hour * request.hours),
            )
            for i, p in enumerate(shown, start=1)
        ]
        headers = [
            "#",
            "SHAPE",
            "GPU",
            "NODES x PROCS",
            "$/NODE-H",
            "$/H",
            f"EST. {request.hours:g} h",
        ]
        print(table(headers, rows, right={0, 4, 5, 6}))
        if len(result.plans) > len(shown):
            print(f"... {len(result.plans) - len(shown)} more plans (--limit 0 for all, --json)")
    if result.ranking.excluded and (args.explain or result.ranking.priority_used):
        print("\nExcluded:")
        for e in result.ranking.excluded:
            print(f"  {e.shape_id}: {e.reason}")
    if not result.plans:
        _print_refusal(result.ranking.excluded)
        if not args.explain and not result.ranking.priority_used:
            print("  (--explain lists every excluded shape and why)", file=sys.stderr)
        return EXIT_NO_SHAPE
    return EXIT_OK


def cmd_shapes(args: argparse.Namespace, settings: Settings) -> int:
    flt = _shape_filter(args, settings)
    catalog = load_catalog(settings.catalog_dir)
    shapes = [
        s
        for s in flt.apply(catalog.shapes)
        if args.max_price_per_hour is None or s.price_per_node_hour <= args.max_price_per_hour
    ]
    if args.json:
        _emit_json([s.to_json_dict() for s in shapes])
        return EXIT_OK
    rows = [
        (
            s.id,
            s.gpu,
            s.gpus_per_node,
            s.vcpus,
            f"{s.memory_gib:g}",
            money(s.price_per_node_hour),
            ",".join(s.zones),
        )
        for s in shapes
    ]
    print(
        table(["SHAPE", "GPU", "GPUS", "VCPUS", "MEM GIB", "$/NODE-H", "ZONES"], rows, {2, 3, 4, 5})
    )
    print(f"{len(shapes)} of {len(catalog)} shapes; {catalog.describe_age()}", file=sys.stderr)
    return EXIT_OK


COMMANDS = {
    "quote": cmd_quote,
    "shapes": cmd_shapes,
    "validate": cmd_validate,
    **cli_clusters.COMMANDS,
    **cli_providers.COMMANDS,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in argv
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_INVALID
        settings = Settings.from_env()
        return COMMANDS[args.command](args, settings)
    except UsageError as exc:
        if as_json:
            return _fail([Diagnostic(field=None, message=str(exc))], [], True)
        parser.print_usage(sys.stderr)
        print(str(exc), file=sys.stderr)
        return EXIT_INVALID
    except InvalidRequest as exc:
        return _fail(exc.errors, exc.warnings, as_json)
    except cli_clusters.BrokerCommandError as exc:
        _fail([Diagnostic(field=None, message=str(exc))], [], as_json)
        return exc.exit_code
    except BrokerError as exc:
        _fail([Diagnostic(field=None, message=str(exc))], [], as_json)
        return int(exc.exit_code)
    except ValueError as exc:  # settings from the environment, a scenario file
        return _fail([Diagnostic(field=None, message=str(exc))], [], as_json)


if __name__ == "__main__":
    sys.exit(main())

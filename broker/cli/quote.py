"""``broker quote``, ``broker shapes`` and ``broker validate``: the dry-run commands.

The quote goes through ``Broker.quote`` (what ``provision`` would try). Nothing here opens a
store or imports a cloud SDK; a launch file's module (pydantic) loads only when a file is given.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from broker.cli.output import emit_json, print_warnings, say
from broker.cli.render import quote_table, shapes_table
from broker.settings import Settings
from shapes.errors import Exit

if TYPE_CHECKING:
    from broker.inputs import RequestInputs
    from broker.quote import QuoteRequest
    from broker.ranking import Exclusion
    from shapes.catalog import Catalog, ShapeFilter


CLI_NAMES = {
    "gpu": "--gpu",
    "gpus": "--gpus",
    "launch_file": "FILE.isc",
    "image": "--image",
    "max_hours": "--max-hours",
    "max_recoveries": "--max-recoveries",
}


def inputs_from_args(args: argparse.Namespace) -> RequestInputs:
    """The flags of ``quote``, ``shapes`` and ``provision`` as the core's inputs."""
    from broker.inputs import RequestInputs

    provisioning = "spot" if args.spot else "on-demand" if args.on_demand else None
    return RequestInputs(
        gpus=getattr(args, "gpus", None),
        launch_path=getattr(args, "launch_file", None),
        priority=tuple(getattr(args, "priority", None) or ()),
        strict_priority=bool(getattr(args, "strict_priority", False)),
        gpu=tuple(args.gpu),
        provider=tuple(args.provider),
        region=tuple(args.region),
        provisioning=provisioning,
        max_price_per_hour=args.max_price_per_hour,
        hours=getattr(args, "hours", 1.0),
        image=getattr(args, "image", None),
        max_hours=getattr(args, "max_hours", None),
        max_recoveries=getattr(args, "max_recoveries", None),
        names=CLI_NAMES,
    )


def shape_filter(args: argparse.Namespace, catalog: Catalog) -> ShapeFilter:
    """The filters the flags name, every unknown value refused with a hint."""
    from broker.inputs import shape_filter as core_filter

    return core_filter(inputs_from_args(args), catalog)


def request_from_args(
    args: argparse.Namespace, settings: Settings, catalog: Catalog
) -> QuoteRequest:
    """The request that ``quote`` and ``provision`` arguments describe."""
    from broker.inputs import build_request

    request, _ = build_request(
        inputs_from_args(args), burst_max_gpus=settings.burst_max_gpus, catalog=catalog
    )
    return request


_FILTER_FLAGS = {
    "provider": "--provider",
    "region": "--region",
    "gpu": "--gpu",
    "provisioning": "--spot/--on-demand",
    "max_price": "--max-price-per-hour",
    "unavailable": "known unavailable (blocked, or outside configured regions)",
}


def print_refusal(excluded: Sequence[Exclusion]) -> None:
    """Why no plan: counts per rule, and the nearest misses (cheapest over the price cap)."""
    counts = Counter(e.rule.value for e in excluded)
    parts = [f"{n} by {_FILTER_FLAGS.get(rule, rule)}" for rule, n in counts.most_common()]
    say(f"broker: no shape can serve this request ({', '.join(parts) or 'no candidates'})")
    over_cap = sorted(
        (e for e in excluded if e.price_per_hour is not None),
        key=lambda e: (e.price_per_hour, e.shape_id),
    )
    for e in over_cap[:3]:
        say(f"  nearest: {e.shape_id}: {e.reason}")


def print_blocks(blocks: Sequence[object]) -> None:
    from broker.scopes import Block

    listed = [b for b in blocks if isinstance(b, Block)]
    if listed:
        say("Blocked scopes (recent provisioning failures; not asked again until they expire):")
        for b in listed:
            say(f"  {b.scope.key}: {b.reason}")


def cmd_quote(args: argparse.Namespace, settings: Settings) -> int:
    from broker.api import Broker
    from broker.views import blocks_document, quote_document, quote_json

    broker = Broker(settings)
    catalog = broker.catalog
    request = request_from_args(args, settings, catalog)
    result = broker.quote(request, explain=args.explain)
    if not result.plans and not args.explain:
        result = broker.quote(request, explain=True)  # so the refusal can say why
    blocks = broker.blocks() if args.explain else []
    if args.explain:  # plans the cached quota readings rule out (broker.cli.quotas)
        from broker.cli.quotas import print_quota_skips, quota_skips, quota_skips_document

        skips = quota_skips(broker, result.plans)
    limit = None if args.limit == 0 else args.limit
    if args.json:
        if args.explain:
            doc = quote_document(result, limit=limit)
            doc["blocked"] = blocks_document(blocks)["blocks"]
            doc["quota_skips"] = quota_skips_document(skips)
            emit_json(doc)
        else:
            sys.stdout.write(quote_json(result, limit=limit) + "\n")
        print_warnings(result.warnings)
        return Exit.OK if result.plans else Exit.NO_SHAPE
    print_blocks(blocks)
    print_warnings(result.warnings)
    r = request.rank
    mode = "priority list" if result.ranking.priority_used else "cheapest first"
    print(
        f"Quote: {r.gpus} GPUs, burst mode, {request.hours:g} h; {mode}; "
        f"{len(catalog)} shapes, {catalog.describe_age()} (dry run: nothing is created)"
    )
    shown = result.plans[: 20 if args.limit is None else (limit or len(result.plans))]
    if shown:  # the table, then footnotes on undated and old prices (broker.cli.render)
        print(quote_table(shown, request.hours, more=len(result.plans) - len(shown)))
    if result.ranking.excluded and (args.explain or result.ranking.priority_used):
        print("\nExcluded:")
        for e in result.ranking.excluded:
            print(f"  {e.shape_id}: {e.reason}")
    if args.explain:
        print_quota_skips(skips)
    if not result.plans:
        print_refusal(result.ranking.excluded)
        if not args.explain and not result.ranking.priority_used:
            say("  (--explain lists every excluded shape and why)")
        return Exit.NO_SHAPE
    return Exit.OK


def cmd_shapes(args: argparse.Namespace, settings: Settings) -> int:
    from broker.views import shape_document
    from shapes.catalog import load_catalog

    catalog = load_catalog(settings.catalog_dir, cache_dir=settings.cache_dir)
    flt = shape_filter(args, catalog)
    cap = args.max_price_per_hour
    shapes = [s for s in flt.apply(catalog.shapes) if cap is None or s.price_per_node_hour <= cap]
    if args.json:
        emit_json([shape_document(s) for s in shapes])
        return Exit.OK
    rows, notes = shapes_table(shapes)
    print(rows)
    for note in notes:
        say(note)
    say(f"{len(shapes)} of {len(catalog)} shapes; {catalog.describe_age()}")
    return Exit.OK


def cmd_validate(args: argparse.Namespace, settings: Settings) -> int:
    from broker.launchfile import parse_launch_file

    result = parse_launch_file(args.launch_file, burst_max_gpus=settings.burst_max_gpus)
    if args.json:
        emit_json(result.to_json_dict())
    else:
        print_warnings(result.warnings)
        for e in result.errors:
            say(f"{result.source}: error: {e.render()}")
        if result.valid and result.experiment is not None:
            exp = result.experiment
            print(
                f"{result.source}: valid ({exp.compute_mode.value} experiment "
                f"{exp.experiment_name!r}, {exp.gpus} GPUs)"
            )
    return Exit.OK if result.valid else Exit.INVALID

"""CLI commands about the clouds themselves: ``broker providers`` (configured? usable?),
``broker catalog refresh`` (live shapes and prices into the local catalog) and ``broker
catalog check`` (the price sanity checks on the catalog in use)."""

from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker.cli.output import emit_json, say
from broker.cli.render import table
from broker.settings import Settings
from providers.errors import ConfigError
from shapes.errors import Exit

if TYPE_CHECKING:
    from providers.config import BrokerConfig

EXIT_OK = Exit.OK


def cmd_providers(args: argparse.Namespace, settings: Settings) -> int:
    from providers.clouds import KNOWN_PROVIDERS
    from providers.config import load_config
    from providers.registry import SIMULATED, provider_status
    from shapes.catalog import load_catalog

    config = load_config(settings.config_path, required=settings.config_explicit)
    catalog = load_catalog(settings.catalog_dir, cache_dir=settings.cache_dir)
    statuses = [
        provider_status(name, state_dir=settings.state_dir, catalog=catalog, config=config)
        for name in (*KNOWN_PROVIDERS, SIMULATED)
    ]
    if args.json:
        doc = {
            "config": config.path or str(settings.config_path),
            "config_exists": config.path is not None,
            "providers": [s.model_dump() for s in statuses],
        }
        emit_json(doc)
        return EXIT_OK
    where = config.path or f"{settings.config_path} (not found: nothing enabled)"
    print(f"configuration: {where}")
    rows = [
        (s.provider, "yes" if s.enabled else "no", "yes" if s.usable else "no", s.detail)
        for s in statuses
    ]
    print(table(["PROVIDER", "ENABLED", "USABLE", "DETAIL"], rows, right=set()))
    return EXIT_OK


def cmd_catalog_refresh(args: argparse.Namespace, settings: Settings) -> int:
    from providers.config import load_config
    from providers.registry import refresh_document
    from shapes.catalog import load_bundled_catalog, parse_catalog_file

    config = load_config(settings.config_path, required=settings.config_explicit)
    from providers.clouds import KNOWN_PROVIDERS

    if args.provider not in KNOWN_PROVIDERS:
        raise ConfigError(
            f"--provider {args.provider!r}: no such cloud (known: {', '.join(KNOWN_PROVIDERS)})"
        )
    directory = Path(args.output) if args.output else settings.catalog_dir
    if directory is None:
        raise ConfigError("no catalog directory: give --output DIR or set BROKER_CATALOG_DIR")
    doc: dict[str, Any]
    if args.prices_only:
        doc = _azure_prices_only(args.provider, config)
    else:
        say(f"refreshing the {args.provider} catalog from its live APIs ...")
        doc = refresh_document(
            args.provider,
            config=config,
            bundled=load_bundled_catalog(),
            today=date.today(),
            credentials=settings.credentials,
        )
    from providers.refresh import refuse_failing

    refuse_failing(doc)  # a refresh failing a sanity check is not written
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{args.provider}.json"
    partial = target.with_suffix(".json.partial")
    partial.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    try:
        source, shapes = parse_catalog_file(partial, bundled=False)  # refuse a bad file
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(target)
    summary = {
        "provider": args.provider,
        "path": str(target),
        "shapes": len(shapes),
        "prices_as_of": source.prices_as_of.isoformat() if source.prices_as_of else None,
        "spot_as_of": doc.get("spot_as_of"),
        "price_source": source.price_source,
        "notes": source.notes,
    }
    if args.json:
        emit_json(summary)
    else:
        print(f"wrote {len(shapes)} {args.provider} shapes to {target}")
        print(f"prices as of {summary['prices_as_of']}: {source.price_source}")
        if source.notes:
            print(f"notes: {source.notes}")
    return EXIT_OK


def _azure_prices_only(provider: str, config: BrokerConfig) -> dict[str, Any]:
    """``--prices-only``: Azure's public Retail Prices API, no account (the [azure] section,
    if any, names the regions and the prices endpoint; it need not be enabled)."""
    if provider != "azure":
        raise ConfigError(
            f"--prices-only is for --provider azure (its Retail Prices API needs no account); "
            f"{provider}'s prices come with its instance types from its own APIs"
        )
    from providers.azure.catalog import build_prices_document
    from providers.azure.config import AzureConfig
    from shapes.catalog import load_bundled_catalog

    section = config.section_of(AzureConfig)
    say("refreshing the azure prices from the public Retail Prices API (no account) ...")
    return build_prices_document(
        bundled=load_bundled_catalog(),
        today=date.today(),
        regions=section.regions if section is not None else None,
        endpoint=section.prices_endpoint if section is not None else None,
        ca_bundle=section.ca_bundle if section is not None else None,
    )


def cmd_catalog(args: argparse.Namespace, settings: Settings) -> int:
    """``broker catalog refresh`` or ``broker catalog check``."""
    if args.catalog_command == "check":
        return cmd_catalog_check(args, settings)
    return cmd_catalog_refresh(args, settings)


def cmd_catalog_check(args: argparse.Namespace, settings: Settings) -> int:
    """Run the price sanity checks (:mod:`shapes.sanity`) on every catalog file in use,
    bundled and refreshed; exit 2 (INVALID) when any fails, naming the rows."""
    from shapes.catalog import load_catalog
    from shapes.errors import CatalogError
    from shapes.sanity import check_document, format_problems

    catalog = load_catalog(settings.catalog_dir, cache_dir=settings.cache_dir)
    today = date.today()
    reports = []
    for source in catalog.sources:
        try:
            doc = json.loads(Path(source.path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CatalogError(f"cannot read catalog {source.path}: {exc}") from exc
        problems = sorted(check_document(doc), key=lambda p: (p.where, p.rule))
        reports.append((source, problems))
    total = sum(len(problems) for _, problems in reports)
    if args.json:
        emit_json(
            {
                "problems": total,
                "sources": [
                    {
                        "provider": s.provider,
                        "path": s.path,
                        "bundled": s.bundled,
                        "prices_as_of": s.prices_as_of.isoformat() if s.prices_as_of else None,
                        "spot_as_of": s.spot_as_of.isoformat() if s.spot_as_of else None,
                        "age_days": s.age_days(today),
                        "stale": s.is_stale(today),
                        "undated_prices": s.undated,  # shapes whose price has no date
                        "problems": [p.to_json_dict() for p in problems],
                    }
                    for s, problems in reports
                ],
            }
        )
    else:
        for s, problems in reports:
            kind = "bundled" if s.bundled else "refreshed"
            verdict = f"{len(problems)} problem(s)" if problems else "ok"
            print(f"{s.provider} ({kind}, {s.path}): {verdict}")
            if problems:
                print(format_problems(problems))
        print(f"{total} problem(s) in {len(reports)} file(s); {catalog.describe_age(today)}")
    return int(Exit.INVALID) if total else EXIT_OK

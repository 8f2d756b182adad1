"""CLI commands about the clouds themselves: ``broker providers`` (configured? usable?) and
``broker catalog refresh`` (live shapes and prices into the local catalog)."""

from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path
from typing import Any

from broker.cli.output import emit_json, say
from broker.cli.render import table
from broker.settings import Settings
from providers.errors import ConfigError
from shapes.errors import Exit

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
    say(f"refreshing the {args.provider} catalog from its live APIs ...")
    doc: dict[str, Any] = refresh_document(
        args.provider, config=config, bundled=load_bundled_catalog(), today=date.today()
    )
    directory = Path(args.output) if args.output else settings.catalog_dir
    if directory is None:
        raise ConfigError("no catalog directory: give --output DIR or set BROKER_CATALOG_DIR")
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{args.provider}.json"
    partial = target.with_suffix(".json.partial")
    partial.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    source, shapes = parse_catalog_file(partial, bundled=False)  # refuse to install a bad file
    partial.replace(target)
    summary = {
        "provider": args.provider,
        "path": str(target),
        "shapes": len(shapes),
        "prices_as_of": source.prices_as_of.isoformat() if source.prices_as_of else None,
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

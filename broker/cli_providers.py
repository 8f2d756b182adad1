"""CLI commands about the clouds themselves: ``broker providers`` (configured? usable?) and
``broker catalog refresh`` (live shapes and prices into the local catalog)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path
from typing import Any

from broker.render import table
from broker.settings import Settings
from providers.errors import ConfigError

EXIT_OK = 0
EXIT_UNUSABLE = 3


def cmd_providers(args: argparse.Namespace, settings: Settings) -> int:
    from providers.clouds import KNOWN_PROVIDERS
    from providers.config import load_config
    from providers.registry import SIMULATED, provider_status
    from shapes.catalog import load_catalog

    config = load_config(settings.config_path, required=settings.config_explicit)
    catalog = load_catalog(settings.catalog_dir)
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
        print(json.dumps(doc, indent=2))
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
    print(f"refreshing the {args.provider} catalog from its live APIs ...", file=sys.stderr)
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
        print(json.dumps(summary, indent=2))
    else:
        print(f"wrote {len(shapes)} {args.provider} shapes to {target}")
        print(f"prices as of {summary['prices_as_of']}: {source.price_source}")
        if source.notes:
            print(f"notes: {source.notes}")
    return EXIT_OK


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "providers",
        help="which clouds are configured and usable, and why not",
        description="Read the configuration file (BROKER_CONFIG, default "
        "~/.config/burst-broker/config.toml) and check each enabled cloud with its own "
        "credential chain. Credentials are never printed.",
    )
    p.add_argument("--json", action="store_true")
    c = sub.add_parser("catalog", help="manage the local shape catalog")
    csub = c.add_subparsers(dest="catalog_command", metavar="COMMAND", required=True)
    r = csub.add_parser(
        "refresh",
        help="fetch live GPU shapes and prices into the local catalog",
        description="List GPU instance types, their zones and prices from the cloud's APIs "
        "and write a dated catalog file that takes precedence over the bundled one "
        "(BROKER_CATALOG_DIR, default ~/.local/share/burst-broker/catalog).",
    )
    r.add_argument(
        "--provider", required=True, choices=["aws", "gcp", "azure"], help="the cloud to refresh"
    )
    r.add_argument("--output", metavar="DIR", help="write here instead of the local catalog dir")
    r.add_argument("--json", action="store_true")


COMMANDS = {"providers": cmd_providers, "catalog": cmd_catalog_refresh}

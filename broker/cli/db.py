"""``broker db status`` and ``broker db upgrade``: the store's schema revision, and applying
this release's migrations to it (broker.migrations). An operator's commands, like ``broker
token``: they act on the store itself (BROKER_STATE_URL, else SQLite in BROKER_STATE_DIR)."""

from __future__ import annotations

import argparse

from broker.cli.output import emit_json, say
from broker.settings import Settings
from broker.state import SchemaStatus, Store
from shapes.errors import Exit


def _document(store: Store, status: SchemaStatus) -> dict[str, object]:
    return {
        "store": store.where,  # never with its password
        "revision": status.revision,
        "head": status.head,
        "empty": not status.has_tables,
        "current": status.current,
    }


def cmd_db(args: argparse.Namespace, settings: Settings) -> int:
    store = Store.open(settings.state_dir, settings.state_url, check_schema=False)
    try:
        if args.db_command == "upgrade":
            before, after = store.upgrade()
            if args.json:
                emit_json({**_document(store, after), "from": before.revision})
            elif before.current:
                say(f"the store {store.where} is up to date (revision {after.revision})")
            else:
                say(
                    f"upgraded the store {store.where} to revision {after.revision} "
                    f"(it had {before.describe()})"
                )
            return Exit.OK
        status = store.schema_status()
        if args.json:
            emit_json(_document(store, status))
        elif status.current:
            say(f"the store {store.where} is up to date (revision {status.revision})")
        elif status.newer:
            say(
                f"the store {store.where} has revision {status.revision}, newer than this "
                f"broker's {status.head}: upgrade burst-broker"
            )
        else:
            local = store.engine.dialect.name == "sqlite"  # upgrades itself when next opened
            say(
                f"the store {store.where} has {status.describe()}; this broker needs "
                f"revision {status.head}: run `broker db upgrade`"
                + (
                    " (a SQLite store also upgrades itself when a broker next opens it)"
                    if local
                    else ""
                )
            )
        return Exit.UNAVAILABLE if args.check and not status.current else Exit.OK
    finally:
        store.engine.dispose()

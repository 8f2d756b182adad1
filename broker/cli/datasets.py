"""``broker datasets upload ID DIR`` and ``broker datasets list``: datasets in the artifact
store, where experiments' ``dataset_id_list`` finds them."""

from __future__ import annotations

import argparse
from pathlib import Path

from broker.api import Broker
from broker.cli.output import emit_json, say
from broker.cli.render import table
from broker.settings import Settings
from shapes.errors import Exit


def cmd_datasets(args: argparse.Namespace, settings: Settings) -> int:
    from broker.datasets import list_datasets, upload_dataset

    if settings.service_url:
        say("note: `broker datasets` writes to the configured store; BROKER_URL is not used")
    store = Broker(settings).artifact_store
    if args.datasets_command == "upload":
        progress = None if args.json else (lambda line: say(f"  {line}"))
        done = upload_dataset(store, args.org, args.dataset_id, Path(args.dir), progress)
        if args.json:
            emit_json({**done.to_json_dict(), "org": args.org, "store": store.url})
        else:
            say(
                f"dataset {done.dataset_id} of {args.org!r}: {done.files} file(s), "
                f"{done.bytes:,} bytes in {store.url}; experiments list it in dataset_id_list "
                f"and find it at /data/{done.dataset_id}/"
            )
        return Exit.OK
    found = list_datasets(store, args.org)
    if args.json:
        emit_json({"org": args.org, "datasets": [d.to_json_dict() for d in found]})
        return Exit.OK
    if not found:
        say(f"no datasets of {args.org!r} in {store.url} (broker datasets upload ID DIR)")
        return Exit.OK
    rows = [(d.dataset_id, d.files, f"{d.bytes:,}") for d in found]
    print(table(["DATASET", "FILES", "BYTES"], rows, right={1, 2}))
    return Exit.OK

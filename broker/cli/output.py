"""How the CLI prints: one JSON document on stdout, or lines and tables; messages on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from broker.api import Broker, LogPage
    from broker.client import Client
    from broker.diagnostics import Diagnostic
    from shapes.errors import BrokerError

    LogSource = Broker | Client


SETTLE = 1.5  # seconds: an ended cluster's agents flush their last lines around its end


def follow(
    source: LogSource, cluster_id: str, rank: int, *, after: int = 0, wait: float = 10.0
) -> Iterator[LogPage]:
    """Pages of a rank's new lines (each call held up to ``wait`` s for one), until the
    cluster has ended and every line is out. ``source`` is a Broker or a Client."""
    import time

    from broker.lifecycle import TERMINAL

    settled = False  # an ended cluster's last batches may still be on their way: look once more
    while True:
        page = source.logs(cluster_id, rank, tail=1000, after=after, wait=wait)
        yield page
        if page.lines:
            after = page.lines[-1].id
            settled = False
        elif page.cluster.status in TERMINAL:
            if settled:
                return
            settled = True
            time.sleep(SETTLE)


def emit_json(doc: object) -> None:
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def print_warnings(warnings: Sequence[Diagnostic]) -> None:
    for w in warnings:
        say(f"warning: {w.render()}")


def print_errors(exc: BrokerError, as_json: bool) -> None:
    """A named error: the errors document (``--json``), else one ``broker: error:`` line
    per problem, warnings first."""
    from broker.views import error_document

    if as_json:
        emit_json(error_document(exc))
        return
    errors = getattr(exc, "errors", None)
    print_warnings(getattr(exc, "warnings", ()))
    if errors:
        for e in errors:
            say(f"broker: error: {e.render()}")
    else:
        say(f"broker: error: {exc}")


def fail_with(message: str, code: int, as_json: bool) -> int:
    if as_json:
        emit_json({"errors": [{"field": None, "message": message, "line": None}], "warnings": []})
    else:
        say(f"broker: error: {message}")
    return code

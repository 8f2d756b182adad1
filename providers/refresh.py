"""What every live catalog refresh shares: the document it writes and how notes list names.

The document has exactly the format of the bundled ``shapes/data/<provider>.json`` files
(:func:`shapes.catalog.parse_catalog_file` validates it before it is installed), dated today:
the prices were read at the source now.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date
from typing import Any


def catalog_document(
    provider: str,
    *,
    today: date,
    price_source: str,
    notes: str,
    instance_types: Mapping[str, Any],
) -> dict[str, Any]:
    """A refreshed catalog document, instance types in name order."""
    return {
        "provider": provider,
        "currency": "USD",
        "prices_as_of": today.isoformat(),
        "retrieved": today.isoformat(),
        "price_source": price_source,
        "notes": notes,
        "instance_types": {name: instance_types[name] for name in sorted(instance_types)},
    }


def listing(names: Iterable[str], most: int = 12) -> str:
    """Names for a note: sorted, at most ``most`` of them, then how many more."""
    ordered = sorted(names)
    shown = ", ".join(ordered[:most])
    return shown + (f" and {len(ordered) - most} more" if len(ordered) > most else "")

"""What every live catalog refresh shares: the document it writes, its dates, the sanity
guard before it is installed, and how notes list names.

The document has exactly the format of the bundled ``shapes/data/<provider>.json`` files
(:func:`shapes.catalog.parse_catalog_file` validates it before it is installed):

- ``prices_as_of`` (file): the newest date the feed gave for the prices used (AWS's offer
  ``publicationDate``, GCP's ``pricingInfo.effectiveTime``, Azure's ``effectiveStartDate``),
  or the day of the refresh when the feed gave none; never later than the refresh;
- ``prices_as_of`` (one type in one region): that price's own source date, written only
  where it differs from the file's (a price that took effect earlier, or one carried over
  from the bundled catalog);
- ``spot_as_of``: when the spot prices were sampled (the refresh), wherever there is spot;
- ``retrieved``: the day of the refresh.

:func:`refuse_failing` runs :func:`shapes.sanity.check_document` on the document: a refresh
that fails any check is refused with a :class:`shapes.errors.CatalogError` naming every row,
and nothing is written (the previous file stays).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date, datetime
from typing import Any

from shapes.errors import CatalogError

#: How many failing rows the refusal lists before it says how many more there are.
MOST_PROBLEMS_SHOWN = 40


def feed_date(value: object) -> date | None:
    """The day of a feed's date or timestamp (``2026-11-01``, ``2026-11-01T00:00:00Z``,
    ``2026-11-01T08:30:12.5+01:00``, a ``datetime``); None if it is missing or unreadable."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


def catalog_document(
    provider: str,
    *,
    today: date,
    price_source: str,
    notes: str,
    instance_types: Mapping[str, Any],
    dates: Mapping[tuple[str, str], date] | None = None,
    spot_as_of: date | None = None,
) -> dict[str, Any]:
    """A refreshed catalog document, instance types in name order.

    ``dates``: (instance type, region) -> the source date of that entry's on-demand price
    (entries without one are dated the refresh day). The file's ``prices_as_of`` is the
    newest of them; an entry whose date differs gets its own ``prices_as_of`` (a spot-only
    entry has none: its price is dated by ``spot_as_of``). ``spot_as_of`` (default:
    the refresh day) is written when any entry has a spot price."""
    stamps: dict[tuple[str, str], date] = {}  # entries with an on-demand price
    has_spot = False
    for name, spec in instance_types.items():
        for region, entry in spec["regions"].items():
            has_spot = has_spot or entry.get("spot") is not None
            if entry.get("on_demand") is not None:
                when = (dates or {}).get((name, region), today)
                stamps[(name, region)] = min(when, today)
    file_date = max(stamps.values(), default=today)
    types: dict[str, Any] = {}
    for name in sorted(instance_types):
        spec = dict(instance_types[name])
        regions: dict[str, Any] = {}
        for region, entry in spec["regions"].items():
            stamped = dict(entry)
            stamped.pop("prices_as_of", None)
            if stamps.get((name, region), file_date) != file_date:
                stamped["prices_as_of"] = stamps[(name, region)].isoformat()
            regions[region] = stamped
        spec["regions"] = regions
        types[name] = spec
    doc: dict[str, Any] = {
        "provider": provider,
        "currency": "USD",
        "prices_as_of": file_date.isoformat(),
    }
    if has_spot:
        doc["spot_as_of"] = min(spot_as_of or today, today).isoformat()
    doc.update(
        retrieved=today.isoformat(), price_source=price_source, notes=notes, instance_types=types
    )
    return doc


def refuse_failing(doc: Mapping[str, Any]) -> None:
    """Raise :class:`CatalogError` naming every row of ``doc`` that fails a sanity check
    (:mod:`shapes.sanity`); return if it passes them all."""
    from shapes.sanity import check_document, format_problems

    problems = check_document(doc)
    if not problems:
        return
    lines = format_problems(problems).splitlines()
    shown = lines[:MOST_PROBLEMS_SHOWN]
    if len(lines) > len(shown):
        shown.append(f"... and {len(lines) - len(shown)} more")
    provider = doc.get("provider", "?")
    raise CatalogError(
        f"the refreshed {provider} catalog fails {len(problems)} sanity check(s), so it was "
        f"not written (the previous catalog stays in use):\n" + "\n".join(shown)
    )


def listing(names: Iterable[str], most: int = 12) -> str:
    """Names for a note: sorted, at most ``most`` of them, then how many more."""
    ordered = sorted(names)
    shown = ", ".join(ordered[:most])
    return shown + (f" and {len(ordered) - most} more" if len(ordered) > most else "")

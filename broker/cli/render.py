"""Plain-text tables for the CLI's human output (no dependency, no colour)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import date
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from broker.ranking import Plan
    from shapes.model import Shape


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], right: set[int]) -> str:
    """Columns padded to their widest cell; indexes in ``right`` are right-aligned."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(row)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def money(value: float) -> str:
    return f"${value:,.2f}"


#: The footnote of a price marked ``*`` (:func:`price_cell`).
UNDATED_NOTE = "* price carried from an older catalog, date unknown"


def price_cell(value: float, shape: Shape) -> str:
    """A price in a table, ``*`` after it when the shape's price is undated."""
    return money(value) + ("*" if shape.undated else "")


def quote_table(
    plans: Sequence[Plan], hours: float, *, more: int = 0, today: date | None = None
) -> str:
    """``broker quote``'s plans (ranked from 1) as a table, a line saying how many more
    plans are not shown (``more``), then the footnotes on the shown plans' price dates
    (:func:`price_date_notes`); ``today`` counts the ages (default: today)."""
    rows: list[tuple[object, ...]] = [
        (
            i,
            p.shape.id,
            p.shape.gpu,
            f"{p.nodes} x {p.procs_per_node}",
            price_cell(p.shape.price_per_node_hour, p.shape),
            money(p.price_per_hour),
            money(p.price_per_hour * hours),
        )
        for i, p in enumerate(plans, start=1)
    ]
    headers = ["#", "SHAPE", "GPU", "NODES x PROCS", "$/NODE-H", "$/H", f"EST. {hours:g} h"]
    if any(p.price_per_hour_max != p.price_per_hour for p in plans):
        # spot priced by zone: $/H is the zone tried first, this the dearest it may try
        headers.append("$/H UP TO")
        rows = [
            (*row, money(p.price_per_hour_max) if p.shape.zone_prices else "")
            for row, p in zip(rows, plans, strict=True)
        ]
    lines = [table(headers, rows, right={0, 4, 5, 6, 7})]
    if more:
        lines.append(f"... {more} more plans (--limit 0 for all, --json)")
    labelled = ((str(i), p.shape) for i, p in enumerate(plans, start=1))
    lines.extend(price_date_notes(labelled, "plan", today))
    return "\n".join(lines)


def price_date_notes(
    rows: Iterable[tuple[str, Shape]], noun: str, today: date | None = None
) -> list[str]:
    """The footnotes on the price dates of a table's rows (``(label, shape)``):
    :data:`UNDATED_NOTE` if any price is undated, and one line on the rows whose price is
    older than ``STALE_DAYS`` days, with each such date and its age. Numbered labels (a
    plan's rank) are named, as ranges (``plans 2-4, 7 as of ...``); empty ones counted
    (``12 shapes as of ...``). ``noun`` names one row."""
    from shapes.model import STALE_DAYS

    today = today or date.today()
    undated = False
    stale: dict[date, list[str]] = {}
    for label, shape in rows:
        undated = undated or shape.undated
        if shape.prices_as_of is not None and shape.is_stale(today):
            stale.setdefault(shape.prices_as_of, []).append(label)
    notes = [UNDATED_NOTE] if undated else []
    if stale:
        named = all(label for labels in stale.values() for label in labels)
        parts = []
        for day, labels in sorted(stale.items()):
            n = len(labels)
            rows_ = _labels(labels) if named else f"{n} {noun if n == 1 else noun + 's'}"
            parts.append(f"{rows_} as of {day.isoformat()} ({(today - day).days} days)")
        text = "; ".join(parts)
        if named:
            count = sum(len(labels) for labels in stale.values())
            text = f"{noun if count == 1 else noun + 's'} {text}"
        notes.append(f"price over {STALE_DAYS} days old: {text}")
    return notes


def _labels(labels: Sequence[str]) -> str:
    """Row labels, runs of consecutive numbers as ranges: ``2-4, 7``."""
    if not all(label.isdigit() for label in labels):
        return ", ".join(labels)
    numbers = sorted(int(label) for label in labels)
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _took(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f}s"


def attempts_report(
    attempts: Sequence[Mapping[str, Any]], skipped: Mapping[str, int] | None = None
) -> str:
    """Every attempt of a provisioning as a table (shape, zone, code, how far the error
    reaches, what the broker did next), each failed attempt's message under it, then the
    plans and zones skipped without a launch call, by cause and count."""
    from broker.views import next_step, skip_summary

    lines: list[str] = []
    if attempts:
        rows = []
        for a in attempts:
            step = a.get("next") or next_step(a["outcome"], a["reach"])
            if a["reach"] == "call" and a["retries"]:
                step = f"retried {a['retries']}x, then next zone"
            rows.append(
                (
                    f"{a['cycle']}.{a['attempt']}",
                    a["shape_id"],
                    a["zone"],
                    a["nodes"],
                    a["outcome"],
                    a["error_code"] or "-",
                    a["reach"] or "-",
                    step,
                    _took(a["duration_s"]),
                )
            )
        headers = ["#", "SHAPE", "ZONE", "NODES", "OUTCOME", "CODE", "REACH", "NEXT", "TOOK"]
        lines.append(table(headers, rows, right={3, 8}))
        # What the cloud said, once per code (its last attempt's words) with how often.
        last: dict[str, tuple[int, Mapping[str, Any]]] = {}
        for a in attempts:
            if a["message"]:
                seen = last.get(a["error_code"], (0, a))[0]
                last[a["error_code"]] = (seen + 1, a)
        for code, (count, a) in last.items():
            text = " ".join(str(a["message"]).split())
            text = text if len(text) <= 300 else text[:297] + "..."
            times = f" (x{count}, last {a['cycle']}.{a['attempt']})" if count > 1 else ""
            lines.append(f"  {code}{times}: {text}")
    summary = skip_summary(skipped or {})
    if summary:
        lines.append(summary[0].upper() + summary[1:])
    if not lines:
        lines.append("No attempt was made and nothing was skipped.")
    return "\n".join(lines)


def shapes_table(shapes: Sequence[Shape], today: date | None = None) -> tuple[str, list[str]]:
    """``broker shapes``: one row per shape, undated prices marked ``*``; and the
    footnotes on the price dates (:func:`price_date_notes`, stale shapes counted), which
    the command prints apart from the table (with its summary, on stderr)."""
    rows = [
        (
            s.id,
            s.gpu,
            s.gpus_per_node,
            s.vcpus,
            f"{s.memory_gib:g}",
            price_cell(s.price_per_node_hour, s),
            ",".join(s.zones),
        )
        for s in shapes
    ]
    headers = ["SHAPE", "GPU", "GPUS", "VCPUS", "MEM GIB", "$/NODE-H", "ZONES"]
    return table(headers, rows, {2, 3, 4, 5}), price_date_notes(
        (("", s) for s in shapes), "shape", today
    )

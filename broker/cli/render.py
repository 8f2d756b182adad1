"""Plain-text tables for the CLI's human output (no dependency, no colour)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


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

"""Diagnostics: the errors and warnings the broker reports about a user's input.

One small model serves launch-file validation, quote requests and the CLI's ``--json``
output, so machines see the same ``{"field", "message", "line"}`` objects everywhere. A
plain frozen dataclass (no pydantic): it is on the quote path.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.errors import InvalidRequest
from shapes.checks import describe, is_int


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One problem (or warning) about one input field; ``field`` is None when none applies."""

    field: str | None
    message: str
    line: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.field is not None and not isinstance(self.field, str):
            problems.append(f"field must be a string or None, got {describe(self.field)}")
        if not isinstance(self.message, str):
            problems.append(f"message must be a string, got {describe(self.message)}")
        if self.line is not None and not is_int(self.line):
            problems.append(f"line must be an integer or None, got {describe(self.line)}")
        if problems:
            raise ValueError(f"invalid diagnostic: {'; '.join(problems)}")

    def render(self) -> str:
        where = self.field or "input"
        if self.line is not None:
            where = f"{where} (line {self.line})"
        return f"{where}: {self.message}"

    def to_json_dict(self) -> dict[str, object]:
        return {"field": self.field, "message": self.message, "line": self.line}

    @classmethod
    def from_json_dict(cls, doc: object) -> Diagnostic:
        if not isinstance(doc, dict) or set(doc) - {"field", "message", "line"}:
            raise ValueError(f"invalid diagnostic: {doc!r}")
        return cls(field=doc.get("field"), message=doc.get("message"), line=doc.get("line"))  # type: ignore[arg-type]


__all__ = ["Diagnostic", "InvalidRequest"]

"""Diagnostics: the errors and warnings the broker reports about a user's input.

One small model serves launch-file validation, quote requests and the CLI's ``--json``
output, so machines see the same ``{"field", "message"}`` objects everywhere.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from broker.errors import InvalidRequest


class Diagnostic(BaseModel):
    """One problem (or warning) about one input field; ``field`` is None when none applies."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    field: str | None
    message: str
    line: int | None = None

    def render(self) -> str:
        where = self.field or "input"
        if self.line is not None:
            where = f"{where} (line {self.line})"
        return f"{where}: {self.message}"


__all__ = ["Diagnostic", "InvalidRequest"]

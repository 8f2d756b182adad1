"""Quotes: a ranked, priced plan for a request, without spending anything (a dry run).

Builds on :mod:`broker.ranking`; adds hours and the launch-file path. The JSON document
``broker quote --json`` prints is built in :mod:`broker.views`. Nothing here imports
pydantic (a launch file's request is built in :mod:`broker.launchfile`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from broker.diagnostics import Diagnostic, InvalidRequest
from broker.ranking import Plan, Ranking, RankRequest, rank
from shapes import checks
from shapes.catalog import Catalog

_QUOTE_KEYS = frozenset({"rank", "hours", "launch_file", "experiment_name", "warnings"})


@dataclass(frozen=True, slots=True)
class QuoteRequest:
    """What ``broker quote`` was asked: a ranking request plus how long it would run.

    Checked at construction: ``hours`` a finite number > 0, strict types throughout
    (:class:`InvalidRequest` otherwise).
    """

    rank: RankRequest
    hours: float = 1.0
    launch_file: str | None = None
    experiment_name: str | None = None
    warnings: tuple[Diagnostic, ...] = ()  # found while reading input

    def __post_init__(self) -> None:
        errors: list[Diagnostic] = []
        if not isinstance(self.rank, RankRequest):
            errors.append(
                Diagnostic(
                    field="rank", message=f"must be a RankRequest, got {checks.describe(self.rank)}"
                )
            )
        why = checks.positive(self.hours)
        if why is not None:
            errors.append(Diagnostic(field="hours", message=why))
        for name in ("launch_file", "experiment_name"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                errors.append(
                    Diagnostic(
                        field=name, message=f"must be a string, got {checks.describe(value)}"
                    )
                )
        if not isinstance(self.warnings, tuple | list) or not all(
            isinstance(w, Diagnostic) for w in self.warnings
        ):
            errors.append(Diagnostic(field="warnings", message="must be a list of Diagnostic"))
        elif type(self.warnings) is not tuple:
            object.__setattr__(self, "warnings", tuple(self.warnings))
        if errors:
            raise InvalidRequest(errors)

    def to_json_dict(self) -> dict[str, object]:
        """Plain JSON types (what the store keeps with a cluster)."""
        return {
            "rank": self.rank.to_json_dict(),
            "hours": self.hours,
            "launch_file": self.launch_file,
            "experiment_name": self.experiment_name,
            "warnings": [w.to_json_dict() for w in self.warnings],
        }

    @classmethod
    def from_json_dict(cls, doc: object) -> QuoteRequest:
        """The inverse of :meth:`to_json_dict` (also reads what earlier versions stored)."""
        if not isinstance(doc, dict) or "rank" not in doc:
            raise InvalidRequest([Diagnostic(field=None, message="not a quote request")])
        unknown = checks.unknown_keys(doc, _QUOTE_KEYS)
        if unknown:
            raise InvalidRequest([Diagnostic(field=None, message=unknown)])
        try:
            warnings = tuple(Diagnostic.from_json_dict(w) for w in doc.get("warnings", ()))
        except (TypeError, ValueError) as exc:
            raise InvalidRequest([Diagnostic(field="warnings", message=str(exc))]) from None
        return cls(
            rank=RankRequest.from_json_dict(doc["rank"]),
            hours=doc.get("hours", 1.0),
            launch_file=doc.get("launch_file"),
            experiment_name=doc.get("experiment_name"),
            warnings=warnings,
        )


@dataclass(frozen=True)
class Quote:
    request: QuoteRequest
    ranking: Ranking
    catalog: Catalog

    @property
    def plans(self) -> Sequence[Plan]:
        return self.ranking.plans

    @property
    def warnings(self) -> list[Diagnostic]:
        return [*self.request.warnings, *self.ranking.warnings]


def quote(
    request: QuoteRequest,
    catalog: Catalog,
    *,
    unavailable: Mapping[str, str] | None = None,
    blocked_zones: Mapping[str, frozenset[str]] | None = None,
    explain: bool = False,
) -> Quote:
    """Rank and price; raises InvalidRequest for a request no catalog could serve."""
    ranking = rank(
        request.rank,
        catalog,
        unavailable=unavailable,
        blocked_zones=blocked_zones,
        explain=explain,
    )
    return Quote(request, ranking, catalog)


__all__ = ["InvalidRequest", "Quote", "QuoteRequest", "quote"]

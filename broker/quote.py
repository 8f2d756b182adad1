"""Quotes: a ranked, priced plan for a request, without spending anything (a dry run).

Builds on :mod:`broker.ranking`; adds hours, the launch-file path, and the JSON document
that ``broker quote --json`` prints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from broker.diagnostics import Diagnostic, InvalidRequest
from broker.launchfile import ComputeMode, LaunchFileResult
from broker.ranking import Plan, Ranking, RankRequest, rank
from shapes.catalog import Catalog


class QuoteRequest(BaseModel):
    """What ``broker quote`` was asked: a ranking request plus how long it would run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rank: RankRequest
    hours: float = 1.0
    launch_file: str | None = None
    experiment_name: str | None = None
    warnings: tuple[Diagnostic, ...] = Field(default=(), description="found while reading input")


def request_from_launch_file(
    result: LaunchFileResult,
    *,
    rank_overrides: Mapping[str, object],
    hours: float,
) -> QuoteRequest:
    """Turn a parsed launch file into a quote request; refuse invalid or non-burst files."""
    exp = result.experiment_or_raise()
    if exp.compute_mode is not ComputeMode.BURST:
        raise InvalidRequest(
            [
                Diagnostic(
                    field="compute_mode",
                    message=(
                        f"is {exp.compute_mode.value!r}: only burst experiments run on commercial "
                        'clouds, so only they can be quoted (set compute_mode = "burst")'
                    ),
                )
            ],
            list(result.warnings),
        )
    fields: dict[str, object] = {
        "gpus": exp.gpus,
        "priority": exp.burst_shape_priority_list,
        "priority_field": "burst_shape_priority_list",
    }
    warnings = list(result.warnings)
    if rank_overrides.get("priority") is not None:
        if exp.burst_shape_priority_list is not None:
            warnings.append(
                Diagnostic(
                    field="burst_shape_priority_list",
                    message="overridden by --priority on the command line",
                )
            )
        fields["priority_field"] = "priority"
    fields.update({k: v for k, v in rank_overrides.items() if v is not None})
    return QuoteRequest(
        rank=RankRequest.model_validate(fields),
        hours=hours,
        launch_file=result.source,
        experiment_name=exp.experiment_name,
        warnings=tuple(warnings),
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
    explain: bool = False,
) -> Quote:
    """Rank and price; raises InvalidRequest for a request no catalog could serve."""
    if not request.hours > 0:
        raise InvalidRequest(
            [Diagnostic(field="hours", message=f"must be > 0, got {request.hours}")]
        )
    ranking = rank(request.rank, catalog, unavailable=unavailable, explain=explain)
    return Quote(request, ranking, catalog)

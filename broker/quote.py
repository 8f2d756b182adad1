"""Quotes: a ranked, priced plan for a request, without spending anything (a dry run).

Builds on :mod:`broker.ranking`; adds hours, the launch-file path, and the JSON document
that ``broker quote --json`` prints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date

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


def _money(value: float) -> float:
    return round(value, 4)


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

    def plan_json(self, rank_no: int, plan: Plan) -> dict[str, object]:
        s = plan.shape
        return {
            "rank": rank_no,
            "shape_id": s.id,
            "provider": s.provider,
            "region": s.region,
            "instance_type": s.instance_type,
            "gpu": s.gpu,
            "gpus_per_node": s.gpus_per_node,
            "nodes": plan.nodes,
            "procs_per_node": plan.procs_per_node,
            "gpus_billed": plan.gpus_billed,
            "provisioning": s.provisioning.value,
            "price_per_node_hour": _money(s.price_per_node_hour),
            "price_per_hour": _money(plan.price_per_hour),
            "estimated_cost": _money(plan.price_per_hour * self.request.hours),
            "zones": list(s.zones),
        }

    def to_json_dict(
        self, limit: int | None = None, today: date | None = None
    ) -> dict[str, object]:
        r = self.request.rank
        flt = r.filter
        plans = self.plans if limit is None else self.plans[:limit]
        return {
            "request": {
                "gpus": r.gpus,
                "hours": self.request.hours,
                "compute_mode": "burst",
                "burst_max_gpus": r.burst_max_gpus,
                "priority": list(r.priority) if r.priority is not None else None,
                "priority_used": self.ranking.priority_used,
                "filters": {
                    "gpu": list(flt.gpus),
                    "provider": list(flt.providers),
                    "region": list(flt.regions),
                    "provisioning": flt.provisioning.value if flt.provisioning else None,
                    "max_price_per_hour": r.max_price_per_hour,
                },
                "launch_file": self.request.launch_file,
                "experiment_name": self.request.experiment_name,
            },
            "plans": [self.plan_json(i, p) for i, p in enumerate(plans, start=1)],
            "plans_total": len(self.plans),
            "excluded": [
                {"shape_id": e.shape_id, "rule": e.rule.value, "reason": e.reason}
                for e in self.ranking.excluded
            ],
            "warnings": [w.model_dump() for w in self.warnings],
            "catalog": catalog_json(self.catalog, today),
        }


def catalog_json(catalog: Catalog, today: date | None = None) -> dict[str, object]:
    as_of = catalog.as_of
    retrieved = catalog.retrieved
    return {
        "as_of": as_of.isoformat() if as_of else None,
        "retrieved": retrieved.isoformat() if retrieved else None,
        "shapes": len(catalog),
        "sources": [
            {
                "provider": s.provider,
                "prices_as_of": s.prices_as_of.isoformat() if s.prices_as_of else None,
                "retrieved": s.retrieved.isoformat() if s.retrieved else None,
                "age_days": s.age_days(today),
                "bundled": s.bundled,
                "price_source": s.price_source,
                "shapes": s.shapes,
            }
            for s in catalog.sources
        ],
    }


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

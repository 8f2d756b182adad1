"""What a person or a scheduler asks for, as plain fields, turned into a QuoteRequest.

The CLI's flags and the HTTP API's JSON body are two spellings of the same inputs; both
edges build a :class:`RequestInputs` and call :func:`build_request`, so every check (and
every "did you mean") is made once, here. Nothing here imports pydantic unless a launch
file is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from broker.diagnostics import Diagnostic, InvalidRequest

if TYPE_CHECKING:
    from pathlib import Path

    from broker.quote import QuoteRequest
    from shapes.catalog import Catalog, ShapeFilter

SIMULATED = "sim"


@dataclass(frozen=True)
class RequestInputs:
    """One request's inputs. ``launch_text`` (TOML) or ``launch_path`` is a launch file;
    the other fields override it, as the CLI's flags do."""

    gpus: int | None = None
    launch_path: Path | None = None
    launch_text: str | None = None
    launch_source: str = "launch_file"  # how messages name an inline launch file
    priority: tuple[str, ...] = ()
    strict_priority: bool = False
    gpu: tuple[str, ...] = ()
    provider: tuple[str, ...] = ()
    region: tuple[str, ...] = ()
    provisioning: str | None = None  # "spot" | "on-demand" | None (both)
    max_price_per_hour: float | None = None
    hours: float = 1.0
    image: str | None = None  # the command's container image ("": on the host); None: default
    max_hours: float | None = None  # run-time limit of a run: then STOPPED "run-time limit"
    max_recoveries: int | None = None  # lost-node recoveries (None: 3 on spot, 0 on-demand)
    names: dict[str, str] = field(default_factory=dict)  # field -> how the edge spells it


def split_backend(providers: Sequence[str]) -> tuple[str | None, tuple[str, ...]]:
    """``provider`` may name the simulated cloud: it then serves every shape (the
    backend), and the other names stay filters."""
    backend = SIMULATED if SIMULATED in [p.lower() for p in providers] else None
    return backend, tuple(p for p in providers if p.lower() != SIMULATED)


def _close(word: str, choices: Sequence[str]) -> str:
    import difflib  # only when something was mistyped

    close = difflib.get_close_matches(word.lower(), [c.lower() for c in choices], n=1)
    if not close:
        return ""
    original = next(c for c in choices if c.lower() == close[0])
    return f"; did you mean {original}?"


def _max_hours(value: float, spelled: str) -> float:
    import math

    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRequest([Diagnostic(field="max_hours", message=f"{spelled} must be a number")])
    if not 0 < value <= 24 * 365:
        raise InvalidRequest(
            [Diagnostic(field="max_hours", message=f"{spelled} must be > 0 and at most 8760")]
        )
    return float(value)


def _max_recoveries(value: int, spelled: str) -> int:
    from broker.recovery import MAX_RECOVERIES

    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(
            [Diagnostic(field="max_recoveries", message=f"{spelled} must be a whole number")]
        )
    if not 0 <= value <= MAX_RECOVERIES:
        raise InvalidRequest(
            [
                Diagnostic(
                    field="max_recoveries",
                    message=f"{spelled} must be 0 to {MAX_RECOVERIES}, got {value}",
                )
            ]
        )
    return value


def shape_filter(inputs: RequestInputs, catalog: Catalog) -> ShapeFilter:
    """The filters the inputs name, every unknown value refused with a hint."""
    from shapes.catalog import ShapeFilter
    from shapes.gpus import gpu_filter_names
    from shapes.model import Provisioning

    name = inputs.names.get
    errors: list[Diagnostic] = []
    for gpu in inputs.gpu:
        try:
            gpu_filter_names(gpu)
        except ValueError as exc:
            hint = ""
            if gpu.strip().isdigit():
                hint = (
                    f" ({name('gpu', 'gpu')} takes a GPU model; for {gpu} GPUs use "
                    f"{name('gpus', 'gpus')} {gpu})"
                )
            errors.append(Diagnostic(field="gpu", message=f"{exc}{hint}"))
    known = catalog.providers
    for prov in inputs.provider:
        if prov.lower() not in known:
            errors.append(
                Diagnostic(
                    field="provider",
                    message=f"unknown provider {prov!r} (known: {', '.join(known)})"
                    + _close(prov, known),
                )
            )
    regions = list(catalog.regions) if inputs.region else []
    lowered = {r.lower() for r in regions}
    for region in inputs.region:
        if region.lower() not in lowered:
            errors.append(
                Diagnostic(
                    field="region",
                    message=f"no shape in the catalog is in region {region!r}"
                    + _close(region, regions),
                )
            )
    provisioning = None
    if inputs.provisioning is not None:
        try:
            provisioning = Provisioning(inputs.provisioning)
        except ValueError:
            errors.append(
                Diagnostic(
                    field="provisioning",
                    message=f"must be spot or on-demand, got {inputs.provisioning!r}",
                )
            )
    if errors:
        raise InvalidRequest(errors)
    return ShapeFilter(
        gpus=inputs.gpu,
        providers=inputs.provider,
        regions=inputs.region,
        provisioning=provisioning,
    )


def build_request(
    inputs: RequestInputs, *, burst_max_gpus: int, catalog: Catalog
) -> tuple[QuoteRequest, dict[str, Any] | None]:
    """The request the inputs describe, and the launch file's experiment (as JSON) when
    there is one. InvalidRequest names every problem."""
    from broker.quote import QuoteRequest
    from broker.ranking import RankRequest

    name = inputs.names.get
    if inputs.image:
        from providers.images import image_problem

        problem = image_problem(inputs.image)
        if problem is not None:
            raise InvalidRequest([Diagnostic(field="image", message=problem)])
    flt = shape_filter(inputs, catalog)
    overrides: dict[str, object] = {
        "filter": flt,
        "max_price_per_hour": inputs.max_price_per_hour,
        "burst_max_gpus": burst_max_gpus,
        "priority": inputs.priority or None,
        "strict_priority": inputs.strict_priority,
    }
    if inputs.launch_path is not None or inputs.launch_text is not None:
        if inputs.gpus is not None:
            raise InvalidRequest(
                [
                    Diagnostic(
                        field="gpus",
                        message=f"give either {name('launch_file', 'a launch file')} or "
                        f"{name('gpus', 'gpus')}, not both",
                    )
                ]
            )
        from broker.launchfile import (
            parse_launch_file,
            parse_launch_text,
            request_from_launch_file,
        )

        if inputs.launch_path is not None:
            result = parse_launch_file(inputs.launch_path, burst_max_gpus=burst_max_gpus)
        else:
            result = parse_launch_text(
                inputs.launch_text or "", source=inputs.launch_source, burst_max_gpus=burst_max_gpus
            )
        request = request_from_launch_file(result, rank_overrides=overrides, hours=inputs.hours)
        experiment = result.experiment_or_raise().model_dump(mode="json")
        if inputs.image is not None:
            experiment["image"] = inputs.image
        if inputs.max_hours is not None:
            experiment["max_hours"] = _max_hours(inputs.max_hours, name("max_hours", "max_hours"))
        if inputs.max_recoveries is not None:
            experiment["max_recoveries"] = _max_recoveries(
                inputs.max_recoveries, name("max_recoveries", "max_recoveries")
            )
        return request, experiment
    experiment_only: tuple[tuple[str, object, str], ...] = (  # fields of an experiment
        ("image", inputs.image, "is the container a launch file's command runs in"),
        ("max_hours", inputs.max_hours, "limits how long a launch file's command runs"),
        (
            "max_recoveries",
            inputs.max_recoveries,
            "says how often a launch file's experiment is recovered after losing a node",
        ),
    )
    for field_name, value, what in experiment_only:
        if value is not None:
            message = (
                f"{name(field_name, field_name)} {what}: give "
                f"{name('launch_file', 'a launch file')} too"
            )
            raise InvalidRequest([Diagnostic(field=field_name, message=message)])
    if inputs.gpus is None:
        raise InvalidRequest(
            [
                Diagnostic(
                    field="gpus",
                    message=f"give {name('gpus', 'gpus')} N or a burst launch file "
                    f"({name('launch_file', 'launch_file')})",
                )
            ]
        )
    fields = {k: v for k, v in {**overrides, "gpus": inputs.gpus}.items() if v is not None}
    return QuoteRequest(rank=RankRequest(**fields), hours=inputs.hours), None  # type: ignore[arg-type]


__all__ = [
    "SIMULATED",
    "RequestInputs",
    "build_request",
    "shape_filter",
    "split_backend",
]

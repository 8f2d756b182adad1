"""Read and validate ISC experiment launch files (``.isc`` files, which are TOML).

A launch file tells the ISC what to run: the project, a name, the number of GPUs, the
command each node executes, the compute mode and optional datasets, burst shapes and input
artifacts. This module turns one into a typed :class:`Experiment`, or into
:class:`~broker.diagnostics.Diagnostic` errors that each name the offending TOML key (and
the line, for TOML syntax errors); it never lets a traceback reach the user. Every error is
reported, not just the first. Unknown keys, and keys given for a compute mode that does not
use them, are warnings: those keys are ignored and left out of the ``Experiment``.

Format reference: https://docs.strongcompute.com/basic-concepts/launching-experiments
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from broker.diagnostics import Diagnostic, InvalidRequest
from broker.quote import QuoteRequest
from broker.ranking import RankRequest
from broker.settings import DEFAULT_BURST_MAX_GPUS, MAX_GPUS, MIN_GPUS

MIN_RAPID_CYCLES = 1
MAX_RAPID_CYCLES = 5
MAX_INPUT_ARTIFACTS = 3


class ComputeMode(StrEnum):
    CYCLE = "cycle"
    INTERRUPTIBLE = "interruptible"
    BURST = "burst"


class Experiment(BaseModel):
    """A validated launch file. ``burst_shape_priority_list`` is None when absent."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    isc_project_id: str
    experiment_name: str
    gpus: int = Field(ge=MIN_GPUS, le=MAX_GPUS)
    command: str
    compute_mode: ComputeMode = ComputeMode.CYCLE
    max_rapid_cycles: int | None = Field(default=None, ge=MIN_RAPID_CYCLES, le=MAX_RAPID_CYCLES)
    dataset_id_list: tuple[str, ...] = ()
    burst_shape_priority_list: tuple[str, ...] | None = None
    input_artifact_id_list: tuple[str, ...] = Field(default=(), max_length=MAX_INPUT_ARTIFACTS)


KNOWN_KEYS: tuple[str, ...] = tuple(Experiment.model_fields)


class LaunchFileResult(BaseModel):
    """The outcome of reading one launch file: an experiment, or the errors that prevent one."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str
    experiment: Experiment | None
    errors: tuple[Diagnostic, ...]
    warnings: tuple[Diagnostic, ...]

    @property
    def valid(self) -> bool:
        return not self.errors and self.experiment is not None

    def experiment_or_raise(self) -> Experiment:
        """The experiment, or :class:`InvalidRequest` carrying the errors and warnings."""
        if self.experiment is None or self.errors:
            raise InvalidRequest(list(self.errors), list(self.warnings))
        return self.experiment

    def to_json_dict(self) -> dict[str, object]:
        """Plain JSON types only, for the CLI's ``--json`` output."""
        experiment = self.experiment
        return {
            "valid": self.valid,
            "errors": [d.to_json_dict() for d in self.errors],
            "warnings": [d.to_json_dict() for d in self.warnings],
            "experiment": None if experiment is None else experiment.model_dump(mode="json"),
        }


def _describe(value: object) -> str:
    """Name a TOML value's type for a message, e.g. 'a string ("16")'."""
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a float ({value})"
    if isinstance(value, str):
        shown = json.dumps(value if len(value) <= 40 else value[:37] + "...", ensure_ascii=False)
        return f"a string ({shown})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return f"a date/time ({value})"  # the only other kinds of value TOML has


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word.lower(), choices, n=1, cutoff=0.6)
    return f'; did you mean "{close[0]}"?' if close else ""


class _Checker:
    """Collects every error and warning about one parsed launch file."""

    def __init__(self, data: dict[str, object]) -> None:
        self.data = data
        self.errors: list[Diagnostic] = []
        self.warnings: list[Diagnostic] = []

    def error(self, field: str, message: str) -> None:
        self.errors.append(Diagnostic(field=field, message=message))

    def required_string(self, key: str) -> str | None:
        if key not in self.data:
            self.error(key, "is required (a non-empty string)")
            return None
        value = self.data[key]
        if not isinstance(value, str):
            self.error(key, f"must be a string, got {_describe(value)}")
            return None
        if not value.strip():
            self.error(key, "must not be empty")
            return None
        return value

    def integer(self, key: str, low: int, high: int) -> int | None:
        value = self.data[key]
        if isinstance(value, bool) or not isinstance(value, int):  # bool is an int subclass
            self.error(key, f"must be an integer, got {_describe(value)}")
            return None
        if not low <= value <= high:
            self.error(key, f"must be an integer between {low} and {high}, got {value}")
            return None
        return value

    def string_list(self, key: str) -> tuple[str, ...] | None:
        value = self.data[key]
        if not isinstance(value, list):
            self.error(key, f"must be a list of strings, got {_describe(value)}")
            return None
        ok = True
        for index, item in enumerate(value):
            if not isinstance(item, str):
                self.error(f"{key}[{index}]", f"must be a string, got {_describe(item)}")
                ok = False
        return tuple(value) if ok else None

    def compute_mode(self) -> ComputeMode | None:
        value = self.data.get("compute_mode", ComputeMode.CYCLE.value)
        allowed = ", ".join(f'"{m.value}"' for m in ComputeMode)
        if not isinstance(value, str):
            self.error("compute_mode", f"must be one of {allowed}, got {_describe(value)}")
            return None
        if value not in {m.value for m in ComputeMode}:
            hint = _suggest(value, [m.value for m in ComputeMode])
            self.error("compute_mode", f"must be one of {allowed}, got {json.dumps(value)}{hint}")
            return None
        return ComputeMode(value)

    def unknown_keys(self) -> None:
        for key, value in self.data.items():
            if key in KNOWN_KEYS:
                continue
            if isinstance(value, dict):
                message = "unknown table, ignored; launch-file keys go at the top level"
            else:
                message = "unknown key, ignored" + _suggest(key, KNOWN_KEYS)
            self.warnings.append(Diagnostic(field=key, message=message))

    def mode_only(self, key: str, wanted: ComputeMode, mode: ComputeMode | None) -> bool:
        """Warn if ``key`` is given for another mode; True if it should be kept."""
        if key not in self.data or mode is None or mode is wanted:
            return True
        message = f'is only used when compute_mode is "{wanted}"; ignored for "{mode}"'
        self.warnings.append(Diagnostic(field=key, message=message))
        return False

    def check(self, burst_max_gpus: int) -> Experiment | None:
        d = self.data
        fields: dict[str, object] = {
            key: self.required_string(key) for key in ("isc_project_id", "experiment_name")
        }
        if "gpus" in d:
            fields["gpus"] = gpus = self.integer("gpus", MIN_GPUS, MAX_GPUS)
        else:
            gpus = None
            self.error("gpus", f"is required (an integer between {MIN_GPUS} and {MAX_GPUS})")
        fields["command"] = self.required_string("command")
        fields["compute_mode"] = mode = self.compute_mode()
        if mode is ComputeMode.BURST and gpus is not None and gpus > burst_max_gpus:
            message = f"burst experiments are limited to {burst_max_gpus} GPUs (got {gpus})"
            self.error("gpus", message)
        if "max_rapid_cycles" in d:
            fields["max_rapid_cycles"] = self.integer(
                "max_rapid_cycles", MIN_RAPID_CYCLES, MAX_RAPID_CYCLES
            )
        for key in ("dataset_id_list", "burst_shape_priority_list", "input_artifact_id_list"):
            if key in d:
                fields[key] = self.string_list(key)
        for key in ("dataset_id_list", "input_artifact_id_list"):
            ids = fields.get(key)
            for item in ids if isinstance(ids, tuple) else ():
                if not _ID.fullmatch(item):  # each becomes a path: /data/<dataset-id>
                    self.error(
                        key,
                        f"{item[:80]!r} is not an ID: letters, digits, '.', '_' or '-', "
                        "starting with a letter or digit, at most 128 characters",
                    )
        artifacts = fields.get("input_artifact_id_list")
        if isinstance(artifacts, tuple) and len(artifacts) > MAX_INPUT_ARTIFACTS:
            message = f"must list at most {MAX_INPUT_ARTIFACTS} artifact IDs, got {len(artifacts)}"
            self.error("input_artifact_id_list", message)
        self.unknown_keys()
        if not self.mode_only("max_rapid_cycles", ComputeMode.CYCLE, mode):
            fields.pop("max_rapid_cycles", None)
        if not self.mode_only("burst_shape_priority_list", ComputeMode.BURST, mode):
            fields.pop("burst_shape_priority_list", None)
        # Every check above that failed recorded an error, so the fields are sound here.
        return None if self.errors else Experiment.model_validate(fields)


_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_POSITION = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)\s*$")


def _syntax_error(exc: tomllib.TOMLDecodeError, text: str) -> Diagnostic:
    """tomllib puts the position at the end of its message; move the line into ``line``."""
    raw = str(exc)
    match = _POSITION.search(raw)
    detail = (raw[: match.start()] if match else raw).strip() or "syntax error"
    detail = detail[0].lower() + detail[1:]
    if match is None:
        return Diagnostic(field=None, message=f"invalid TOML: {detail}")
    if match.group(1) is None:
        line = max(1, len(text.splitlines()))
        return Diagnostic(field=None, message=f"invalid TOML: {detail} at end of file", line=line)
    message = f"invalid TOML: {detail} (column {match.group(2)})"
    return Diagnostic(field=None, message=message, line=int(match.group(1)))


def _failed(source: str, error: Diagnostic) -> LaunchFileResult:
    return LaunchFileResult(source=source, experiment=None, errors=(error,), warnings=())


def parse_launch_text(
    text: str, *, source: str = "<string>", burst_max_gpus: int = DEFAULT_BURST_MAX_GPUS
) -> LaunchFileResult:
    """Validate launch-file ``text``; ``burst_max_gpus`` comes from the broker's settings."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return _failed(source, _syntax_error(exc, text))
    except RecursionError:
        return _failed(source, Diagnostic(field=None, message="invalid TOML: nested too deeply"))
    checker = _Checker(data)
    experiment = checker.check(burst_max_gpus)
    return LaunchFileResult(
        source=source,
        experiment=experiment,
        errors=tuple(checker.errors),
        warnings=tuple(checker.warnings),
    )


def parse_launch_file(
    path: str | os.PathLike[str], *, burst_max_gpus: int = DEFAULT_BURST_MAX_GPUS
) -> LaunchFileResult:
    """Read and validate the launch file at ``path``; unreadable files are an error too."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        reason = {
            FileNotFoundError: "no such file",
            IsADirectoryError: "it is a directory",
            PermissionError: "permission denied",
        }.get(type(exc), exc.strerror or str(exc))
        return _failed(source, Diagnostic(field=None, message=f"cannot read {source}: {reason}"))
    try:
        text = raw.decode("utf-8-sig")  # tolerate the BOM some Windows editors add
    except UnicodeDecodeError as exc:
        message = f"cannot read {source}: not UTF-8 text (bad byte at offset {exc.start})"
        return _failed(source, Diagnostic(field=None, message=message))
    return parse_launch_text(text, source=source, burst_max_gpus=burst_max_gpus)


def request_from_launch_file(
    result: LaunchFileResult,
    *,
    rank_overrides: Mapping[str, object],
    hours: float,
) -> QuoteRequest:
    """Turn a parsed launch file into a quote request; refuse invalid or non-burst files.

    Lives here, not in :mod:`broker.quote`, so that a quote without a launch file never
    imports this module (nor pydantic)."""
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
        rank=RankRequest(**fields),  # type: ignore[arg-type]
        hours=hours,
        launch_file=result.source,
        experiment_name=exp.experiment_name,
        warnings=tuple(warnings),
    )

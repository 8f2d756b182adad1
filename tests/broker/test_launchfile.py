"""Tests for broker.launchfile: every launch-file rule has a valid and an invalid case."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.diagnostics import Diagnostic, InvalidRequest
from broker.launchfile import (
    ComputeMode,
    Experiment,
    LaunchFileResult,
    parse_launch_file,
    parse_launch_text,
    request_from_launch_file,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

BASE = {
    "isc_project_id": '"proj-123"',
    "experiment_name": '"mnist"',
    "gpus": "16",
    "command": "'''torchrun train.py'''",
}
DROP = object()  # pass as an override to leave that key out


def launch(**overrides: object) -> str:
    """A launch file built from BASE; values are raw TOML text (so '"16"' is a string)."""
    fields: dict[str, object] = {**BASE, **overrides}
    return "".join(f"{k} = {v}\n" for k, v in fields.items() if v is not DROP)


def parse(**overrides: object) -> LaunchFileResult:
    return parse_launch_text(launch(**overrides))


def only_error(result: LaunchFileResult) -> Diagnostic:
    assert not result.valid and result.experiment is None
    assert len(result.errors) == 1, result.errors
    return result.errors[0]


def assert_error(result: LaunchFileResult, field: str | None, fragment: str) -> None:
    error = only_error(result)
    assert error.field == field
    assert fragment in error.message, error.message


def assert_warning(result: LaunchFileResult, field: str, fragment: str) -> None:
    assert [w.field for w in result.warnings] == [field]
    assert fragment in result.warnings[0].message, result.warnings[0].message


def test_minimal_file_is_valid_with_defaults() -> None:
    result = parse()
    assert result.valid and result.errors == () and result.warnings == ()
    assert result.source == "<string>"
    assert result.experiment == Experiment(
        isc_project_id="proj-123", experiment_name="mnist", gpus=16, command="torchrun train.py"
    )
    exp = result.experiment
    assert exp.compute_mode is ComputeMode.CYCLE
    assert exp.max_rapid_cycles is None
    assert exp.dataset_id_list == () and exp.input_artifact_id_list == ()
    assert exp.burst_shape_priority_list is None


@pytest.mark.parametrize("key", ["isc_project_id", "experiment_name", "gpus", "command"])
def test_each_required_field_missing(key: str) -> None:
    assert_error(parse(**{key: DROP}), key, "is required")


@pytest.mark.parametrize("key", ["isc_project_id", "experiment_name", "command"])
@pytest.mark.parametrize("value", ['""', '"   "', "'''\n  \n'''"])
def test_required_strings_must_not_be_empty(key: str, value: str) -> None:
    assert_error(parse(**{key: value}), key, "must not be empty")


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("gpus", '"16"', 'must be an integer, got a string ("16")'),
        ("gpus", "16.0", "must be an integer, got a float (16.0)"),
        ("gpus", "true", "must be an integer, got a boolean (true)"),
        ("gpus", "[16]", "must be an integer, got a list"),
        ("gpus", "1979-05-27", "must be an integer, got a date/time"),
        ("isc_project_id", "123", "must be a string, got an integer (123)"),
        ("experiment_name", "{ a = 1 }", "must be a string, got a table"),
        ("command", "false", "must be a string, got a boolean (false)"),
        ("max_rapid_cycles", '"3"', 'must be an integer, got a string ("3")'),
        ("max_rapid_cycles", "true", "must be an integer, got a boolean (true)"),
        ("max_rapid_cycles", "2.5", "must be an integer, got a float (2.5)"),
        ("compute_mode", "1", "got an integer (1)"),
        ("dataset_id_list", '"ds-1"', 'must be a list of strings, got a string ("ds-1")'),
        ("input_artifact_id_list", '"art-1"', "must be a list of strings, got a string"),
    ],
)
def test_wrong_types_are_errors_not_coercions(key: str, value: str, fragment: str) -> None:
    assert_error(parse(**{key: value}), key, fragment)


def test_wrong_type_in_burst_shape_list() -> None:
    result = parse(compute_mode='"burst"', burst_shape_priority_list='"aws:us-east-1:x:spot"')
    assert_error(result, "burst_shape_priority_list", "must be a list of strings")


def test_long_string_values_are_shortened_in_messages() -> None:
    message = only_error(parse(gpus=json.dumps("9" * 500))).message
    assert len(message) < 120 and "..." in message


@pytest.mark.parametrize(
    ("gpus", "ok"), [(-1, False), (0, False), (1, True), (72, True), (73, False)]
)
def test_gpus_range(gpus: int, ok: bool) -> None:
    result = parse(gpus=str(gpus))
    if ok:
        assert result.valid and result.experiment is not None
        assert result.experiment.gpus == gpus
    else:
        assert_error(result, "gpus", f"must be an integer between 1 and 72, got {gpus}")


@pytest.mark.parametrize(
    ("gpus", "cap", "ok"), [(48, 48, True), (49, 48, False), (16, 16, True), (17, 16, False)]
)
def test_burst_gpu_cap(gpus: int, cap: int, ok: bool) -> None:
    text = launch(gpus=str(gpus), compute_mode='"burst"')
    result = parse_launch_text(text, burst_max_gpus=cap)
    if ok:
        assert result.valid
    else:
        assert_error(result, "gpus", f"burst experiments are limited to {cap} GPUs (got {gpus})")


@pytest.mark.parametrize("mode", ['"cycle"', '"interruptible"'])
def test_burst_cap_does_not_apply_to_other_modes(mode: str) -> None:
    assert parse_launch_text(launch(gpus="72", compute_mode=mode), burst_max_gpus=16).valid


def test_burst_over_the_format_limit_reports_the_range_once() -> None:
    assert_error(parse(gpus="73", compute_mode='"burst"'), "gpus", "between 1 and 72, got 73")


@pytest.mark.parametrize(
    ("raw", "mode"),
    [
        (DROP, ComputeMode.CYCLE),
        ('"cycle"', ComputeMode.CYCLE),
        ('"interruptible"', ComputeMode.INTERRUPTIBLE),
        ('"burst"', ComputeMode.BURST),
    ],
)
def test_compute_mode_values(raw: object, mode: ComputeMode) -> None:
    result = parse(compute_mode=raw)
    assert result.valid and result.experiment is not None
    assert result.experiment.compute_mode is mode


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ('"fast"', 'must be one of "cycle", "interruptible", "burst", got "fast"'),
        ('"Burst"', 'got "Burst"; did you mean "burst"?'),
        ('""', 'must be one of "cycle", "interruptible", "burst", got ""'),
    ],
)
def test_unknown_compute_mode_lists_allowed_values(raw: str, fragment: str) -> None:
    assert_error(parse(compute_mode=raw), "compute_mode", fragment)


@pytest.mark.parametrize(("cycles", "ok"), [(0, False), (1, True), (5, True), (6, False)])
def test_max_rapid_cycles_range(cycles: int, ok: bool) -> None:
    result = parse(compute_mode='"cycle"', max_rapid_cycles=str(cycles))
    if ok:
        assert result.valid and result.warnings == () and result.experiment is not None
        assert result.experiment.max_rapid_cycles == cycles
    else:
        assert_error(result, "max_rapid_cycles", f"between 1 and 5, got {cycles}")


def test_max_rapid_cycles_with_default_mode_is_used() -> None:
    result = parse(max_rapid_cycles="2")
    assert result.valid and result.warnings == () and result.experiment is not None
    assert result.experiment.max_rapid_cycles == 2


@pytest.mark.parametrize("mode", ["burst", "interruptible"])
def test_max_rapid_cycles_outside_cycle_mode_warns_and_is_ignored(mode: str) -> None:
    result = parse(compute_mode=f'"{mode}"', max_rapid_cycles="3")
    assert result.valid and result.experiment is not None
    assert_warning(
        result, "max_rapid_cycles", f'only used when compute_mode is "cycle"; ignored for "{mode}"'
    )
    assert result.experiment.max_rapid_cycles is None


def test_ignored_field_with_bad_value_is_still_an_error() -> None:
    result = parse(compute_mode='"burst"', max_rapid_cycles="9")
    assert_error(result, "max_rapid_cycles", "between 1 and 5, got 9")
    assert_warning(result, "max_rapid_cycles", "only used when")


@pytest.mark.parametrize(("raw", "expected"), [('["ds-1", "ds-2"]', ("ds-1", "ds-2")), ("[]", ())])
def test_dataset_id_list_valid(raw: str, expected: tuple[str, ...]) -> None:
    result = parse(dataset_id_list=raw)
    assert result.valid and result.experiment is not None
    assert result.experiment.dataset_id_list == expected


def test_dataset_id_list_non_string_element_names_the_index() -> None:
    assert_error(parse(dataset_id_list='["ds-1", 2]'), "dataset_id_list[1]", "got an integer (2)")


def test_every_bad_list_element_is_reported() -> None:
    result = parse(dataset_id_list='[1, "ok", true, ["x"]]')
    assert [e.field for e in result.errors] == [
        "dataset_id_list[0]",
        "dataset_id_list[2]",
        "dataset_id_list[3]",
    ]
    assert "got a list" in result.errors[2].message


def test_burst_shape_priority_list_with_burst() -> None:
    shapes = '["aws:us-east-1:p5.48xlarge:spot", "gcp:us-central1:a3-highgpu-8g:on-demand"]'
    result = parse(compute_mode='"burst"', burst_shape_priority_list=shapes)
    assert result.valid and result.warnings == () and result.experiment is not None
    assert result.experiment.burst_shape_priority_list == (
        "aws:us-east-1:p5.48xlarge:spot",
        "gcp:us-central1:a3-highgpu-8g:on-demand",
    )


def test_burst_shape_priority_list_empty_is_kept_distinct_from_absent() -> None:
    given_empty = parse(compute_mode='"burst"', burst_shape_priority_list="[]").experiment
    absent = parse(compute_mode='"burst"').experiment
    assert given_empty is not None and absent is not None
    assert given_empty.burst_shape_priority_list == ()
    assert absent.burst_shape_priority_list is None


@pytest.mark.parametrize("mode", [DROP, '"cycle"', '"interruptible"'])
def test_burst_shape_priority_list_outside_burst_warns_and_is_ignored(mode: object) -> None:
    result = parse(
        compute_mode=mode, burst_shape_priority_list='["aws:us-east-1:p5.48xlarge:spot"]'
    )
    assert result.valid and result.experiment is not None
    assert_warning(result, "burst_shape_priority_list", 'only used when compute_mode is "burst"')
    assert result.experiment.burst_shape_priority_list is None


def test_burst_shape_priority_list_bad_element() -> None:
    result = parse(compute_mode='"burst"', burst_shape_priority_list='["a", 3]')
    assert_error(result, "burst_shape_priority_list[1]", "must be a string, got an integer (3)")


@pytest.mark.parametrize("count", [0, 1, 3])
def test_input_artifact_id_list_up_to_three(count: int) -> None:
    ids = tuple(f"art-{i}" for i in range(count))
    result = parse(input_artifact_id_list=json.dumps(list(ids)))
    assert result.valid and result.experiment is not None
    assert result.experiment.input_artifact_id_list == ids


def test_input_artifact_id_list_four_is_an_error() -> None:
    result = parse(input_artifact_id_list='["a", "b", "c", "d"]')
    assert_error(result, "input_artifact_id_list", "at most 3 artifact IDs, got 4")


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        ("gpu", 'unknown key, ignored; did you mean "gpus"?'),
        ("GPUS", 'did you mean "gpus"?'),
        ("dataset_ids", 'did you mean "dataset_id_list"?'),
        ("experiment_nam", 'did you mean "experiment_name"?'),
    ],
)
def test_unknown_key_warns_with_suggestion(key: str, fragment: str) -> None:
    result = parse(**{key: "8"})
    assert result.valid
    assert_warning(result, key, fragment)


def test_unknown_key_without_close_match_has_no_suggestion() -> None:
    result = parse(colour='"blue"')
    assert_warning(result, "colour", "unknown key, ignored")
    assert "did you mean" not in result.warnings[0].message


def test_unknown_table_warns() -> None:
    result = parse_launch_text(launch() + "[experiment]\nname = 'x'\n")
    assert result.valid
    assert_warning(result, "experiment", "unknown table")


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('gpus = 8\nexperiment_name = "x\n', 2),
        ("gpus = 8\ngpus = 9\n", 2),
        ("a = 1\n\n\nb = = 2\n", 4),
        ("gpus = [1,\n", 1),  # tomllib says "at end of document"
    ],
)
def test_toml_syntax_error_has_line_number(text: str, line: int) -> None:
    result = parse_launch_text(text, source="x.isc")
    error = only_error(result)
    assert error.field is None and error.line == line
    assert error.message.startswith("invalid TOML: ")
    assert "(at " not in error.message and "line" not in error.message
    assert result.source == "x.isc"


def test_multiple_errors_are_all_reported() -> None:
    text = launch(
        isc_project_id=DROP,
        experiment_name='""',
        gpus='"16"',
        compute_mode='"fast"',
        max_rapid_cycles="0",
        dataset_id_list='["ok", 1]',
        input_artifact_id_list='["a", "b", "c", "d"]',
        gpu="8",
    )
    result = parse_launch_text(text)
    assert result.experiment is None and not result.valid
    assert [e.field for e in result.errors] == [
        "isc_project_id",
        "experiment_name",
        "gpus",
        "compute_mode",
        "max_rapid_cycles",
        "dataset_id_list[1]",
        "input_artifact_id_list",
    ]
    assert [w.field for w in result.warnings] == ["gpu"]


def test_unreadable_files(tmp_path: Path) -> None:
    missing = parse_launch_file(tmp_path / "nope.isc")
    assert_error(missing, None, "no such file")
    assert missing.source == str(tmp_path / "nope.isc")
    assert_error(parse_launch_file(tmp_path), None, "is a directory")
    latin1 = tmp_path / "latin1.isc"
    latin1.write_bytes(launch(experiment_name='"caf\u00e9"').encode("latin-1"))
    assert_error(parse_launch_file(latin1), None, "not UTF-8")


def test_file_with_bom_and_pathlike_and_cap(tmp_path: Path) -> None:
    path = tmp_path / "run.isc"
    path.write_text("\ufeff" + launch(compute_mode='"burst"', gpus="20"), encoding="utf-8")
    assert parse_launch_file(path).valid
    assert_error(parse_launch_file(str(path), burst_max_gpus=16), "gpus", "limited to 16 GPUs")


def test_example_files_are_valid() -> None:
    burst = parse_launch_file(EXAMPLES / "burst16.isc")
    cycle = parse_launch_file(EXAMPLES / "cycle.isc")
    for result in (burst, cycle):
        assert result.valid and result.errors == () and result.warnings == (), result
    assert burst.experiment is not None and cycle.experiment is not None
    assert burst.experiment.compute_mode is ComputeMode.BURST and burst.experiment.gpus == 16
    shapes = burst.experiment.burst_shape_priority_list or ()
    assert "aws:us-east-1:p5.48xlarge:spot" in shapes
    assert "gcp:us-central1:a3-highgpu-8g:on-demand" in shapes
    assert cycle.experiment.compute_mode is ComputeMode.CYCLE


def test_to_json_dict_valid() -> None:
    shapes = '["aws:us-east-1:p5.48xlarge:spot"]'
    result = parse(compute_mode='"burst"', burst_shape_priority_list=shapes, gpu="8")
    out = result.to_json_dict()
    assert set(out) == {"valid", "errors", "warnings", "experiment"}
    assert out["valid"] is True and out["errors"] == []
    assert out["warnings"] == [
        {"field": "gpu", "message": 'unknown key, ignored; did you mean "gpus"?', "line": None}
    ]
    assert out["experiment"] == {
        "isc_project_id": "proj-123",
        "experiment_name": "mnist",
        "gpus": 16,
        "command": "torchrun train.py",
        "compute_mode": "burst",
        "max_rapid_cycles": None,
        "dataset_id_list": [],
        "burst_shape_priority_list": ["aws:us-east-1:p5.48xlarge:spot"],
        "input_artifact_id_list": [],
    }
    assert json.loads(json.dumps(out)) == out


def test_to_json_dict_invalid() -> None:
    out = parse_launch_text("gpus = [\n").to_json_dict()
    assert out["valid"] is False and out["experiment"] is None and out["warnings"] == []
    assert out["errors"] == [{"field": None, "message": out["errors"][0]["message"], "line": 1}]  # type: ignore[index]
    json.dumps(out)


def test_experiment_or_raise() -> None:
    assert parse().experiment_or_raise().gpus == 16
    with pytest.raises(InvalidRequest) as info:
        parse(gpus="0", gpu="8").experiment_or_raise()
    assert [e.field for e in info.value.errors] == ["gpus"]
    assert [w.field for w in info.value.warnings] == ["gpu"]
    assert "gpus: must be an integer between 1 and 72, got 0" in str(info.value)


def test_burst_file_becomes_a_quote_request_with_cli_overrides() -> None:
    result = parse(compute_mode='"burst"', burst_shape_priority_list='["aws:x:y:spot"]')
    req = request_from_launch_file(
        result, rank_overrides={"priority": ("gcp:a:b:spot",), "max_price_per_hour": 9.5}, hours=2.0
    )
    assert req.rank.gpus == 16 and req.rank.priority == ("gcp:a:b:spot",)
    assert req.rank.priority_field == "priority" and req.rank.max_price_per_hour == 9.5
    assert req.hours == 2.0 and req.launch_file == result.source
    assert [w.field for w in req.warnings] == ["burst_shape_priority_list"]  # overridden


def test_only_burst_files_can_be_quoted() -> None:
    with pytest.raises(InvalidRequest) as info:
        request_from_launch_file(parse(), rank_overrides={}, hours=1.0)
    assert [e.field for e in info.value.errors] == ["compute_mode"]


@given(st.text(max_size=300))
def test_any_text_gives_a_result_never_an_exception(text: str) -> None:
    result = parse_launch_text(text)
    assert result.valid == (result.experiment is not None)
    json.dumps(result.to_json_dict())


_SCALARS = st.one_of(
    st.integers(-5, 100), st.booleans(), st.text("ab1 ", max_size=5), st.floats(0, 100)
)


@given(
    st.dictionaries(
        st.sampled_from([*BASE, "compute_mode", "max_rapid_cycles", "dataset_id_list", "gpu"]),
        st.one_of(_SCALARS, st.lists(_SCALARS, max_size=4)),
    )
)
def test_any_values_give_field_diagnostics_never_an_exception(values: dict[str, object]) -> None:
    text = "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())
    result = parse_launch_text(text)
    assert result.valid == (result.experiment is not None) == (not result.errors)
    assert all(isinstance(d.field, str) for d in (*result.errors, *result.warnings))

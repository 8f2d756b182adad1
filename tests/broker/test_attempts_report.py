"""Issue 14 section 3: every failed attempt explained. ``broker provision`` (and ``describe``)
end with a table of attempts (shape, zone, code, reach, what the broker did next) and the
plans and zones skipped without a call, by cause and count; ``--json`` carries the same."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker.cli import main
from broker.cli.render import attempts_report
from broker.ranking import order_zones
from broker.views import NEXT_STEP, next_step, skip_summary, skips_in
from providers.errors import Reach
from shapes.catalog import load_bundled_catalog
from tests.conftest import bundled_shape_id

CATALOG = load_bundled_catalog()
A = bundled_shape_id("aws", "us-east-1")  # every zone out of capacity
B = bundled_shape_id("aws", "us-west-2")  # a regional quota
ZONES_A = list(order_zones(CATALOG.get(A)))  # type: ignore[arg-type]


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BROKER_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("BROKER_SIM_SCENARIO", raising=False)
    scenario = tmp_path / "s.toml"
    scenario.write_text(f'[shapes."{A}"]\ncapacity_nodes = 0\n[shapes."{B}"]\nerrors = ["quota"]\n')
    return scenario


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def provision(scenario: Path, *extra: str) -> list[str]:
    return ["provision", "--provider", "sim", "--sim-scenario", str(scenario), "--gpus", "8",
            "--priority", f"{A},{B}", "--strict-priority", *extra]  # fmt: skip


def rows(out: str) -> list[list[str]]:
    """The table's data rows, split on runs of two or more spaces."""
    import re

    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("#  "))
    body = []
    for line in lines[start + 1 :]:
        if not re.match(r"^\d+\.\d+\s", line):
            break
        body.append(re.split(r"\s{2,}", line.strip()))
    return body


def test_a_failed_provision_ends_with_the_table_of_attempts(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, *provision(state))

    assert code == 3
    header = next(line for line in out.splitlines() if line.startswith("#  "))
    assert header.split() == [
        "#", "SHAPE", "ZONE", "NODES", "OUTCOME", "CODE", "REACH", "NEXT", "TOOK"
    ]  # fmt: skip
    table = rows(out)
    # one row per zone of A (each a stockout: next zone), then B's regional quota
    assert [r[1] for r in table] == [A] * len(ZONES_A) + [B]
    assert [r[2] for r in table][: len(ZONES_A)] == ZONES_A
    assert [(r[5], r[6], r[7]) for r in table] == [
        ("InsufficientCapacity", "zone", "next zone")
    ] * len(ZONES_A) + [("QuotaExceeded", "region", "next region")]
    # what the cloud said, once per code, with how often
    assert f"  InsufficientCapacity (x{len(ZONES_A)}, last 1.{len(ZONES_A)}): simulated" in out
    assert "  QuotaExceeded: simulated QuotaExceeded" in out
    assert "Skipped without a call" not in out  # nothing was skipped on the first run
    assert "FAILED (NoCapacity)" in err


def test_skipped_plans_are_summarised_by_cause_and_count(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, *provision(state))[0] == 3  # blocks A's zones and B's region

    code, out, err = run(capsys, *provision(state))

    assert code == 3
    skipped = 2  # A (every zone blocked) and B (its region blocked), left out by the ranking
    assert f"Skipped without a call: {skipped} blocked" in out
    assert "#  " not in out  # no attempt this time: no table, the summary says why
    assert f"skipped without a call: {skipped} blocked" in err  # the FAILED detail
    assert out.count("skip ") == 0  # the summary, not one line per skip, on stdout

    code, out, _ = run(capsys, *provision(state, "--json"))
    doc = json.loads(out)
    assert (doc["status"], doc["attempts"], doc["skipped"]) == ("FAILED", [], {"blocked": skipped})

    code, out, _ = run(capsys, "describe", doc["cluster_id"])
    assert code == 0 and f"Skipped without a call: {skipped} blocked" in out


def test_describe_and_json_carry_the_same_attempts(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, *provision(state, "--json"))
    doc = json.loads(out)
    assert [(a["error_code"], a["reach"], a["next"]) for a in doc["attempts"]][-1] == (
        "QuotaExceeded",
        "region",
        "next region",
    )
    assert doc["skipped"] == {}

    code, out, _ = run(capsys, "describe", doc["cluster_id"], "--json")
    described = json.loads(out)
    assert described["attempts"] == doc["attempts"]

    code, out, _ = run(capsys, "describe", doc["cluster_id"])
    assert code == 0
    assert [(r[5], r[6], r[7]) for r in rows(out)][-1] == ("QuotaExceeded", "region", "next region")


def test_a_provision_that_lands_shows_its_attempts_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BROKER_STATE_DIR", str(tmp_path / "state"))
    scenario = tmp_path / "s.toml"
    scenario.write_text(f'[shapes."{A}"]\nzones = {{ "{ZONES_A[0]}" = 0 }}\n')
    code, out, err = run(
        capsys, "provision", "--provider", "sim", "--sim-scenario", str(scenario), "--gpus",
        "8", "--priority", A, "--strict-priority",
    )  # fmt: skip
    assert code == 0, err
    table = rows(out)
    assert [(r[2], r[4], r[7]) for r in table] == [
        (ZONES_A[0], "failed", "next zone"),
        (ZONES_A[1], "running", "ran the gang"),
    ]


def test_skip_summary_round_trips_any_cause() -> None:
    counts = {"blocked": 4, "not configured": 2, "quota": 7}
    text = skip_summary(counts)
    assert text == "skipped without a call: 7 quota, 4 blocked, 2 not configured"
    assert skips_in(f"3 attempt(s) over 9 plan(s) failed; {text}") == counts
    assert skip_summary({}) == "" and skips_in("deadline reached") == {} and skips_in(None) == {}


def test_next_step_follows_the_reach_and_the_outcome() -> None:
    assert set(NEXT_STEP) == {r.value for r in Reach}  # every reach says what comes next
    assert next_step("failed", "region") == "next region"
    assert next_step("cleaned", "provider") == "skipped the cloud"
    assert next_step("failed", "request") == "failed the request"
    assert next_step("leaked", "zone").startswith("next zone (nodes may be left")
    assert next_step("running", None) == "ran the gang"


def test_the_report_of_nothing_says_so() -> None:
    assert attempts_report([], {}) == "No attempt was made and nothing was skipped."
    assert attempts_report([], {"quota": 3}) == "Skipped without a call: 3 quota"


def test_a_cloud_not_configured_is_a_skip_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BROKER_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # no configuration file
    code, out, _ = run(capsys, "provision", "--gpus", "8", "--priority", f"{A},{B}", "--json")
    assert code == 3
    doc = json.loads(out)
    assert (doc["attempts"], doc["skipped"]) == ([], {"not configured": 2})
    assert "skipped without a call: 2 not configured" in doc["detail"]

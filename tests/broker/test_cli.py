"""The broker CLI: quote, shapes and validate, human and --json output, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from broker.cli import main
from tests.conftest import SHAPE_JSON_FIELDS

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    code, out, _ = run(capsys, *argv, "--json")
    return code, json.loads(out)


PLAN_FIELDS = {
    "rank",
    "shape_id",
    "provider",
    "region",
    "instance_type",
    "gpu",
    "gpus_per_node",
    "nodes",
    "procs_per_node",
    "provisioning",
    "price_per_node_hour",
    "price_per_hour",
    "estimated_cost",
}


def test_quote_json_document(capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = run_json(capsys, "quote", "--gpus", "16", "--hours", "2.5")
    assert code == 0
    assert set(doc) >= {"request", "plans", "excluded", "warnings", "catalog"}
    assert doc["request"]["gpus"] == 16 and doc["request"]["hours"] == 2.5
    assert doc["catalog"]["shapes"] == len(doc["plans"]) >= 200
    assert {"as_of", "shapes"} <= set(doc["catalog"])
    for rank, plan in enumerate(doc["plans"], start=1):
        assert set(plan) >= PLAN_FIELDS
        assert plan["rank"] == rank
        assert plan["nodes"] * plan["procs_per_node"] == 16
        assert plan["price_per_hour"] == pytest.approx(
            plan["nodes"] * plan["price_per_node_hour"], abs=1e-3
        )
        assert plan["estimated_cost"] == pytest.approx(plan["price_per_hour"] * 2.5, abs=1e-3)
    prices = [p["price_per_hour"] for p in doc["plans"]]
    assert prices == sorted(prices)


def test_quote_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "quote", "--gpus", "8", "--gpu", "H100", "--limit", "3")
    assert code == 0
    lines = out.splitlines()
    assert "8 GPUs" in lines[0] and "dry run" in lines[0]
    assert lines[1].split()[:3] == ["#", "SHAPE", "GPU"]
    assert [line.split()[0] for line in lines[2:5]] == ["1", "2", "3"]
    assert all(" H100" in line for line in lines[2:5])  # H100 or H100-NVL
    assert "more plans" in lines[5]


def test_quote_priority_order_filters_and_warnings(capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = run_json(
        capsys,
        "quote",
        "--gpus",
        "16",
        "--spot",
        "--priority",
        "gcp:us-central1:a3-highgpu-8g:spot,aws:us-east-1:p5.48xlarge:on-demand",
        "--priority",
        "AWS:US-EAST-1:P5.48XLARGE:SPOT",
        "--priority",
        "aws:us-east-1:p5.48xlarge:bogus",
    )
    assert code == 0
    assert [p["shape_id"] for p in doc["plans"]] == [
        "gcp:us-central1:a3-highgpu-8g:spot",
        "aws:us-east-1:p5.48xlarge:spot",
    ]
    assert doc["excluded"] == [
        {
            "shape_id": "aws:us-east-1:p5.48xlarge:on-demand",
            "rule": "provisioning",
            "reason": "provisioning is on-demand, not spot",
        }
    ]
    assert [w["field"] for w in doc["warnings"]] == ["priority[3]"]
    assert doc["request"]["priority_used"] is True


def test_quote_explain_lists_every_exclusion(capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = run_json(capsys, "quote", "--gpus", "8", "--provider", "azure", "--explain")
    assert code == 0
    assert {p["provider"] for p in doc["plans"]} == {"azure"}
    assert len(doc["plans"]) + len(doc["excluded"]) == doc["catalog"]["shapes"]
    assert {e["rule"] for e in doc["excluded"]} == {"provider"}


def test_quote_no_shape_exit_3_with_reasons(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, "quote", "--gpus", "16", "--gpu", "H100", "--max-price-per-hour", "5"
    )
    assert code == 3
    assert "SHAPE" not in out  # no plan table
    assert "no shape can serve this request" in err
    assert "by --max-price-per-hour" in err and "by --gpu" in err
    assert "nearest:" in err
    code, doc = run_json(
        capsys, "quote", "--gpus", "16", "--gpu", "H100", "--max-price-per-hour", "5"
    )
    assert code == 3 and doc["plans"] == []
    assert {e["rule"] for e in doc["excluded"]} == {"gpu", "max_price"}


@pytest.mark.parametrize(
    ("argv", "field", "fragment"),
    [
        (["--gpus", "49"], "gpus", "limited to 48 GPUs"),
        (["--gpus", "0"], "gpus", "between 1 and 72"),
        (["--gpus", "73"], "gpus", "between 1 and 72"),
        ([], "gpus", "give --gpus N or a burst launch file"),
        (["--gpus", "8", "--gpu", "K80"], "gpu", "unknown GPU"),
        (["--gpus", "8", "--provider", "oracle"], "provider", "unknown provider"),
        (["--gpus", "8", "--max-price-per-hour", "-1"], None, "must be > 0"),
        (["--gpus", "8", "--hours", "0"], None, "must be > 0"),
        (["--gpus", "8", "--hours", "inf"], None, "must be a finite number"),
        (["--gpus", "8", "--region", "us-wset-2"], "region", "did you mean us-west-2?"),
        (["--gpus", "8", "--gpu", "16"], "gpu", "use --gpus 16"),
    ],
)
def test_quote_invalid_input_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], field: str | None, fragment: str
) -> None:
    code, out, err = run(capsys, "quote", *argv)
    assert code == 2
    assert out == ""
    assert fragment in err and "Traceback" not in err
    code, doc = run_json(capsys, "quote", *argv)
    assert code == 2
    assert doc["errors"][0]["field"] == field and fragment in doc["errors"][0]["message"]


def test_burst_cap_setting(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BROKER_BURST_MAX_GPUS", "16")
    assert run(capsys, "quote", "--gpus", "16")[0] == 0
    code, _, err = run(capsys, "quote", "--gpus", "17")
    assert code == 2 and "limited to 16 GPUs" in err
    monkeypatch.setenv("BROKER_BURST_MAX_GPUS", "lots")
    code, _, err = run(capsys, "quote", "--gpus", "8")
    assert code == 2 and "BROKER_BURST_MAX_GPUS must be an integer" in err


def test_usage_errors_exit_2_also_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "quote", "--gpus", "many")
    assert code == 2 and "must be an integer, got 'many'" in err
    assert err.startswith("usage: broker quote")  # the subcommand's usage, not the top level
    code, doc = run_json(capsys, "quote", "--gpus", "many")
    assert code == 2 and "must be an integer" in doc["errors"][0]["message"]
    code, _, err = run(capsys, "quote", "--gpus", "8", "--spot", "--on-demand")
    assert code == 2 and "not allowed with" in err


def test_quote_from_burst_launch_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = run_json(capsys, "quote", str(EXAMPLES / "burst16.isc"))
    assert code == 0
    assert doc["request"]["gpus"] == 16
    assert doc["request"]["launch_file"].endswith("burst16.isc")
    assert doc["request"]["priority_used"] is True
    assert doc["plans"][0]["shape_id"] == doc["request"]["priority"][0]


def test_quote_refuses_non_burst_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "quote", str(EXAMPLES / "cycle.isc"))
    assert code == 2
    assert "compute_mode" in err and "only burst experiments" in err


def test_quote_file_and_gpus_conflict(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "quote", str(EXAMPLES / "burst16.isc"), "--gpus", "8")
    assert code == 2 and "not both" in err


def test_quote_priority_flag_overrides_file_list(capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = run_json(
        capsys,
        "quote",
        str(EXAMPLES / "burst16.isc"),
        "--priority",
        "aws:us-east-1:g6.xlarge:on-demand",
    )
    assert code == 0
    assert [p["shape_id"] for p in doc["plans"]] == ["aws:us-east-1:g6.xlarge:on-demand"]
    assert any("overridden by --priority" in w["message"] for w in doc["warnings"])


def test_quote_invalid_launch_file_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.isc"
    bad.write_text('isc_project_id = "p"\nexperiment_name = "x"\ngpus = "16"\ncommand = "c"\n')
    code, doc = run_json(capsys, "quote", str(bad))
    assert code == 2
    assert doc["errors"][0]["field"] == "gpus"


def test_shapes_json_and_filters(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "shapes", "--json", "--provider", "gcp", "--gpu", "a100", "--spot")
    assert code == 0
    shapes = json.loads(out)
    assert shapes
    for s in shapes:
        assert set(s) >= SHAPE_JSON_FIELDS
        assert (
            s["provider"] == "gcp" and s["gpu"].startswith("A100") and s["provisioning"] == "spot"
        )
    code, out, _ = run(capsys, "shapes", "--json", "--max-price-per-hour", "1")
    assert all(s["price_per_node_hour"] <= 1 for s in json.loads(out))


def test_shapes_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "shapes", "--region", "us-east-1", "--gpu", "L4")
    assert code == 0
    rows = out.splitlines()[1:]
    assert rows and all(r.startswith("aws:us-east-1:g6.") for r in rows)
    assert f"{len(rows)} of " in err


def test_validate_valid_and_invalid(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "validate", str(EXAMPLES / "burst16.isc"))
    assert code == 0 and "valid" in out
    code, doc = run_json(capsys, "validate", str(EXAMPLES / "burst16.isc"))
    assert code == 0 and doc["valid"] is True and doc["experiment"]["gpus"] == 16
    assert set(doc) == {"valid", "errors", "warnings", "experiment"}
    bad = tmp_path / "bad.isc"
    bad.write_text('gpus = 100\ncompute_mode = "burst"\n')
    code, doc = run_json(capsys, "validate", str(bad))
    assert code == 2 and doc["valid"] is False and doc["experiment"] is None
    fields = {e["field"] for e in doc["errors"]}
    assert {"isc_project_id", "experiment_name", "command", "gpus"} <= fields
    code, _, err = run(capsys, "validate", str(tmp_path / "missing.isc"))
    assert code == 2 and "Traceback" not in err


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys)
    assert code == 2 and "quote" in out and "shapes" in out and "validate" in out


def test_console_script_end_to_end() -> None:
    """The installed entry point, as a user runs it (a real process)."""
    proc = subprocess.run(
        [sys.executable, "-m", "broker.cli", "quote", "--gpus", "16", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["plans"][0]["rank"] == 1

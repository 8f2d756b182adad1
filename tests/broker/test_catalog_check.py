"""`broker catalog check`: the price sanity checks on the catalog in use (bundled + refreshed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from broker.cli import main
from shapes.catalog import BUNDLED_DIR
from shapes.errors import Exit


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def refreshed_gcp(directory: Path, **changes: float) -> Path:
    """A refreshed gcp.json: the bundled one with a3-highgpu-8g's price in some regions set."""
    doc: dict[str, Any] = json.loads((BUNDLED_DIR / "gcp.json").read_text())
    for region, price in changes.items():
        entry = doc["instance_types"]["a3-highgpu-8g"]["regions"][region.replace("_", "-")]
        entry["on_demand"] = price
    path = directory / "gcp.json"
    path.write_text(json.dumps(doc))
    return path


def test_the_bundled_catalog_passes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "catalog", "check")
    assert code == Exit.OK
    lines = out.splitlines()
    for provider in ("aws", "azure", "gcp"):
        assert any(
            line.startswith(f"{provider} (bundled, ") and line.endswith(": ok") for line in lines
        )
    assert lines[-1].startswith("0 problem(s) in 3 file(s); prices as of aws 2026-07-20 (")


def test_a_refreshed_file_with_gcps_old_2x_error_is_named_row_by_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BROKER_CATALOG_DIR", str(tmp_path))
    path = refreshed_gcp(tmp_path, us_central1=43.07)  # the old catalog's figure
    code, out, _ = run(capsys, "catalog", "check", "--json")
    assert code == Exit.INVALID
    doc = json.loads(out)
    gcp = next(s for s in doc["sources"] if s["provider"] == "gcp")
    assert gcp["bundled"] is False and gcp["path"] == str(path)
    assert gcp["prices_as_of"] == "2026-07-30" and gcp["spot_as_of"] == "2026-07-30"
    wheres = {p["where"] for p in gcp["problems"] if p["rule"] == "cross-region"}
    assert "gcp/a3-highgpu-8g/us-east4" in wheres
    assert all(w.startswith("gcp/a3-highgpu-8g/") for w in wheres)
    assert doc["problems"] == sum(len(s["problems"]) for s in doc["sources"])


def test_a_sane_refreshed_file_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BROKER_CATALOG_DIR", str(tmp_path))
    refreshed_gcp(tmp_path, us_central1=88.0)
    code, out, _ = run(capsys, "catalog", "check")
    assert any(
        line.startswith("gcp (refreshed, ") and line.endswith(": ok") for line in out.splitlines()
    )
    assert code == Exit.OK


def test_the_quote_header_says_a_refreshed_file_fails_a_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BROKER_CATALOG_DIR", str(tmp_path))
    refreshed_gcp(tmp_path, us_central1=43.07)
    code, out, _ = run(capsys, "quote", "--gpus", "8", "--gpu", "H100", "--limit", "1")
    assert code == 0
    assert "sanity problems in gcp (" in out.splitlines()[0]
    assert "see broker catalog check" in out.splitlines()[0]

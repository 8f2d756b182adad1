"""Cluster commands end to end: the CLI in-process, and real processes for kill -9 and for
several provisioners on one store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from broker.cli import main
from broker.state import Store
from providers.sim import DB_FILENAME as SIM_DB
from providers.sim import SimProvider
from shapes.catalog import load_bundled_catalog
from tests.conftest import bundled_shape_id

CATALOG = load_bundled_catalog()
A = bundled_shape_id("aws", "us-east-1")
B = bundled_shape_id("aws", "us-west-2")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BROKER_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("BROKER_SIM_SCENARIO", raising=False)
    return tmp_path / "state"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def sim_nodes(state_dir: Path) -> list[str]:
    return [n.provider_id for n in SimProvider(state_dir, CATALOG).all_nodes()]


def test_provision_json_env_release(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, "provision", "--provider", "sim", "--gpus", "16", "--priority", A, "--json"
    )
    assert code == 0, err
    doc = json.loads(out)
    assert {"cluster_id", "status", "shape_id", "nodes", "attempts", "price_per_hour"} <= set(doc)
    assert doc["status"] == "RUNNING" and doc["shape_id"] == A
    assert [n["rank"] for n in doc["nodes"]] == [0, 1]
    assert all({"rank", "provider_id", "private_ip", "zone"} == set(n) for n in doc["nodes"])
    assert "attempt 1:" in err and "RUNNING" in err  # progress on stderr
    cid = doc["cluster_id"]

    code, out, _ = run(capsys, "env", cid[:10], "--rank", "1")
    assert code == 0 and "export NODE_RANK=1\n" in out and "export NNODES=2\n" in out
    code, out, _ = run(capsys, "env", cid, "--rank", "0", "--json")
    assert json.loads(out)["MASTER_ADDR"] == doc["nodes"][0]["private_ip"]

    code, out, _ = run(capsys, "list", "--json")
    assert [c["cluster_id"] for c in json.loads(out)] == [cid]
    code, out, _ = run(capsys, "util", "--json")
    assert json.loads(out)["providers"]["sim:aws"]["gpus_running"] == 16

    code, out, _ = run(capsys, "release", cid)
    assert code == 0 and out.strip() == f"{cid} COMPLETED"
    assert sim_nodes(state) == []
    code, out, _ = run(capsys, "describe", cid, "--json")
    report = json.loads(out)
    assert [t["status"] for t in report["transitions"]][-2:] == ["TERMINATING", "COMPLETED"]
    assert report["gpu_hours"] >= 0 and report["cost"] >= 0
    code, out, _ = run(capsys, "delete", cid)
    assert code == 0 and json.loads(run(capsys, "list", "--json")[1]) == []


def test_provision_human_output_and_describe(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "provision", "--provider", "sim", "--gpus", "8", "--priority", A)
    assert code == 0 and " RUNNING: 1 x " in out and "RANK" in out
    cid = out.split()[0]
    code, out, _ = run(capsys, "describe", cid)
    assert code == 0 and "Lifecycle:" in out and "Attempts:" in out and "GPU-hours" in out
    code, out, _ = run(capsys, "stop", cid, "--json")
    assert json.loads(out)["status"] == "STOPPED"
    code, out, _ = run(capsys, "restart", cid, "--json")
    assert code == 0 and json.loads(out)["cycle"] == 2


def test_provision_failure_lists_every_attempt(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text(f'[shapes."{A}"]\ncapacity_nodes = 0\n[shapes."{B}"]\nerrors = ["quota"]\n')
    argv = ["provision", "--provider", "sim", "--sim-scenario", str(scenario), "--gpus", "8",
            "--priority", A, "--priority", B, "--json"]  # fmt: skip
    code, out, err = run(capsys, *argv)
    assert code == 3
    doc = json.loads(out)
    assert doc["status"] == "FAILED" and doc["reason"] == "NoCapacity"
    assert [a["error_code"] for a in doc["attempts"]][-1] == "QuotaExceeded"
    assert all(a["error_code"] and a["reason"] for a in doc["attempts"])
    assert "-> next zone" in err and "-> next region" in err


def test_real_provider_without_adapter_is_refused_with_reasons(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "provision", "--gpus", "8", "--priority", A)
    assert code == 3
    assert "NotConfigured" in err and "--provider sim" in err


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["describe", "bb-nope"], "no cluster"),
        (["env", "bb-nope", "--rank", "0"], "no cluster"),
        (["release", "bb-nope"], "no cluster"),
    ],
)
def test_cluster_command_errors(
    state: Path, capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str
) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2 and fragment in err and "Traceback" not in err


LEASE = 1.0  # seconds: the broker processes' lease, so a killed owner's expires quickly


def _broker_process(
    state_dir: Path, *argv: str, scenario: Path | None = None
) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "BROKER_STATE_DIR": str(state_dir),
        "PYTHONPATH": str(ROOT),
        "BROKER_LEASE_SECONDS": str(LEASE),
    }
    if scenario is not None:
        env["BROKER_SIM_SCENARIO"] = str(scenario)
    return subprocess.Popen(
        [sys.executable, "-m", "broker.cli", *argv],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.mark.parametrize("kill_when", ["early", "nodes-pending"])
def test_kill_9_during_provisioning_then_reconcile_leaves_nothing(
    tmp_path: Path, kill_when: str
) -> None:
    state_dir = tmp_path / "state"
    scenario = tmp_path / "slow.toml"
    scenario.write_text("[default]\nlatency_ms = 20000\n")
    proc = _broker_process(
        state_dir, "provision", "--provider", "sim", "--gpus", "16", "--priority", A,
        scenario=scenario,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        if kill_when == "early":
            time.sleep(0.05)
        else:
            while not (state_dir / SIM_DB).exists() or not sim_nodes(state_dir):
                assert time.monotonic() < deadline, "provision never created nodes"
                time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)  # reaped: no zombie to look alive
    time.sleep(LEASE + 0.2)  # nobody renews the dead owner's lease: it runs out
    rec = _broker_process(state_dir, "reconcile", "--json", scenario=scenario)
    out, err = rec.communicate(timeout=60)
    assert rec.returncode == 0, err
    if (state_dir / SIM_DB).exists():  # killed early, the process may not have reached the sim
        assert sim_nodes(state_dir) == []
    if kill_when == "nodes-pending":
        doc = json.loads(out)
        assert len(doc["terminated"]) == 2 and len(doc["settled"]) == 1
        cluster = Store.open(state_dir).list_clusters()[0]
        assert (cluster.status.value, cluster.reason) == ("FAILED", "Orphaned")


def test_concurrent_provisioners_never_double_book(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    shape = CATALOG.get(A)
    assert shape is not None
    scenario = tmp_path / "scarce.toml"
    scenario.write_text(f'[shapes."{A}"]\ncapacity_nodes = 1\n')
    n = len(shape.zones) + 2  # more provisioners than there are nodes to be had
    procs = [
        _broker_process(state_dir, "provision", "--provider", "sim", "--gpus", "8",
                        "--priority", A, "--json", scenario=scenario)
        for _ in range(n)
    ]  # fmt: skip
    results = [p.communicate(timeout=120) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0] * len(shape.zones) + [3] * 2, [r[1][-500:] for r in results]
    running = [
        json.loads(out) for (out, _), p in zip(results, procs, strict=True) if p.returncode == 0
    ]
    zones = [c["nodes"][0]["zone"] for c in running]
    assert sorted(zones) == sorted(shape.zones)  # one node per zone: never two
    store = Store.open(state_dir)
    statuses = sorted(c.status.value for c in store.list_clusters())
    assert statuses == ["FAILED"] * 2 + ["RUNNING"] * len(shape.zones)
    assert len(sim_nodes(state_dir)) == len(shape.zones)
    rec = _broker_process(state_dir, "reconcile", "--json", scenario=scenario)
    out, _ = rec.communicate(timeout=60)
    assert json.loads(out)["terminated"] == []  # the store accounts for every node


def test_explain_shows_blocked_scopes(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text(f'[shapes."{A}"]\ncapacity_nodes = 0\n')
    base = ["--provider", "sim", "--sim-scenario", str(scenario), "--gpus", "8"]
    assert run(capsys, "provision", *base, "--priority", f"{A},{B}")[0] == 0
    code, _, err = run(capsys, "provision", *base, "--priority", f"{A},{B}", "--explain")
    assert code == 0
    assert "Blocked scopes" in err and "InsufficientCapacity" in err
    assert f"excluded {A}: every zone blocked" in err
    # a quote (real clouds) lists the sim's blocks but they do not exclude real shapes
    code, out, _ = run(capsys, "quote", "--gpus", "8", "--priority", A, "--explain", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["plans"][0]["shape_id"] == A
    assert doc["blocked"] and all(b["scope"].startswith("sim/zone:") for b in doc["blocked"])


def test_plain_quote_does_not_touch_the_state_store(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "quote", "--gpus", "8", "--json")[0] == 0
    assert not state.exists()

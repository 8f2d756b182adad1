"""What a new user typed in their first hour, as real `broker` processes: pipes closed early,
flags in odd places, bad numbers, repeated commands, Ctrl-C, a stop from another terminal,
a configured region list, an unusable state directory (issue 10's defects)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from providers.sim import SimProvider
from shapes.catalog import load_bundled_catalog
from tests.conftest import bundled_shape_id

ROOT = Path(__file__).resolve().parents[2]
A = bundled_shape_id("aws", "us-east-1")
EXAMPLE = str(ROOT / "examples" / "burst16.isc")


def env_for(state: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "BROKER_STATE_DIR": str(state),
        "BROKER_CATALOG_DIR": str(state / "catalog"),
        "BROKER_CONFIG": "",
        "XDG_CONFIG_HOME": str(state / "config"),
        "PYTHONPATH": str(ROOT),
        "BROKER_LEASE_SECONDS": "1",
        **extra,
    }


def broker(state: Path, *argv: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", *argv],
        env=env_for(state, **extra),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def clusters(state: Path) -> list[dict[str, object]]:
    out = broker(state, "list", "--all", "--json")
    assert out.returncode == 0, out.stderr
    docs: list[dict[str, object]] = json.loads(out.stdout)
    return docs


def sim_nodes(state: Path) -> list[str]:
    sim = SimProvider(state, load_bundled_catalog())
    return [n.provider_id for n in sim.all_nodes()]


@pytest.mark.parametrize("argv", [["shapes"], ["quote", "--gpus", "16", "--limit", "0"]])
def test_a_closed_pipe_is_no_traceback(tmp_path: Path, argv: list[str]) -> None:
    cmd = " ".join([sys.executable, "-m", "broker.cli", *argv]) + " | head -1"
    out = subprocess.run(
        ["bash", "-c", cmd], env=env_for(tmp_path), capture_output=True, text=True, timeout=60
    )
    assert out.stdout.count("\n") == 1
    assert "Traceback" not in out.stderr and "BrokenPipe" not in out.stderr


def test_limit_0_shows_every_plan(tmp_path: Path) -> None:
    table = broker(tmp_path, "quote", "--gpus", "16", "--limit", "0")
    doc = json.loads(broker(tmp_path, "quote", "--gpus", "16", "--json", "--limit", "0").stdout)
    assert doc["plans_total"] == len(doc["plans"]) > 100
    rows = [line for line in table.stdout.splitlines() if line.lstrip()[:1].isdigit()]
    assert len(rows) == doc["plans_total"]


def test_priority_does_not_swallow_the_launch_file(tmp_path: Path) -> None:
    out = broker(tmp_path, "quote", "--priority", A, EXAMPLE, "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["request"]["launch_file"] == EXAMPLE
    assert doc["request"]["priority"] == [A]


def test_fallback_is_said_and_strict_priority_refuses(tmp_path: Path) -> None:
    typo = A.replace("us-east-1", "us-east-7")
    out = broker(tmp_path, "quote", "--gpus", "8", "--priority", typo, "--json")
    assert out.returncode == 0
    assert "did you mean" in out.stderr and "every shape" in out.stderr
    messages = [w["message"] for w in json.loads(out.stdout)["warnings"]]
    assert any("every shape" in m for m in messages)
    strict = broker(tmp_path, "quote", "--gpus", "8", "--priority", typo, "--strict-priority")
    assert strict.returncode == 2 and "Traceback" not in strict.stderr


@pytest.mark.parametrize(
    ("flags", "scenario"),
    [
        (["--timeout", "-5"], None),
        (["--timeout", "nan"], None),
        (["--timeout", "inf"], None),
        (["--sim-scenario", "/nonexistent/s.toml"], None),
        ([], "[default]\nlatency_ms = inf\n"),
        ([], "[default]\ncapacity_nodes = -1\n"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(
    tmp_path: Path, flags: list[str], scenario: str | None
) -> None:
    if scenario is not None:
        path = tmp_path / "s.toml"
        path.write_text(scenario)
        flags = ["--sim-scenario", str(path)]
    out = broker(tmp_path, "provision", "--provider", "sim", "--gpus", "8", *flags)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert clusters(tmp_path) == []


def test_release_twice_and_blocks(tmp_path: Path) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text(f'[shapes."{A}"]\nerrors = ["capacity"]\n')
    up = broker(tmp_path, "provision", "--provider", "sim", "--gpus", "8", "--priority", A,
                "--sim-scenario", str(scenario), "--json")  # fmt: skip
    assert up.returncode == 0, up.stderr
    cid = json.loads(up.stdout)["cluster_id"]
    assert broker(tmp_path, "release", cid).returncode == 0
    again = broker(tmp_path, "release", cid)
    assert again.returncode == 0 and "already COMPLETED" in again.stdout
    blocks = json.loads(broker(tmp_path, "blocks", "--json").stdout)["blocks"]
    assert len(blocks) == 1 and "InsufficientCapacity" in blocks[0]["reason"]
    assert broker(tmp_path, "unblock", "sim/zone:nope").returncode == 2
    gone = broker(tmp_path, "unblock", blocks[0]["scope"])
    assert gone.returncode == 0 and "removed 1" in gone.stdout
    assert json.loads(broker(tmp_path, "blocks", "--json").stdout)["blocks"] == []


def _slow_provision(state: Path) -> subprocess.Popen[str]:
    scenario = state / "slow.toml"
    state.mkdir(parents=True, exist_ok=True)
    scenario.write_text("[default]\nlatency_ms = 4000\n")
    return subprocess.Popen(
        [sys.executable, "-m", "broker.cli", "provision", "--provider", "sim", "--gpus", "16",
         "--priority", A, "--sim-scenario", str(scenario)],
        env=env_for(state), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _wait_for_nodes(state: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while not ((state / "sim-cloud.sqlite3").exists() and sim_nodes(state)):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "provision never created nodes"
        time.sleep(0.05)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_the_cluster_cleans_up_and_exits_128_plus(
    tmp_path: Path, signum: int
) -> None:
    proc = _slow_provision(tmp_path)
    _wait_for_nodes(tmp_path, proc)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err and "STOPPED" in err
    assert sim_nodes(tmp_path) == []
    (cluster,) = clusters(tmp_path)
    assert cluster["status"] == "STOPPED"


def test_stopped_from_another_terminal(tmp_path: Path) -> None:
    proc = _slow_provision(tmp_path)
    _wait_for_nodes(tmp_path, proc)
    (cluster,) = clusters(tmp_path)
    stop = broker(tmp_path, "stop", str(cluster["cluster_id"]))
    assert stop.returncode == 0, stop.stderr
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 5, err
    assert "stopped by someone else" in err and "Traceback" not in err
    assert sim_nodes(tmp_path) == []


def test_quote_shows_only_configured_regions(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[broker]\nproviders = ["aws"]\n[aws]\nregions = ["us-west-2"]\n')
    out = broker(tmp_path, "quote", "--gpus", "8", "--provider", "aws", "--json",
                 "--explain", BROKER_CONFIG=str(config))  # fmt: skip
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert {p["region"] for p in doc["plans"]} == {"us-west-2"}
    reasons = {e["reason"] for e in doc["excluded"] if e["rule"] == "unavailable"}
    assert "region us-east-1 is not in [aws] regions" in reasons


def test_an_unusable_state_dir_is_one_line_and_exit_6(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    out = broker(target, "list")
    assert out.returncode == 6 and "is a file" in out.stderr and "Traceback" not in out.stderr
    as_json = json.loads(broker(target, "list", "--json").stdout)
    assert as_json["error"] == "StoreError"


def test_no_cloud_configured_says_so_once(tmp_path: Path) -> None:
    out = broker(tmp_path, "provision", "--gpus", "2")
    assert out.returncode == 3
    assert "NotConfigured" in out.stderr
    assert len(out.stderr.splitlines()) < 15  # not one line per plan
    assert json.loads(broker(tmp_path, "blocks", "--json").stdout)["blocks"] == []


def test_list_keeps_live_clusters_older_than_the_newest_finished(tmp_path: Path) -> None:
    from broker.api import Broker
    from broker.quote import QuoteRequest
    from broker.ranking import RankRequest

    b = Broker(state_dir=tmp_path, backend="sim", sleep=lambda _s: None)
    request = QuoteRequest(rank=RankRequest(gpus=8, priority=(A,)))
    running = b.provision(request)
    for _ in range(3):
        b.stop(b.submit(request).id)
    doc = json.loads(broker(tmp_path, "list", "--limit", "2", "--json").stdout)
    assert [c["status"] for c in doc] == ["RUNNING", "STOPPED", "STOPPED"]
    assert doc[0]["cluster_id"] == running.id
    assert len(json.loads(broker(tmp_path, "list", "--all", "--json").stdout)) == 4


def test_provision_json_carries_the_fallback_warning(tmp_path: Path) -> None:
    typo = A.replace("us-east-1", "us-east-7")
    out = broker(tmp_path, "provision", "--provider", "sim", "--gpus", "8", "--priority", typo,
                 "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    messages = [w["message"] for w in json.loads(out.stdout)["warnings"]]
    assert any("every shape" in m for m in messages)

"""`broker run`: one command on a fresh machine runs an experiment on sim end to end (an
in-process service on loopback, real agent processes) and exits with its outcome."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.server.conftest import STATE_DIRS

ROOT = Path(__file__).resolve().parents[2]


def run(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    STATE_DIRS.append(tmp_path / "state")  # whatever happens, its nodes end with the test
    env = {**os.environ, "BROKER_STATE_DIR": str(tmp_path / "state")}
    env.pop("BROKER_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", "run", *argv],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_hello_completes_and_prints_rank_0s_environment(tmp_path: Path) -> None:
    proc = run(tmp_path, "examples/hello.isc", "--provider", "sim")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "hello from rank 0 of 4 (4 processes per node)"
    assert lines[1] == "MASTER_ADDR=10.0.0.1 MASTER_PORT=29500"
    assert "COMPLETED" in proc.stderr and "Traceback" not in proc.stderr
    assert not list((tmp_path / "state").glob("sim-nodes/*/agent.pid"))  # nodes are gone


def test_the_seeds_torchrun_example_needs_its_dataset_then_fails_honestly(tmp_path: Path) -> None:
    refused = run(tmp_path, "examples/burst16.isc", "--provider", "sim")
    assert refused.returncode == 2, refused.stderr  # before any node: the dataset is missing
    assert "no dataset 'fashion-mnist' in the artifact store" in refused.stderr
    data = tmp_path / "fashion-mnist"
    data.mkdir()
    (data / "train.csv").write_text("label,pixels\n")
    env = {**os.environ, "BROKER_STATE_DIR": str(tmp_path / "state")}
    upload = [sys.executable, "-m", "broker.cli", "datasets", "upload", "fashion-mnist", str(data)]
    done = subprocess.run(upload, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    proc = run(tmp_path, "examples/burst16.isc", "--provider", "sim")
    assert proc.returncode == 7, proc.stderr
    assert "FAILED (Error: rank" in proc.stderr and "command not found" in proc.stderr
    # The rank whose command failed had its dataset before it ran (rank 0, followed, may
    # not have got that far: the gang stops when the first rank fails).
    found = re.search(r"(bb-[0-9a-f]{12}) FAILED \(Error: rank (\d+) ended", proc.stderr)
    assert found is not None, proc.stderr
    logs = [sys.executable, "-m", "broker.cli", "logs", found[1], "--rank", found[2]]
    shown = subprocess.run(logs, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert shown.returncode == 0, shown.stderr
    assert "[burst-agent] inputs: 1/1 files" in shown.stdout, shown.stdout


def test_a_real_cloud_without_a_service_is_refused_before_anything(tmp_path: Path) -> None:
    proc = run(tmp_path, "examples/hello.isc")
    assert proc.returncode == 2
    assert "broker serve --public-url" in proc.stderr
    assert not (tmp_path / "state").exists() or not list((tmp_path / "state").iterdir())


def test_a_preempted_run_is_followed_through_its_recovery(tmp_path: Path) -> None:
    """The spot gang is preempted mid-run (the sim's scenario); `broker run` says why it
    goes again and which cycle runs, prints the resumed output and exits 0."""
    scenario = tmp_path / "preempt.toml"
    scenario.write_text(
        '[shapes."aws:us-east-1:g5.12xlarge:spot"]\npreempt_on_line = "step 2"\n'
        'preempt_zones = ["use1-az1"]\npreempt_notice_s = 3\n'
    )
    command = (
        'f="$OUTPUT_PATH/step"; s=$(cat "$f" 2>/dev/null || echo 0); echo "resumes at $s"; '
        'sleep 1; i=$s; while [ "$i" -lt 3 ]; do i=$((i+1)); echo "step $i"; '
        'echo "$i" > "$f"; sleep 0.4; done'
    )
    job = tmp_path / "job.isc"
    job.write_text(
        'isc_project_id = "p"\nexperiment_name = "resumable"\ngpus = 8\ncompute_mode = "burst"\n'
        'burst_shape_priority_list = ["aws:us-east-1:g5.12xlarge:spot"]\n'
        f"command = '{command}'\n"  # a TOML literal string: no escapes
    )
    proc = run(tmp_path, str(job), "--provider", "sim", "--sim-scenario", str(scenario))
    assert proc.returncode == 0, proc.stderr
    assert re.search(r": TERMINATING \(Preempted: recovery 1 of 3: rank 0 \(", proc.stderr)
    assert ": RUNNING [cycle 2]" in proc.stderr and "COMPLETED" in proc.stderr
    output = [x for x in proc.stdout.splitlines() if not x.startswith("[burst-agent]")]
    assert output[0] == "resumes at 0" and output[-1] == "step 3", output
    resumed = [x for x in output if x.startswith("resumes at ")][1]
    assert int(resumed.split()[-1]) >= 2, output  # cycle 2 started from the checkpoint
    assert "Traceback" not in proc.stderr


def test_a_run_time_limit_is_said_while_following(tmp_path: Path) -> None:
    """A stop for the run-time limit has no reason code: the last line gives its detail
    alone (it said nothing of why)."""
    job = tmp_path / "job.isc"
    job.write_text(
        'isc_project_id = "p"\nexperiment_name = "limited"\ngpus = 4\ncompute_mode = "burst"\n'
        "command = 'echo up; sleep 60'\n"
    )
    proc = run(tmp_path, str(job), "--provider", "sim", "--max-hours", "0.0005")  # 1.8 s
    assert proc.returncode == 5, proc.stderr  # STOPPED
    assert re.search(
        r"bb-[0-9a-f]{12} STOPPED \(run-time limit: max_hours 0\.0005 reached", proc.stderr
    )
    assert "None" not in proc.stderr and "Traceback" not in proc.stderr


def test_ctrl_c_waits_for_the_commands_stop_and_final_sync(tmp_path: Path) -> None:
    """Ctrl-C stops the experiment; when its command takes a while to stop (saving a
    checkpoint), `broker run` waits for that before its service goes, so the checkpoint is
    synced and the nodes are gone when it exits 130."""
    import signal
    import time

    STATE_DIRS.append(tmp_path / "state")
    job = tmp_path / "job.isc"
    job.write_text(
        'isc_project_id = "p"\nexperiment_name = "slow-stop"\ngpus = 4\ncompute_mode = "burst"\n'
        "command = '''trap 'sleep 7; echo step9 > $OUTPUT_PATH/ckpt.txt; exit 0' TERM; "
        "echo started; while true; do sleep 0.2; done'''\n"
    )
    env = {**os.environ, "BROKER_STATE_DIR": str(tmp_path / "state")}
    env.pop("BROKER_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker.cli", "run", str(job), "--provider", "sim"],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while proc.stdout.readline().strip() != "started":
        assert time.monotonic() < deadline and proc.poll() is None
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, err
    assert "TERMINATING: its commands stop, their artifacts get a final sync" in err
    assert re.search(r"bb-[0-9a-f]{12} is STOPPED", err), err
    synced = list((tmp_path / "state").glob("artifacts/**/checkpoints/rank-0/ckpt.txt"))
    assert [p.read_text() for p in synced] == ["step9\n"]
    assert not list((tmp_path / "state").glob("sim-nodes/*/agent.pid"))  # nodes are gone
    assert "Traceback" not in err

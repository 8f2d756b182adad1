"""Experiments run for real on the simulated cloud: each node is a local process running
the node agent, connected to a real `broker serve --sim` on loopback."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.server.conftest import BrokerServer, server_env, wait_for

TERMINAL = {"COMPLETED", "FAILED", "STOPPED"}


def launch_file(command: str, gpus: int = 16) -> str:
    # on 4-GPU nodes: gpus / 4 agent processes (16: a gang of 4).
    return (
        f'isc_project_id = "p"\nexperiment_name = "e2e"\ngpus = {gpus}\ncompute_mode = "burst"\n'
        'burst_shape_priority_list = ["aws:us-east-1:g5.12xlarge:on-demand"]\n'
        f"command = {json.dumps(command)}\n"
    )


def submit(srv: BrokerServer, token: str, command: str, gpus: int = 16) -> str:
    reply = srv.call(
        "/v1/clusters", "POST", token=token, body={"launch_file": launch_file(command, gpus)}
    )
    assert reply.status == 202, reply.body
    return str(reply.json()["cluster_id"])


def doc(srv: BrokerServer, token: str, cluster_id: str) -> dict[str, Any]:
    got: dict[str, Any] = srv.call(f"/v1/clusters/{cluster_id}", token=token).json()
    return got


def ended(srv: BrokerServer, token: str, cluster_id: str, timeout: float = 45) -> dict[str, Any]:
    return wait_for(  # type: ignore[no-any-return]
        lambda: (d := doc(srv, token, cluster_id))["status"] in TERMINAL and d, timeout=timeout
    )


def log_lines(srv: BrokerServer, token: str, cluster_id: str, rank: int) -> list[str]:
    got = srv.call(f"/v1/clusters/{cluster_id}/logs?rank={rank}&tail=1000", token=token).json()
    return [x["line"] for x in got["lines"]]


def agent_processes(state: Path) -> list[int]:
    pids = []
    for pid_file in (state / "sim-nodes").glob("*/agent.pid"):
        pid = int(pid_file.read_text())
        try:
            os.kill(pid, 0)
            pids.append(pid)
        except ProcessLookupError:
            pass
    return pids


def sim_nodes(state: Path) -> list[str]:
    """The simulated cloud's live nodes (rows, whatever their processes do)."""
    from providers.sim import SimProvider
    from shapes.catalog import load_bundled_catalog

    return [n.provider_id for n in SimProvider(state, load_bundled_catalog()).all_nodes()]


def no_node_left(state: Path) -> None:
    """No node process and no simulated node is left (issue 16 §3's check)."""
    wait_for(lambda: agent_processes(state) == [], timeout=30)
    wait_for(lambda: sim_nodes(state) == [], timeout=30)


@pytest.mark.parametrize("nodes", [2, 6])
def test_a_gang_runs_the_command_and_completes(server: BrokerServer, nodes: int) -> None:
    token = server.token("acme")
    command = 'echo "rank $NODE_RANK of $NNODES at $MASTER_ADDR"'
    cluster_id = submit(server, token, command, gpus=4 * nodes)  # 4-GPU nodes
    final = ended(server, token, cluster_id, timeout=60)
    assert final["status"] == "COMPLETED", final
    assert len(final["nodes"]) == nodes
    ranks = sorted(n["rank"] for n in final["nodes"])
    assert ranks == list(range(nodes))
    master = next(n["private_ip"] for n in final["nodes"] if n["rank"] == 0)
    for rank in ranks:
        lines = log_lines(server, token, cluster_id, rank)
        assert lines == [f"rank {rank} of {nodes} at {master}"]
    wait_for(lambda: agent_processes(server.state_dir) == [], timeout=15)


def test_a_rank_exiting_3_fails_the_experiment_and_stops_the_others(server: BrokerServer) -> None:
    token = server.token("acme")
    command = 'if [ "$NODE_RANK" = 2 ]; then echo "bad input" >&2; exit 3; fi; sleep 60'
    cluster_id = submit(server, token, command)
    final = ended(server, token, cluster_id, timeout=60)
    assert final["status"] == "FAILED" and final["reason"] == "Error", final
    assert "rank 2 ended with exit code 3" in final["detail"] and "bad input" in final["detail"]
    assert log_lines(server, token, cluster_id, 2) == ["bad input"]
    wait_for(lambda: agent_processes(server.state_dir) == [], timeout=15)


def test_stop_during_a_run_signals_the_command_first(server: BrokerServer) -> None:
    token = server.token("acme")
    command = "trap 'echo got TERM; exit 0' TERM; echo started; while true; do sleep 0.1; done"
    cluster_id = submit(server, token, command)
    wait_for(lambda: log_lines(server, token, cluster_id, 0) == ["started"], timeout=30)
    stopped = server.call(f"/v1/clusters/{cluster_id}/stop", "POST", token=token, timeout=60)
    # STOPPED, or TERMINATING when the agents had not heard yet (the answer waits 5 s)
    assert stopped.status == 200 and stopped.json()["status"] in ("STOPPED", "TERMINATING")
    assert ended(server, token, cluster_id)["status"] == "STOPPED"
    # The last batch may land just after the stop answered; bash may also say its sleep died.
    lines = wait_for(
        lambda: (got := log_lines(server, token, cluster_id, 0))[-1:] == ["got TERM"] and got
    )
    assert lines[0] == "started", lines
    wait_for(lambda: agent_processes(server.state_dir) == [], timeout=15)


def test_a_killed_node_is_lost(tmp_path: Path) -> None:
    srv = BrokerServer(
        tmp_path / "state",
        server_env(tmp_path),
        "--reconcile-every",
        "0.5",
        "--heartbeat-timeout",
        "3",
    )
    try:
        token = srv.token("acme")
        cluster_id = submit(srv, token, "echo up; sleep 120")
        wait_for(lambda: log_lines(srv, token, cluster_id, 1) == ["up"], timeout=30)
        rank1 = doc(srv, token, cluster_id)["nodes"][1]["provider_id"]
        pid = int((srv.state_dir / "sim-nodes" / rank1 / "agent.pid").read_text())
        os.killpg(pid, signal.SIGKILL)  # the machine dies: agent and command at once
        final = ended(srv, token, cluster_id, timeout=60)
        assert final["status"] == "FAILED" and final["reason"] == "NodeLost", final
        assert "rank 1" in final["detail"]
        wait_for(lambda: agent_processes(srv.state_dir) == [], timeout=30)
    finally:
        srv.stop()


def test_a_service_restart_mid_run_loses_nothing(tmp_path: Path) -> None:
    env = server_env(tmp_path)
    first = BrokerServer(tmp_path / "state", env, "--reconcile-every", "1")
    token = first.token("acme")
    command = 'for i in 1 2 3 4 5 6; do echo "tick $i"; sleep 0.5; done'
    cluster_id = submit(first, token, command)
    wait_for(lambda: doc(first, token, cluster_id)["status"] == "RUNNING", timeout=30)
    wait_for(lambda: "tick 1" in log_lines(first, token, cluster_id, 0), timeout=30)
    first.stop(signal.SIGKILL)  # mid-run: every rank's command has started
    time.sleep(1)
    second = BrokerServer(tmp_path / "state", {**env}, "--reconcile-every", "1", port=first.port)
    try:
        final = ended(second, token, cluster_id, timeout=60)
        assert final["status"] == "COMPLETED", final
        assert log_lines(second, token, cluster_id, 0) == [f"tick {i}" for i in range(1, 7)]
    finally:
        second.stop()


def test_a_run_time_limit_stops_the_command_after_its_final_sync(server: BrokerServer) -> None:
    token = server.token("acme")
    command = (
        "trap 'echo got TERM; echo saved > \"$OUTPUT_PATH/at-stop.txt\"; exit 0' TERM; "
        'echo "allotted $STRONG_CYCLE_TIME_MS ms"; while true; do sleep 0.1; done'
    )
    body = {"launch_file": launch_file(command, gpus=4), "max_hours": 0.001}  # 3.6 s
    reply = server.call("/v1/clusters", "POST", token=token, body=body)
    assert reply.status == 202, reply.body
    cluster_id = str(reply.json()["cluster_id"])
    final = ended(server, token, cluster_id, timeout=60)
    assert final["status"] == "STOPPED", final
    assert final["detail"].startswith("run-time limit: max_hours 0.001 reached"), final
    lines = [x for x in log_lines(server, token, cluster_id, 0) if "[burst-agent]" not in x]
    assert lines[0] == "allotted 3600 ms" and "got TERM" in lines
    got = server.call(f"/v1/clusters/{cluster_id}/artifacts", token=token).json()
    assert [a["path"] for a in got["artifacts"]] == ["checkpoints/rank-0/at-stop.txt"]
    assert final["run"]["max_hours"] == 0.001
    no_node_left(server.state_dir)


def test_max_hours_needs_a_launch_file_and_a_sane_value(server: BrokerServer) -> None:
    token = server.token("acme")
    for body, fragment in (
        ({"gpus": 4, "max_hours": 1}, "max_hours limits how long a launch file's command runs"),
        ({"launch_file": launch_file("true", gpus=4), "max_hours": 0}, "greater than 0"),
        ({"launch_file": launch_file("true", gpus=4), "max_hours": 9000}, "less than or equal"),
    ):
        reply = server.call("/v1/clusters", "POST", token=token, body=body)
        assert reply.status == 422 and fragment in reply.body.decode(), reply.body


def test_credits_refuse_a_first_hour_they_cannot_pay_and_stop_runs_when_gone(
    server: BrokerServer,
) -> None:
    token = server.token("acme")
    broker = server.broker()
    broker.set_credits("acme", 1.0)  # a g5.12xlarge costs ~$5.67/h
    reply = server.call(
        "/v1/clusters", "POST", token=token, body={"launch_file": launch_file("true", gpus=4)}
    )
    assert reply.status == 402, reply.body
    assert "has $1.00 of credits left" in reply.body.decode()
    assert "for its first hour" in reply.body.decode()
    broker.set_credits("acme", 100.0)
    cluster_id = submit(server, token, "echo up; sleep 600", gpus=4)
    wait_for(lambda: doc(server, token, cluster_id)["status"] == "RUNNING", timeout=30)
    shown = server.call("/v1/credits", token=token).json()["credits"]
    assert shown["granted_usd"] == 100.0 and shown["burn_per_hour"] > 5
    broker.set_credits("acme", 0.0005)  # from now on: gone within a second of running
    final = ended(server, token, cluster_id, timeout=60)
    assert final["status"] == "STOPPED", final
    assert final["detail"].startswith("credits exhausted: $0.00 granted to 'acme'"), final
    assert server.call("/v1/credits", token=server.token("globex")).json()["credits"] is None
    no_node_left(server.state_dir)


def test_a_slow_stop_answers_terminating_and_the_cli_waits_for_the_end(
    server: BrokerServer, tmp_path: Path
) -> None:
    """A command that takes its time after TERM (saving a checkpoint, say): the stop's HTTP
    answer does not wait for it (TERMINATING after a few seconds), `broker stop --no-wait`
    returns at once, and `broker stop` waits for STOPPED, saying so on stderr."""
    import subprocess
    import sys

    token = server.token("acme")
    command = (
        "trap 'echo got TERM; sleep 8; echo saved; exit 0' TERM; echo started; "
        "while true; do sleep 0.1; done"
    )
    cluster_id = submit(server, token, command, gpus=4)
    wait_for(lambda: log_lines(server, token, cluster_id, 0) == ["started"], timeout=30)
    env = server_env(tmp_path / "cli") | {"BROKER_URL": server.url, "BROKER_TOKEN": token}

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "broker.cli", *argv],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    proc = cli("stop", cluster_id, "--no-wait")  # answered before the command's 8 s are up
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{cluster_id} TERMINATING: being wound down"), proc.stdout
    proc = cli("stop", cluster_id)  # a second stop waits for the first one's end
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{cluster_id} STOPPED"
    assert f"{cluster_id} TERMINATING: its commands stop" in proc.stderr
    lines = log_lines(server, token, cluster_id, 0)
    assert lines[0] == "started" and "got TERM" in lines  # bash may say its sleep died
    assert lines.index("saved") > lines.index("got TERM")  # the drain waited for the 8 s
    assert token not in proc.stdout + proc.stderr
    no_node_left(server.state_dir)

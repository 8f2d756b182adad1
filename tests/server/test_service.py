"""The service as a process: graceful SIGTERM, and a restarted server picking up what a
stopped or killed one left (submitted clusters, and clusters half-way through provisioning)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.server.conftest import BrokerServer, server_env, wait_for


def status_of(srv: BrokerServer, token: str, cluster_id: str) -> str:
    return str(srv.call(f"/v1/clusters/{cluster_id}", token=token).json()["status"])


def test_sigterm_when_idle_exits_cleanly_and_says_so(server: BrokerServer) -> None:
    started = time.monotonic()
    assert server.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 10
    assert "broker: stopped" in server.output()
    assert "Traceback" not in server.output()


def test_submitted_clusters_wait_for_the_next_server(tmp_path: Path) -> None:
    env = server_env(tmp_path)
    idle = BrokerServer(tmp_path / "state", env, "--workers", "0", "--reconcile-every", "1")
    token = idle.token("acme")
    ids = [
        idle.call("/v1/clusters", "POST", token=token, body={"gpus": 8}).json()["cluster_id"]
        for _ in range(3)
    ]
    assert {status_of(idle, token, c) for c in ids} == {"PENDING"}
    assert idle.stop(signal.SIGTERM) == 0
    nxt = BrokerServer(tmp_path / "state", env, "--workers", "2", "--reconcile-every", "1")
    try:
        wait_for(lambda: {status_of(nxt, token, c) for c in ids} == {"RUNNING"})
    finally:
        nxt.stop()


def test_a_killed_servers_half_provisioned_cluster_is_provisioned_again(tmp_path: Path) -> None:
    """SIGKILL mid-launch (sim latency 3 s): the nodes of the attempt in flight are cleaned
    up once its lease (5 s here) expires, and the cluster runs as a second cycle."""
    scenario = tmp_path / "slow.toml"
    scenario.write_text("[default]\nlatency_ms = 3000\n")
    env = server_env(tmp_path)
    first = BrokerServer(
        tmp_path / "state", env, "--sim-scenario", str(scenario), "--reconcile-every", "1"
    )
    token = first.token("acme")
    cluster_id = first.call("/v1/clusters", "POST", token=token, body={"gpus": 8}).json()[
        "cluster_id"
    ]
    wait_for(lambda: status_of(first, token, cluster_id) == "STARTING")
    first.stop(signal.SIGKILL)
    second = BrokerServer(tmp_path / "state", env, "--reconcile-every", "1")
    try:
        wait_for(lambda: status_of(second, token, cluster_id) == "RUNNING", timeout=60)
        doc = second.call(f"/v1/clusters/{cluster_id}", token=token).json()
        assert doc["cycle"] == 2
        assert [t["reason"] for t in doc["transitions"] if t["status"] == "FAILED"] == ["Orphaned"]
        broker = second.broker()
        sim = broker.provider("sim")
        live = [n for n in sim.list_tagged() if n.cluster_id == cluster_id]
        assert len(live) == len(doc["nodes"])  # the first cycle's nodes are gone
    finally:
        second.stop()


def test_sigterm_mid_provisioning_lets_it_finish_within_the_grace(tmp_path: Path) -> None:
    scenario = tmp_path / "slow.toml"
    scenario.write_text("[default]\nlatency_ms = 1500\n")
    srv = BrokerServer(
        tmp_path / "state", server_env(tmp_path), "--sim-scenario", str(scenario), "--grace", "10"
    )
    token = srv.token("acme")
    cluster_id = srv.call("/v1/clusters", "POST", token=token, body={"gpus": 8}).json()[
        "cluster_id"
    ]
    wait_for(lambda: status_of(srv, token, cluster_id) == "STARTING")
    assert srv.stop(signal.SIGTERM) == 0
    assert srv.broker().get(cluster_id).status.value == "RUNNING"
    assert "Traceback" not in srv.output()


def test_a_port_in_use_is_a_clear_error_before_anything_starts(server: BrokerServer) -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "broker.cli", "serve", "--sim", "--port", str(server.port)],
        env=server.env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert f"cannot serve on 127.0.0.1:{server.port}" in proc.stderr
    assert "serving on" not in proc.stderr and "Traceback" not in proc.stderr

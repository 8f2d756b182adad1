"""A `broker serve --sim` smoke test on each store backend: submissions over HTTP are
provisioned by its workers, listed, and released; the server stops cleanly."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.server.conftest import BrokerServer, kill_sim_nodes, server_env, wait_for


def test_a_service_provisions_lists_and_releases_on_this_store(
    tmp_path: Path, store_backend_env: str | None
) -> None:
    env = server_env(tmp_path)  # carries BROKER_STATE_URL for PostgreSQL
    assert env.get("BROKER_STATE_URL") == store_backend_env
    srv = BrokerServer(tmp_path / "state", env, "--workers", "2", "--reconcile-every", "1")
    try:
        token = srv.token("acme")
        ids = [
            srv.call("/v1/clusters", "POST", token=token, body={"gpus": 8}).json()["cluster_id"]
            for _ in range(4)
        ]

        def statuses() -> set[str]:
            return {srv.call(f"/v1/clusters/{c}", token=token).json()["status"] for c in ids}

        wait_for(lambda: statuses() == {"RUNNING"})
        listed = srv.call("/v1/clusters?status=RUNNING", token=token).json()
        assert sorted(c["cluster_id"] for c in listed["clusters"]) == sorted(ids)
        for c in ids:
            assert srv.call(f"/v1/clusters/{c}/release", "POST", token=token).status == 200
        wait_for(lambda: statuses() == {"COMPLETED"})
        assert srv.stop(signal.SIGTERM) == 0
        assert "Traceback" not in srv.output()
        if store_backend_env is not None:  # the clusters are in PostgreSQL, not in a file
            assert not (tmp_path / "state" / "broker.sqlite").exists()
    finally:
        srv.stop(signal.SIGKILL)
        kill_sim_nodes(tmp_path / "state")

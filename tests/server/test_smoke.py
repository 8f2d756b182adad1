"""The server starts, answers health checks, and provisions a submitted cluster on sim."""

from __future__ import annotations

from tests.server.conftest import BrokerServer, wait_for


def test_submit_is_provisioned_by_a_worker(server: BrokerServer) -> None:
    token = server.token("acme")
    assert server.call("/healthz").json() == {"status": "ok"}
    reply = server.call("/v1/clusters", "POST", token=token, body={"gpus": 16})
    assert reply.status == 202, reply.body
    doc = reply.json()
    assert doc["status"] == "PENDING" and doc["org"] == "acme"

    def running() -> bool:
        got = server.call(f"/v1/clusters/{doc['cluster_id']}", token=token).json()
        return bool(got["status"] == "RUNNING")

    wait_for(running)

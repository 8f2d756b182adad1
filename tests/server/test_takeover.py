"""A wind-down whose owner died (its lease ran out while TERMINATING) is finished by whoever
meets it next as its owner meant it: the commands still get their stop and final sync, the
node tokens are revoked before the final status, and a release does not turn a stop into
COMPLETED. In-process, the test playing the agents (as test_agent_api.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.lifecycle import Status
from broker.state import Lease
from tests.server.test_agent_api import PATIENT, Run


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Run]:
    made = Run(tmp_path, run_policy=PATIENT)  # the agents here exit when told: wait for them
    with made.client:
        yield made


def abandoned(run: Run, ending: Status = Status.STOPPED) -> None:
    """TERMINATING under the lease of a host that died a moment ago."""
    dead = Lease("dead-host", time.time() - 1)
    run.broker.store.transition(
        run.cluster_id, Status.TERMINATING, now=time.time(), lease=dead, ending=ending,
        detail="stopped by its owner",
    )  # fmt: skip


def alive(run: Run) -> list[str]:
    return [n.provider_id for n in run.broker.provider("sim").list_tagged()]


def agents_stop_when_told(run: Run) -> None:
    deadline = time.monotonic() + 10
    while run.call("heartbeat", rank=0)[1]["state"] != "stop":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    for n in run.cluster.nodes:
        run.call("exit", rank=n.rank, exit_code=None, signal=15, reason="stopped", last_lines=[])


def started(run: Run) -> None:
    run.register_all()
    for n in run.cluster.nodes:
        run.call("started", rank=n.rank, pid=1)


def test_reconcile_finishes_an_abandoned_stop_with_the_drain_and_the_revoke(run: Run) -> None:
    started(run)
    abandoned(run)
    said: list[str] = []
    run.broker.progress = said.append  # as the CLI's `broker reconcile` says it
    reports = []
    reconcile = threading.Thread(target=lambda: reports.append(run.broker.reconcile()))
    reconcile.start()
    agents_stop_when_told(run)  # the reconcile waits for the commands, as a stop does
    reconcile.join(timeout=10)
    assert not reconcile.is_alive()
    assert run.cluster_id in reports[0].settled
    assert f"{run.cluster_id}: waiting up to " in said[0]
    assert said[0].endswith(
        f"for the command on {len(run.cluster.nodes)} node(s) to stop and its artifacts' final sync"
    )
    cluster = run.broker.get(run.cluster_id)
    assert (cluster.status, cluster.detail) == (Status.STOPPED, "stopped by its owner")
    assert run.call("heartbeat", rank=0)[0] == 401  # its token went with it
    assert alive(run) == []


def test_the_service_finishes_an_abandoned_stop_aside(run: Run) -> None:
    started(run)
    abandoned(run)
    began = time.monotonic()
    run.service.reconcile_once()  # does not wait for the commands
    assert time.monotonic() - began < 3
    cluster = run.broker.get(run.cluster_id)
    assert cluster.status is Status.TERMINATING and cluster.owner == run.broker.owner
    agents_stop_when_told(run)
    run.wait_status(Status.STOPPED)
    assert run.call("heartbeat", rank=0)[0] == 401 and alive(run) == []


def test_a_release_meeting_an_abandoned_stop_finishes_it_stopped(run: Run) -> None:
    abandoned(run)  # no agent ever registered: nothing to wait for
    ended = run.broker.scoped("acme").release(run.cluster_id)
    assert (ended.status, ended.detail) == (Status.STOPPED, "stopped by its owner")
    assert alive(run) == []


def test_a_live_wind_down_is_left_to_its_owner(run: Run) -> None:
    lease = Lease("busy-host", time.time() + 60)
    run.broker.store.transition(
        run.cluster_id, Status.TERMINATING, now=time.time(), lease=lease, ending=Status.STOPPED
    )
    same = run.broker.scoped("acme").release(run.cluster_id)
    assert same.status is Status.TERMINATING and same.owner == "busy-host"
    run.service.reconcile_once()
    assert run.broker.get(run.cluster_id).owner == "busy-host"
    assert len(alive(run)) == len(run.cluster.nodes)


def test_a_graceful_stop_waits_for_the_wind_downs_in_flight(
    run: Run, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from broker.server import api

    monkeypatch.setattr(api, "END_ANSWER_WITHIN", 0.05)
    started(run)
    user = {"Authorization": f"Bearer {run.user}"}
    reply = run.client.post(f"/v1/clusters/{run.cluster_id}/stop", headers=user)
    assert reply.json()["status"] == "TERMINATING"
    assert len(run.broker.winding) == 1  # the request's wind-down thread, still waiting
    assert "broker_wind_downs_in_flight 1\n" in run.client.get("/metrics").text
    run.service.stop(grace=0.2)  # the commands have not stopped yet: it says what is left
    assert f"1 wind-down(s) in flight ({run.cluster_id})" in caplog.text
    stopping = threading.Thread(target=run.service.stop, kwargs={"grace": 20})
    stopping.start()
    time.sleep(0.2)
    assert stopping.is_alive()  # waiting for the commands' stop
    agents_stop_when_told(run)
    stopping.join(timeout=10)
    assert not stopping.is_alive() and run.broker.winding == {}
    assert run.broker.get(run.cluster_id).status is Status.STOPPED
    assert "broker_wind_downs_in_flight 0\n" in run.client.get("/metrics").text


def test_an_abandoned_recovery_still_becomes_the_next_cycle(tmp_path: Path) -> None:
    spot = Run(tmp_path, provisioning="spot")
    with spot.client:
        dead = Lease("dead-host", time.time() - 1)
        spot.broker.store.transition(
            spot.cluster_id, Status.TERMINATING, now=time.time(), lease=dead,
            ending=Status.PENDING, reason="Preempted", detail="recovery 1 of 3: rank 0 lost",
        )  # fmt: skip
        spot.service.reconcile_once()
        spot.wait_status(Status.PENDING)
        cluster = spot.broker.get(spot.cluster_id)
        assert (cluster.cycle, cluster.reason) == (2, "Preempted")
        assert alive(spot) == []
        spot.next_cycle()  # a worker provisions it as cycle 2
        assert spot.cluster.cycle == 2 and len(alive(spot)) == len(spot.cluster.nodes)

"""Recovering an experiment whose gang lost a node (issue 16 §1), in-process: a preemption
notice or a node gone winds the gang down and queues the cluster again as its next cycle,
the lost zone blocked, until its recoveries run out (then FAILED with every cycle's story).
The end-to-end loop with real agents on the simulated cloud is in test_recovery_e2e.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.lifecycle import Status
from broker.runs import Ending
from broker.scopes import ScopeKind
from broker.views import report_document
from tests.server.test_agent_api import Run


@pytest.fixture
def spot(tmp_path: Path) -> Iterator[Run]:
    made = Run(tmp_path, provisioning="spot")
    with made.client:
        yield made


def alive(run: Run) -> list[str]:
    return [n.provider_id for n in run.broker.provider("sim").list_tagged()]


def preempt(run: Run, rank: int = 1) -> None:
    for n in run.cluster.nodes:
        run.call("started", rank=n.rank, pid=1)
    code, answer = run.call("preempted", rank=rank, cloud="gcp", action="preempt")
    assert code == 200 and answer["state"] == "stop"


def test_a_preempted_spot_gang_is_queued_again_as_its_next_cycle(spot: Run) -> None:
    first = spot.cluster
    assert first.shape_id is not None and first.shape_id.endswith(":spot")
    spot.register_all()
    preempt(spot)
    spot.wait_status(Status.PENDING)
    cluster = spot.broker.get(spot.cluster_id)
    assert cluster.cycle == 2 and cluster.reason == "Preempted"
    assert (cluster.detail or "").startswith("recovery 1 of 3: rank 1 (")
    assert alive(spot) == []  # the whole gang went, not only the preempted node
    assert spot.call("heartbeat", rank=0)[0] == 401  # the old cycle's token is revoked
    blocked = [
        b.scope
        for b in spot.broker.blocks()
        if b.scope.kind is ScopeKind.ZONE and "Preempted" in b.reason
    ]
    assert [(b.zone, b.instance_type) for b in blocked] == [
        (first.zone, first.shape_id.split(":")[2])
    ]

    spot.next_cycle()
    second = spot.cluster
    assert second.cycle == 2 and second.id == first.id
    assert (second.shape_id, second.zone) != (first.shape_id, first.zone)  # not the lost zone
    history = [(t.cycle, t.status) for t in spot.broker.describe(spot.cluster_id).transitions]
    assert (1, Status.RUNNING) in history and (1, Status.TERMINATING) in history
    assert (2, Status.PENDING) in history and (2, Status.RUNNING) in history
    assert not any(s in (Status.FAILED, Status.STOPPED) for _, s in history)


def test_recoveries_run_out_then_it_fails_preempted_with_every_cycle_told(
    tmp_path: Path,
) -> None:
    run = Run(tmp_path, provisioning="spot", max_recoveries=1)
    with run.client:
        run.register_all()
        preempt(run)
        run.wait_status(Status.PENDING)
        run.next_cycle()
        run.register_all()
        preempt(run, rank=0)
        run.wait_status(Status.FAILED)
        cluster = run.broker.get(run.cluster_id)
        assert cluster.reason == "Preempted" and cluster.cycle == 2
        assert "recoveries exhausted (1 of 1 used)" in (cluster.detail or "")
        doc = report_document(run.broker.describe(run.cluster_id))
        assert doc["run"]["recoveries"] == 1 and doc["run"]["max_recoveries"] == 1
        told = [t for t in doc["transitions"] if t["status"] in ("PENDING", "FAILED")]
        assert [(t["cycle"], t["status"], t["reason"]) for t in told] == [
            (1, "PENDING", None),
            (2, "PENDING", "Preempted"),
            (2, "FAILED", "Preempted"),
        ]
        assert alive(run) == []


def test_an_on_demand_experiment_is_not_recovered_by_default(tmp_path: Path) -> None:
    run = Run(tmp_path)  # on-demand
    with run.client:
        _not_recovered(run)


def _not_recovered(run: Run) -> None:
    run.register_all()
    preempt(run)
    run.wait_status(Status.FAILED)
    cluster = run.broker.get(run.cluster_id)
    assert cluster.reason == "Preempted" and "recover" not in (cluster.detail or "")
    assert report_document(run.broker.describe(run.cluster_id))["run"]["max_recoveries"] == 0


def test_max_recoveries_given_on_demand_recovers_a_lost_node(tmp_path: Path) -> None:
    """A node the cloud took away (reconcile sees it gone) on an on-demand gang with
    ``max_recoveries`` 2: queued again; the reconcile report says so."""
    run = Run(tmp_path, max_recoveries=2)
    with run.client:
        run.register_all()
        sim = run.broker.provider("sim")
        gone = [
            n
            for n in sim.describe(run.cluster_id)
            if n.provider_id == run.cluster.nodes[0].provider_id
        ]
        sim.terminate(gone)
        report = run.broker.reconcile()
        assert report.recovered == [run.cluster_id] and report.lost == []
        cluster = run.broker.get(run.cluster_id)
        assert (cluster.status, cluster.reason, cluster.cycle) == (Status.PENDING, "NodeLost", 2)
        assert (cluster.detail or "").startswith("recovery 1 of 2: rank 0 (")
        assert alive(run) == []


@pytest.mark.parametrize(
    ("value", "message"),
    [(-1, "greater than or equal to 0"), (21, "less than or equal to 20"), (True, "integer")],
)
def test_max_recoveries_is_checked_at_submit(tmp_path: Path, value: object, message: str) -> None:
    run = Run(tmp_path)
    with run.client:
        reply = run.client.post(
            "/v1/clusters",
            json={"launch_file": "x", "max_recoveries": value},
            headers={"Authorization": f"Bearer {run.user}"},
        )
        assert reply.status_code == 422 and message in reply.text, reply.text
        reply = run.client.post(
            "/v1/clusters",
            json={"gpus": 8, "max_recoveries": 1},
            headers={"Authorization": f"Bearer {run.user}"},
        )
        assert reply.status_code == 422 and "give launch_file too" in reply.text, reply.text


def test_the_service_reconcile_hands_a_lost_experiment_to_the_background(
    spot: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watch loop's reconcile does not drain a lost gang itself (that takes up to the
    stop grace plus the final sync): it hands the ending to ``Service.finish``."""
    spot.register_all()
    sim = spot.broker.provider("sim")
    gone = [n for n in sim.list_tagged() if n.provider_id == spot.cluster.nodes[1].provider_id]
    sim.terminate(gone)
    handed: list[Ending] = []
    real_finish = spot.service.finish
    monkeypatch.setattr(spot.service, "finish", handed.append)
    spot.service.reconcile_once()
    assert [(e.cluster_id, e.reason) for e in handed] == [(spot.cluster_id, "NodeLost")]
    assert spot.broker.get(spot.cluster_id).status is Status.RUNNING  # not ended in the pass
    real_finish(handed[0])  # the background thread's work: recovered
    spot.wait_status(Status.PENDING)
    assert (spot.broker.get(spot.cluster_id).detail or "").startswith("recovery 1 of 3: rank 1")

"""Reconcile asks each cloud once per pass which nodes run, however many gangs it runs (no
call per cluster), and still finds the one gang that lost a node."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.lifecycle import Status
from providers.base import Node
from tests.broker.test_provisioning import A, alive, make_broker, request


def test_one_listing_per_cloud_for_every_running_gang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = make_broker(tmp_path)
    clusters = [broker.provision(request(8, (A,))) for _ in range(4)]
    sim = broker.provider("sim")
    listed: list[int] = []
    described: list[str] = []
    real_list = sim.list_tagged

    def list_tagged() -> list[Node]:
        listed.append(1)
        return real_list()

    def describe(cluster_id: str) -> list[Node]:
        described.append(cluster_id)
        return []

    monkeypatch.setattr(sim, "list_tagged", list_tagged)
    monkeypatch.setattr(sim, "describe", describe)
    assert broker.reconcile().lost == []
    assert described == []  # never one call per cluster
    assert len(listed) == 2  # the gangs' check, and the orphan sweep's own listing
    gone = clusters[2].nodes[0].provider_id
    monkeypatch.undo()
    sim.terminate([n for n in sim.list_tagged() if n.provider_id == gone])
    report = broker.reconcile()
    assert report.lost == [clusters[2].id]  # machines only (no command): FAILED NodeLost
    assert broker.get(clusters[2].id).status is Status.FAILED
    assert [broker.get(c.id).status for c in clusters].count(Status.RUNNING) == 3
    assert len(alive(broker)) == 3 * len(clusters[0].nodes)

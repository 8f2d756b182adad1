"""``Store.transitions_of``: many clusters' lifecycles in one query (per 500 ids), so the
watch loop's run-time-limit check costs the same statements however many limited runs there
are, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from broker import state
from broker.api import Broker
from broker.lifecycle import Status
from broker.runs import Ending
from broker.server.service import Service, ServiceOptions
from broker.state import NodeRecord, Store
from shapes.catalog import load_bundled_catalog

HOUR = 3600.0


def running(store: Store, cid: str, start: float, max_hours: float | None) -> None:
    experiment: dict[str, Any] = {"command": "python train.py"}
    if max_hours is not None:
        experiment["max_hours"] = max_hours
    store.create_cluster(cid, request={}, experiment=experiment, backend="sim", now=start)
    node = NodeRecord(0, f"sim-{cid}", "10.0.0.1", "z1", "r1")  # one rank, still running
    store.transition(cid, Status.QUEUED, now=start)
    store.transition(cid, Status.STARTING, now=start)
    store.transition(cid, Status.RUNNING, now=start, nodes=[node])


def test_transitions_of_is_each_clusters_lifecycle(
    tmp_path: Path, store_url: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store.open(tmp_path / "state", store_url)
    for i in range(5):
        running(store, f"c{i}", start=10.0 * i, max_hours=None)
    store.transition("c3", Status.TERMINATING, now=100.0)
    monkeypatch.setattr(state, "IN_CHUNK", 2)  # 5 ids: three queries, one answer
    wanted = ["c4", "c0", "c3", "c1", "c2", "gone"]
    found = store.transitions_of(wanted)
    assert list(found) == wanted
    for cid in wanted:
        assert found[cid] == store.transitions(cid)
    assert [t.status for t in found["c3"]][-1] is Status.TERMINATING
    assert found["gone"] == [] and store.transitions_of([]) == {}


def statements_of_a_watch(tmp_path: Path, limited: int) -> tuple[int, list[Ending]]:
    """One watch pass over ``limited`` runs with a 1 h limit (the first over it) and as many
    without one: how many statements it ran, and what it ended."""
    now = 100 * HOUR
    broker = Broker(
        state_dir=tmp_path / f"state{limited}",
        backend="sim",
        catalog=load_bundled_catalog(),
        clock=lambda: now,
    )
    for i in range(limited):
        running(broker.store, f"lim{i:02}", start=now - (2 if i == 0 else 0.5) * HOUR, max_hours=1)
        running(broker.store, f"free{i:02}", start=now - 5 * HOUR, max_hours=None)
    service = Service(broker, ServiceOptions(workers=0, reconcile_every=0))
    ended: list[Ending] = []
    service.finish = ended.append  # type: ignore[method-assign,assignment]
    statements: list[Any] = []

    def count(*_args: Any) -> None:
        statements.append(1)

    event.listen(broker.store.engine, "before_cursor_execute", count)
    try:
        service.watch_runs()
    finally:
        event.remove(broker.store.engine, "before_cursor_execute", count)
    return len(statements), ended


def test_the_watch_reads_every_runs_clock_at_once(tmp_path: Path) -> None:
    few, ended_few = statements_of_a_watch(tmp_path, 2)
    many, ended_many = statements_of_a_watch(tmp_path, 12)
    assert few == many  # not one query per limited run
    for ended in (ended_few, ended_many):
        (ending,) = ended  # only the run past its hour; the unlimited ones ran 5 h
        assert (ending.cluster_id, ending.final) == ("lim00", Status.STOPPED)
        assert ending.detail is not None and ending.detail.startswith("run-time limit")

"""Credits are counted from ``Store.spending_since``: the organisation's clusters that may
have spent since the grant, with their lifecycles, in a fixed number of queries however long
its history (the console reads it on every page, the watch loop every pass); the same spend
as reading each cluster's lifecycle, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from broker.api import accrue
from broker.credits import CreditStatus, credit_status
from broker.lifecycle import Status
from broker.state import PlanFields, Store

PLAN = PlanFields("sim:r:t:spot", "aws", "r", "z", 2, 8, 16, 10.0)  # $10/h


def run_cluster(store: Store, cid: str, org: str, start: float, end: float | None) -> None:
    """A cluster that ran from ``start`` (to ``end``: COMPLETED; None: still RUNNING)."""
    store.create_cluster(cid, request={}, experiment=None, backend="sim", now=start, org=org)
    store.transition(cid, Status.QUEUED, now=start)
    store.transition(cid, Status.STARTING, now=start, plan=PLAN)
    store.transition(cid, Status.RUNNING, now=start)
    if end is not None:
        store.transition(cid, Status.TERMINATING, now=end)
        store.transition(cid, Status.COMPLETED, now=end)


def counted(store: Store, org: str, now: float) -> tuple[CreditStatus | None, int]:
    """``credit_status`` and how many SQL statements it ran."""
    statements: list[Any] = []

    def count(*_args: Any) -> None:
        statements.append(1)

    event.listen(store.engine, "before_cursor_execute", count)
    try:
        return credit_status(store, org, now=now), len(statements)
    finally:
        event.remove(store.engine, "before_cursor_execute", count)


def test_credits_cost_the_same_queries_whatever_the_history(
    tmp_path: Path, store_url: str | None
) -> None:
    store = Store.open(tmp_path / "state", store_url)
    hour = 3600.0
    for i in range(30):  # ran and ended long before the grant: nothing counts
        run_cluster(store, f"old{i:02}", "acme", i * hour, i * hour + hour)
    store.set_credits("acme", 100.0, now=100 * hour)
    run_cluster(store, "across", "acme", 99 * hour, 102 * hour)  # 2 h after the grant: $20
    run_cluster(store, "live", "acme", 101 * hour, None)  # 3 h by 104 h: $30, $10/h now
    run_cluster(store, "globex1", "globex", 101 * hour, None)  # another organisation's
    found = dict((c.id, h) for c, h in store.spending_since("acme", 100 * hour))
    assert sorted(found) == ["across", "live"]
    for cid, history in found.items():
        assert history == store.transitions(cid)

    status, queries = counted(store, "acme", now=104 * hour)
    assert status is not None
    assert status.spent == pytest.approx(50.0) and status.burn_per_hour == pytest.approx(10.0)
    for i in range(20):  # 20 more clusters that spent since the grant: no more queries
        run_cluster(store, f"new{i:02}", "acme", 103 * hour, 103.5 * hour)
    more, again = counted(store, "acme", now=104 * hour)
    assert more is not None and more.spent == pytest.approx(50.0 + 20 * 5.0)
    assert again == queries <= 6, (queries, again)
    # The same figure as reading every cluster's lifecycle one by one.
    every = sum(
        accrue(store.transitions(c.id), 104 * hour, since=100 * hour).cost
        for c in store.list_clusters(org="acme")
    )
    assert more.spent == pytest.approx(every)

"""``Store.agents_of``: the agents of many clusters' current cycles in one query (the watch
loop's read), on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from broker.lifecycle import Status
from broker.state import Store


def test_agents_of_reads_each_clusters_current_cycle(tmp_path: Path, store_url: str | None) -> None:
    store = Store.open(tmp_path / "state", store_url)
    a = store.create_cluster("ca", request={}, experiment=None, backend="sim", now=1.0)
    b = store.create_cluster("cb", request={}, experiment=None, backend="sim", now=2.0)
    quiet = store.create_cluster("cc", request={}, experiment=None, backend="sim", now=3.0)
    for rank in (1, 0):
        store.register_agent("ca", 1, rank, address=f"10.0.0.{rank}", instance_id=None, now=5.0)
    store.register_agent("cb", 1, 0, address="10.0.1.0", instance_id=None, now=5.0)
    # cb goes again as cycle 2: its cycle-1 agent is history, its cycle-2 one is current
    store.transition("cb", Status.STOPPED, now=6.0)
    b = store.transition("cb", Status.PENDING, now=7.0)
    store.register_agent("cb", 2, 0, address="10.0.2.0", instance_id=None, now=8.0)
    found = store.agents_of([a, b, quiet])
    assert [(x.rank, x.address) for x in found["ca"]] == [(0, "10.0.0.0"), (1, "10.0.0.1")]
    assert [(x.cycle, x.address) for x in found["cb"]] == [(2, "10.0.2.0")]
    assert found["cc"] == []
    assert store.agents_of([]) == {}
    for cluster in (a, b, quiet):  # the same as one query per cluster
        assert found[cluster.id] == store.agents(cluster.id, cluster.cycle)

"""Writers racing on one store, on SQLite and PostgreSQL: claims of PENDING clusters never
overlap, upserts never collide (blocks, leases, quota readings, credits, agents, sync totals),
and concurrent `broker provision` processes on a fresh database all finish (issue 17: 6-10 of
16 crashed on PostgreSQL before)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from broker.lifecycle import Status
from broker.scopes import BlockScope
from broker.state import Store
from shapes.catalog import load_bundled_catalog
from tests.conftest import bundled_shape_id

CATALOG = load_bundled_catalog()


def open_store(tmp_path: Path, store_url: str | None) -> Store:
    """Another process's view of the test's store: its own engine."""
    return Store.open(tmp_path / "state", store_url)


def together(work: list[Callable[[], Any]]) -> tuple[list[Any], list[BaseException]]:
    """Run every callable in its own thread, all released at once: (results, errors)."""
    barrier = threading.Barrier(len(work))
    results: list[Any] = []
    errors: list[BaseException] = []

    def run(w: Callable[[], Any]) -> None:
        try:
            barrier.wait()
            results.append(w())
        except BaseException as exc:  # pragma: no cover - reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in work]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results, errors


def test_two_claimers_never_get_the_same_cluster(tmp_path: Path, store_url: str | None) -> None:
    store = open_store(tmp_path, store_url)
    ids = [
        store.create_cluster(f"c{i:03}", request={}, experiment=None, backend="sim", now=i).id
        for i in range(40)
    ]
    store.transition(ids[5], Status.STOPPED, now=100.0)  # not PENDING: never claimed

    def claimer(owner: str) -> Callable[[], tuple[str, list[str]]]:
        def claim_all() -> tuple[str, list[str]]:
            mine = open_store(tmp_path, store_url)
            got: list[str] = []
            while batch := mine.claim_pending(owner, until=9e9, limit=3, now=200.0):
                got += [c.id for c in batch]
            return owner, got

        return claim_all

    results, errors = together([claimer("worker-a"), claimer("worker-b")])
    assert errors == []
    first, second = dict(results)["worker-a"], dict(results)["worker-b"]
    assert set(first).isdisjoint(second)
    assert sorted(first + second) == sorted(set(ids) - {ids[5]})
    for owner, claimed in (("worker-a", first), ("worker-b", second)):
        for cid in claimed:
            record = store.get(cid)
            assert (record.status, record.owner, record.lease_until) == (Status.QUEUED, owner, 9e9)
            assert [t.status for t in store.transitions(cid)] == [Status.PENDING, Status.QUEUED]
    assert store.claim_pending("worker-c", until=9e9, limit=5) == []


@pytest.mark.parametrize("store_backend", ["postgres"], indirect=True)  # SQLite has no row locks
def test_a_claim_skips_clusters_another_transaction_holds(
    tmp_path: Path, store_url: str | None
) -> None:
    store = open_store(tmp_path, store_url)
    for i in range(3):
        store.create_cluster(f"c{i}", request={}, experiment=None, backend="sim", now=i)
    from sqlalchemy import text

    with store.engine.connect() as holder:  # another replica, mid-claim of the oldest
        holder.execute(text("SELECT id FROM clusters WHERE id = 'c0' FOR UPDATE"))
        started = time.monotonic()
        claimed = open_store(tmp_path, store_url).claim_pending("w", until=9e9, limit=1)
        assert [c.id for c in claimed] == ["c1"] and time.monotonic() - started < 5
        holder.rollback()
    assert [c.id for c in store.claim_pending("w", until=9e9, limit=5)] == ["c0", "c2"]


def test_racing_writes_of_one_key_never_collide(tmp_path: Path, store_url: str | None) -> None:
    store = open_store(tmp_path, store_url)
    cluster = store.create_cluster("c1", request={}, experiment=None, backend="sim", now=1.0)
    shape = CATALOG.get(bundled_shape_id("aws", "us-east-1"))
    assert shape is not None
    scope = BlockScope.zone_of("sim", shape, shape.zones[0])
    now = time.time()
    quota = {"provider": "sim", "region": "us-east-1", "bucket": "", "read_at": now}

    def writer(n: int) -> Callable[[], str | None]:
        def write() -> str | None:
            mine = open_store(tmp_path, store_url)
            holder = mine.take_lease("chore", f"host-{n}", now=now, until=now + 60)
            for i in range(3):
                mine.block(scope, reason=f"writer {n}", until=now + 60 + i, now=now)
                mine.save_quotas([{**quota, "note": f"writer {n}"}])
                mine.set_credits("acme", float(n), now=now)
                address = f"10.0.0.{n}"
                mine.register_agent(cluster.id, 1, 0, address=address, instance_id=None, now=now)
                mine.record_sync(
                    cluster.id, 1, 0, "logs", files=1, size=10, failed=0, errors=[], final=False,
                    now=now,
                )  # fmt: skip
            mine.engine.dispose()
            return holder

        return write

    results, errors = together([writer(n) for n in range(8)])
    assert errors == []
    assert results.count(None) == 1  # one host took the free lease; the others see it
    winner = {r for r in results if r is not None}
    assert len(winner) == 1 and store.take_lease("chore", winner.pop(), now=now, until=now) is None
    blocks = store.active_blocks(now)
    assert len(blocks) == 1 and blocks[0].reason.startswith("writer ")
    assert len(store.quota_rows(provider="sim")) == 1
    assert len(store.credits()) == 1
    assert len(store.agents(cluster.id, 1)) == 1
    (totals,) = store.syncs(cluster.id)
    assert (totals["files"], totals["bytes"]) == (24, 240)  # every report counted, once


@pytest.mark.usefixtures("hermetic_environment")
def test_concurrent_provisions_on_one_fresh_database_all_finish(
    tmp_path: Path, postgres_server: Any
) -> None:
    """8 `broker provision --provider sim` processes at once on a brand-new PostgreSQL
    database, the first shape stocked out so every process blocks the same zones: no process
    crashes, every cluster runs, nothing is left QUEUED. (Before: `create_all` racing at
    start and `Store.block`'s delete-then-insert crashed some. SQLite's processes queue on
    its write lock: tests/broker/test_cluster_cli.py races them.)"""
    first, second = bundled_shape_id("aws", "us-east-1"), bundled_shape_id("aws", "us-west-2")
    (tmp_path / "scenario.toml").write_text(f'[shapes."{first}"]\ncapacity_nodes = 0\n')
    env = dict(os.environ)
    env["BROKER_STATE_DIR"] = str(tmp_path / "state")
    env["BROKER_SIM_SCENARIO"] = str(tmp_path / "scenario.toml")
    url: str = postgres_server.database("provision")
    env["BROKER_STATE_URL"] = url
    argv = [
        sys.executable, "-m", "broker.cli", "provision", "--provider", "sim", "--gpus", "8",
        "--priority", f"{first},{second}", "--strict-priority", "--json",
    ]  # fmt: skip
    procs = [
        subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(8)
    ]
    outputs = [p.communicate(timeout=240) for p in procs]
    codes = [p.returncode for p in procs]
    assert codes == [0] * 8, [err for _, err in outputs]
    assert not any("Traceback" in err for _, err in outputs)
    store = Store.open(tmp_path / "state", url)
    clusters = store.list_clusters(limit=None)
    assert len(clusters) == 8 and {c.status for c in clusters} == {Status.RUNNING}
    assert {c.shape_id for c in clusters} == {second}
    assert store.active_blocks(time.time())  # the stocked-out zones (each row written by 8)
    store.engine.dispose()

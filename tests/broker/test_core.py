"""The core made ready for a service: submit/run, leases, idempotent ends, signals, local
"not configured" facts, reconcile under concurrency, and store errors that name the store.

Each test here failed before the fix it covers (issue 10)."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from broker.api import Broker
from broker.errors import (
    BrokerError,
    Cancelled,
    Interrupted,
    InvalidRequest,
    ProvisionFailed,
    StoreError,
)
from broker.lifecycle import Status
from broker.provisioner import ProvisionPolicy
from broker.quote import QuoteRequest
from broker.ranking import RankRequest
from broker.reconcile import SWEEP_LEASE
from broker.scopes import BlockScope
from broker.settings import Settings
from broker.state import AttemptOutcome, Lease, Store
from providers.base import LaunchRequest, Node, Provider
from providers.sim import SimProvider
from shapes.catalog import load_bundled_catalog
from shapes.errors import Exit
from tests.conftest import FakeClock

CATALOG = load_bundled_catalog()
A = next(
    s.id
    for s in CATALOG.shapes
    if s.provider == "aws" and s.gpus_per_node == 8 and len(s.zones) >= 2
)


def request(gpus: int = 16, priority: tuple[str, ...] | None = (A,)) -> QuoteRequest:
    return QuoteRequest(rank=RankRequest(gpus=gpus, priority=priority))


# Tests marked so run on SQLite and on PostgreSQL (tests/conftest.py: store_backend_env
# exports the PostgreSQL store's URL as BROKER_STATE_URL; unset, the store is SQLite in state).
both_stores = pytest.mark.usefixtures("store_backend_env")


def sim_broker(state: Path, clock: Callable[[], float] = time.time, **policy: float) -> Broker:
    return Broker(
        state_dir=state,
        store_url=os.environ.get("BROKER_STATE_URL"),
        backend="sim",
        catalog=CATALOG,
        policy=ProvisionPolicy(**policy),  # type: ignore[arg-type]
        clock=clock,
        sleep=lambda _s: None,
    )


def alive(broker: Broker) -> list[Node]:
    sim = broker.provider("sim")
    if isinstance(sim, Hooked):
        sim = sim.inner
    assert isinstance(sim, SimProvider)
    return sim.all_nodes()


class Hooked:
    """The simulated cloud, with a hook that runs inside launch once the gang exists."""

    def __init__(self, inner: Provider, after_launch: Callable[[list[Node]], None]) -> None:
        self.inner = inner
        self.name = inner.name
        self.after_launch = after_launch

    def list_shapes(self) -> list[object]:
        return list(self.inner.list_shapes())

    def launch(self, request: LaunchRequest, *, timeout: float) -> list[Node]:
        nodes = self.inner.launch(request, timeout=timeout)
        self.after_launch(nodes)
        return nodes

    def describe(self, cluster_id: str) -> list[Node]:
        return self.inner.describe(cluster_id)

    def terminate(self, nodes: Sequence[Node]) -> None:
        self.inner.terminate(nodes)

    def list_tagged(self) -> list[Node]:
        return self.inner.list_tagged()


def hook(broker: Broker, after_launch: Callable[[list[Node]], None]) -> None:
    broker._providers["sim"] = Hooked(broker.provider("sim"), after_launch)  # type: ignore[assignment]


# -- submit, then run ---------------------------------------------------------------------


@both_stores
def test_submit_is_durable_and_another_broker_runs_it(tmp_path: Path) -> None:
    submitted = sim_broker(tmp_path).submit(request())
    assert submitted.status is Status.PENDING and submitted.owner is None
    worker = sim_broker(tmp_path)  # another process, say a service worker
    running = worker.run(submitted.id)
    assert running.status is Status.RUNNING and len(running.nodes) == 2
    assert running.owner is None  # a RUNNING cluster needs no owner


def test_submit_refuses_before_writing_anything(tmp_path: Path) -> None:
    broker = sim_broker(tmp_path)
    with pytest.raises(InvalidRequest):
        broker.submit(QuoteRequest(rank=RankRequest(gpus=49)))  # over the burst cap
    assert not (tmp_path / "broker.sqlite").exists()


@pytest.mark.parametrize("value", [-5.0, 0.0, math.nan, math.inf])
def test_policy_numbers_must_be_finite_and_positive(value: float) -> None:
    with pytest.raises(InvalidRequest, match="timeout"):
        ProvisionPolicy(timeout=value)


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="simm"):
        Broker(backend="simm")


def test_a_missing_scenario_is_refused_before_the_store_exists(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match=r"nope\.toml"):
        Broker(state_dir=tmp_path, backend="sim", sim_scenario=tmp_path / "nope.toml")
    assert not (tmp_path / "broker.sqlite").exists()


# -- ending: idempotent, and a provisioning someone else stopped ---------------------------


@both_stores
def test_release_and_stop_twice_return_the_finished_cluster(tmp_path: Path) -> None:
    broker = sim_broker(tmp_path)
    cluster = broker.provision(request())
    assert broker.release(cluster.id).status is Status.COMPLETED
    again = broker.release(cluster.id)
    assert again.status is Status.COMPLETED and again.version == broker.get(cluster.id).version
    assert broker.stop(cluster.id).status is Status.COMPLETED  # finished: left as it is


@both_stores
def test_stopped_by_someone_else_while_provisioning(tmp_path: Path) -> None:
    broker = sim_broker(tmp_path)
    other = sim_broker(tmp_path)
    cluster = broker.submit(request())
    hook(broker, lambda _nodes: other.stop(cluster.id))
    with pytest.raises(Cancelled) as caught:
        broker.run(cluster.id)
    assert caught.value.exit_code == Exit.CONFLICT
    assert caught.value.cluster is not None and caught.value.cluster.status is Status.STOPPED
    assert alive(broker) == []
    outcomes = [a.outcome for a in broker.attempts(cluster.id)]
    assert outcomes == [AttemptOutcome.CANCELLED]


# -- signals ------------------------------------------------------------------------------


@both_stores
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_launch_stops_the_cluster_and_removes_its_nodes(
    tmp_path: Path, signum: int
) -> None:
    broker = sim_broker(tmp_path)
    cluster = broker.submit(request())

    def interrupt(_nodes: list[Node]) -> None:
        raise KeyboardInterrupt if signum == signal.SIGINT else Interrupted(signum)

    hook(broker, interrupt)
    with pytest.raises(Interrupted) as caught:
        broker.run(cluster.id)
    assert caught.value.exit_code == 128 + signum
    stopped = broker.get(cluster.id)
    assert stopped.status is Status.STOPPED
    assert caught.value.cluster is not None and caught.value.cluster.status is Status.STOPPED
    assert alive(broker) == []
    assert [a.outcome for a in broker.attempts(cluster.id)] == [AttemptOutcome.INTERRUPTED]


# -- not configured is a local fact ---------------------------------------------------------


def test_no_cloud_configured_fails_not_configured_says_it_once_and_blocks_nothing(
    tmp_path: Path,
) -> None:
    said: list[str] = []
    settings = Settings(state_dir=tmp_path, config_path=tmp_path / "absent.toml")
    broker = Broker(settings, catalog=CATALOG, progress=said.append, sleep=lambda _s: None)
    with pytest.raises(ProvisionFailed) as caught:
        broker.provision(QuoteRequest(rank=RankRequest(gpus=2)))
    assert caught.value.cluster.reason == "NotConfigured"
    assert "no cloud is configured here" in (caught.value.cluster.detail or "")
    assert len(said) <= 10  # once per cloud, not once per plan (717 lines before)
    assert broker.blocks() == []  # fixing the configuration takes effect at once


# -- blocks ---------------------------------------------------------------------------------


@both_stores
def test_unblock_one_scope_or_all(tmp_path: Path) -> None:
    broker = sim_broker(tmp_path)
    shape = CATALOG.get(A)
    assert shape is not None
    now = time.time()
    for zone in shape.zones:
        broker.store.block(
            BlockScope.zone_of("sim", shape, zone), reason="test", until=now + 60, now=now
        )
    assert A.lower() not in {p.shape.key for p in broker.quote(request()).plans}
    keys = [b.scope.key for b in broker.blocks()]
    assert len(keys) == len(shape.zones)
    assert broker.unblock(keys[0]) == 1 and len(broker.blocks()) == len(keys) - 1
    assert broker.unblock() == len(keys) - 1 and broker.blocks() == []


def test_a_quote_reads_blocks_without_sqlalchemy(tmp_path: Path) -> None:
    import subprocess
    import sys

    broker = sim_broker(tmp_path)
    shape = CATALOG.get(A)
    assert shape is not None
    now = time.time()
    broker.store.block(BlockScope.provider_of("aws", shape), reason="test", until=now + 60, now=now)
    code = (
        "import sys; from pathlib import Path; from broker.api import Broker; "
        f"b = Broker(state_dir=Path({str(tmp_path)!r})); "
        "print(len(b.blocks())); print('sqlalchemy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "False"]


# -- leases -------------------------------------------------------------------------------


@both_stores
def test_a_live_owner_keeps_its_lease_through_a_long_launch(tmp_path: Path) -> None:
    broker = sim_broker(tmp_path, lease_seconds=0.2)
    cluster = broker.submit(request())
    reports = []

    def slow(_nodes: list[Node]) -> None:
        time.sleep(0.7)  # more than three leases long; the keeper renews every 0.05 s
        reports.append(sim_broker(tmp_path, lease_seconds=0.2).reconcile())

    hook(broker, slow)
    running = broker.run(cluster.id)
    assert running.status is Status.RUNNING
    assert reports[0].settled == [] and reports[0].terminated == []
    assert len(alive(broker)) == 2


@both_stores
def test_an_expired_lease_is_settled_by_reconcile_on_any_host(tmp_path: Path) -> None:
    clock = FakeClock()
    broker = sim_broker(tmp_path, clock=clock)
    cluster = broker.submit(request())
    broker.store.transition(
        cluster.id, Status.QUEUED, now=clock(), lease=Lease("elsewhere:1:dead", clock() + 120)
    )
    assert broker.reconcile().settled == []  # the lease is still live
    clock.now += 121
    report = broker.reconcile()
    assert report.settled == [cluster.id]
    assert (broker.get(cluster.id).status, broker.get(cluster.id).reason) == (
        Status.FAILED,
        "Orphaned",
    )


@both_stores
def test_pending_clusters_wait_for_a_worker(tmp_path: Path) -> None:
    clock = FakeClock()
    broker = sim_broker(tmp_path, clock=clock)
    cluster = broker.submit(request())
    clock.now += 10_000
    assert broker.reconcile().settled == []
    assert broker.get(cluster.id).status is Status.PENDING


# -- reconcile under concurrency and after a crash -----------------------------------------


@both_stores
def test_a_wind_down_held_by_someone_else_is_not_a_problem(tmp_path: Path) -> None:
    clock = FakeClock()
    broker = sim_broker(tmp_path, clock=clock)
    cluster = broker.provision(request())
    broker.store.transition(
        cluster.id,
        Status.TERMINATING,
        now=clock(),
        lease=Lease("another-reconcile", clock() + 120),
        ending=Status.COMPLETED,
    )
    report = broker.reconcile()
    assert report.problems == [] and report.terminated == [] and report.settled == []
    assert len(alive(broker)) == 2  # the holder terminates them, not us


@both_stores
def test_a_killed_node_lost_wind_down_is_finished_as_node_lost(tmp_path: Path) -> None:
    clock = FakeClock()
    broker = sim_broker(tmp_path, clock=clock)
    cluster = broker.provision(request(24))
    broker.store.transition(  # the first reconcile died right after writing this
        cluster.id,
        Status.TERMINATING,
        now=clock(),
        lease=Lease("dead-reconcile", clock() + 120),
        ending=Status.FAILED,
        reason="NodeLost",
        detail="rank 1 (sim-x) gone",
    )
    clock.now += 121
    report = broker.reconcile()
    ended = broker.get(cluster.id)
    assert (ended.status, ended.reason) == (Status.FAILED, "NodeLost")
    assert report.settled == [cluster.id] and len(report.terminated) == 3
    assert alive(broker) == []


@both_stores
def test_one_orphan_sweep_at_a_time(tmp_path: Path) -> None:
    broker = sim_broker(tmp_path)
    broker.provision(request())
    now = time.time()
    assert broker.store.take_lease(SWEEP_LEASE, "someone", now=now, until=now + 60) is None
    report = sim_broker(tmp_path).reconcile()
    assert report.skipped and "someone" in report.skipped[0]


@both_stores
def test_a_store_error_during_the_sweep_terminates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = sim_broker(tmp_path)
    cluster = broker.provision(request())
    real = Store.list_clusters
    calls = {"n": 0}

    def flaky(self: Store, *args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] > 1:  # the first read (what to settle) works; the sweep's fails
            raise StoreError("the store is gone for a moment")
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Store, "list_clusters", flaky)
    with pytest.raises(StoreError):
        broker.reconcile()
    monkeypatch.undo()
    assert len(alive(broker)) == 2 and broker.get(cluster.id).status is Status.RUNNING


@both_stores
def test_list_returns_the_newest_clusters(tmp_path: Path) -> None:
    clock = FakeClock(step=1.0)
    broker = sim_broker(tmp_path, clock=clock)
    ids = [broker.submit(request()).id for _ in range(5)]
    assert [c.id for c in broker.list_clusters(limit=2)] == ids[-2:]
    assert [c.id for c in broker.list_clusters(limit=None)] == ids
    assert broker.list_clusters([Status.RUNNING]) == []


# -- the store names its problems ---------------------------------------------------------


def test_state_dir_that_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(StoreError, match="is a file"):
        Store.open(target)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
def test_read_only_state_dir(tmp_path: Path) -> None:
    target = tmp_path / "ro"
    target.mkdir()
    target.chmod(0o500)
    try:
        with pytest.raises(StoreError, match="not writable"):
            Store.open(target)
    finally:
        target.chmod(0o700)


def test_a_corrupt_store_is_named_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "broker.sqlite"
    garbage = b"this is not a database" * 100
    path.write_bytes(garbage)
    with pytest.raises(StoreError, match=str(path)) as caught:
        Store.open(tmp_path)
    assert "untouched" in str(caught.value)
    assert path.read_bytes() == garbage


def test_a_zero_byte_store_is_initialised(tmp_path: Path) -> None:
    (tmp_path / "broker.sqlite").write_bytes(b"")
    Store.open(tmp_path).list_clusters()


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("not a url at all", "not a database URL"),
        ("nosuchdb://u:hunter2@localhost/x", "no SQLAlchemy dialect"),
        ("postgresql+nosuchdriver://u:hunter2@localhost/x", "no SQLAlchemy dialect"),
        ("postgresql+psycopg://u:hunter2@127.0.0.1:9/x", "127.0.0.1:9"),
        ("mysql://u:hunter2@localhost/x", "runs on PostgreSQL or SQLite, not mysql"),
    ],
)
def test_bad_state_urls_never_show_the_password(tmp_path: Path, url: str, needle: str) -> None:
    with pytest.raises(StoreError) as caught:
        Store.open(tmp_path, url)
    message = str(caught.value)
    assert needle in message and "hunter2" not in message


def test_an_old_store_gains_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "broker.sqlite"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE blocks (scope VARCHAR(400) PRIMARY KEY, reason TEXT NOT NULL, "
            "until FLOAT NOT NULL, created_at FLOAT NOT NULL)"
        )
        db.execute("INSERT INTO blocks VALUES ('sim/zone:aws:x:y:z:spot', 'old', 9e99, 0)")
    store = Store.open(tmp_path)
    assert store.active_blocks(time.time()) == []  # old-format blocks are dropped


@both_stores
def test_concurrent_renewals_and_transitions_share_one_store(tmp_path: Path) -> None:
    broker = sim_broker(tmp_path)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            b = sim_broker(tmp_path)
            b.release(b.provision(request(8)).id)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert {c.status for c in broker.list_clusters(limit=None)} == {Status.COMPLETED}


@both_stores
def test_concurrent_reconciles_and_releases_report_no_false_problems(tmp_path: Path) -> None:
    broker = sim_broker(tmp_path)
    clusters = [broker.provision(request(24)) for _ in range(4)]  # 3 nodes each
    sim = broker.provider("sim")
    for c in clusters[:2]:  # two gangs lose a node: reconcile must fail them NodeLost
        sim.terminate([n for n in sim.describe(c.id) if n.provider_id == c.nodes[0].provider_id])
    reports = []
    errors: list[BaseException] = []

    def reconcile() -> None:
        try:
            reports.append(sim_broker(tmp_path).reconcile())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def release(cluster_id: str) -> None:
        try:
            sim_broker(tmp_path).release(cluster_id)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reconcile) for _ in range(3)]
    threads += [threading.Thread(target=release, args=(c.id,)) for c in clusters[2:]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert [p for r in reports for p in r.problems] == []
    lost = sorted(cid for r in reports for cid in r.lost)
    assert lost == sorted(c.id for c in clusters[:2])  # each counted once
    terminated = [n.provider_id for r in reports for n in r.terminated]
    assert len(terminated) == len(set(terminated)) == 4  # the 2 x 2 survivors, once each
    assert alive(broker) == []
    assert {broker.get(c.id).status for c in clusters[2:]} == {Status.COMPLETED}


@both_stores
def test_sweep_does_not_count_nodes_a_release_removed_after_the_listing(tmp_path: Path) -> None:
    """The race behind a flaky count: the sweep lists the cloud, a release then ends its
    cluster (nodes confirmed gone), and only then does the sweep read what is live. Those
    nodes are not orphans of this reconcile: neither terminated again nor counted."""
    broker = sim_broker(tmp_path)
    cluster = broker.provision(request(24))
    sim = broker.provider("sim")
    real_list = sim.list_tagged
    calls = 0

    def list_then_release() -> list[Node]:
        nonlocal calls
        calls += 1
        listed = real_list()
        if calls == 1:
            sim_broker(tmp_path).release(cluster.id)  # lands between listing and reading
        return listed

    sim.list_tagged = list_then_release  # type: ignore[method-assign]
    report = broker.reconcile()
    assert report.problems == []
    assert report.terminated == []
    assert broker.get(cluster.id).status is Status.COMPLETED
    assert alive(broker) == []

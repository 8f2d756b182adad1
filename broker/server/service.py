"""The service's long-lived parts: one Broker over the store, provisioning workers that pick
up PENDING clusters, a reconcile loop, counters for /metrics, and a graceful stop.

Workers claim a cluster by moving it PENDING -> QUEUED under their server's lease in one
transaction (``Store.claim_pending``: ``FOR UPDATE SKIP LOCKED`` on PostgreSQL), so two
workers, in this process or another replica, never provision the same cluster. A server that
stops (SIGTERM) takes no new work and lets in-flight provisionings run for a grace period;
what is still in flight then keeps its lease until it expires, and the reconcile loop of this
or another server settles it and queues it again (a new cycle), so a restarted server picks
up both submitted and half-provisioned clusters. The watch loop (runs, credits, reconcile)
runs on one replica at a time: the holder of a named lease.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from broker.api import Broker
from broker.errors import BrokerError, ConflictError, Interrupted
from broker.lease import LeaseKeeper
from broker.lifecycle import FailReason, Status
from broker.runs import Ending

log = logging.getLogger("broker.server")

REQUEUE_MAX_CYCLES = 5  # a cluster orphaned this often is left FAILED (something is wrong)
WATCH_LEASE = "service-watch"  # the named lease of the replica running the watch loop


@dataclass
class ServiceOptions:
    workers: int = 4
    reconcile_every: float = 30.0  # seconds between reconcile passes
    poll_every: float = 1.0  # seconds a idle worker waits before looking for work again
    grace: float = 20.0  # seconds in-flight provisionings get to finish on stop


@dataclass
class Counters:
    """In-process counters for /metrics (per replica; gauges come from the store)."""

    requests: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    provisions: Counter[str] = field(default_factory=Counter)  # outcome: RUNNING / reason
    lock: threading.Lock = field(default_factory=threading.Lock)

    def request(self, method: str, route: str, status: int) -> None:
        with self.lock:
            self.requests[(method, route, status)] += 1

    def provision(self, outcome: str) -> None:
        with self.lock:
            self.provisions[outcome] += 1


class Service:
    """Owns the Broker and the background threads of one server process."""

    def __init__(self, broker: Broker, options: ServiceOptions | None = None) -> None:
        self.broker = broker
        self.options = options or ServiceOptions()
        self.counters = Counters()
        self.started = time.time()
        self._stop = threading.Event()
        self._wake = threading.Condition()  # a submission wakes one idle worker, not all
        self._wakes = 0  # wake-ups not taken yet (at most one per worker)
        self._threads: list[threading.Thread] = []
        self._busy: set[str] = set()
        self._finishing: set[str] = set()
        self._busy_lock = threading.Lock()
        self.last_reconcile: float | None = None
        self.leading = False  # this replica holds the watch lease (runs the watch loop)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        for i in range(self.options.workers):
            self._spawn(f"worker-{i}", self._work)
        if self.options.reconcile_every > 0:
            self._spawn("reconcile", self._reconcile_loop)

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        t = threading.Thread(target=target, name=f"broker-{name}", daemon=True)
        t.start()
        self._threads.append(t)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def begin_stop(self) -> None:
        """Take no new work from now on (/readyz answers 503); in-flight work goes on."""
        self._stop.set()
        with self._wake:
            self._wake.notify_all()

    def stop(self, grace: float | None = None) -> list[str]:
        """Take no new work; wait up to ``grace`` seconds for in-flight provisionings and
        wind-downs (stops, endings, recoveries). Returns the clusters still provisioning
        (their leases hand them on, as they do the wind-downs left)."""
        self.begin_stop()
        deadline = time.monotonic() + (self.options.grace if grace is None else grace)
        for t in self._threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        with self._busy_lock:
            left = sorted(self._busy)
        if left:
            log.warning(
                "stopping with %d provisioning(s) in flight (%s): their leases expire and "
                "a reconcile queues them again",
                len(left),
                ", ".join(left),
            )
        for t in list(self.broker.winding):  # wind-downs: stops, endings, recoveries
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        winding = sorted(self.broker.winding.values())
        if winding:
            log.warning(
                "stopping with %d wind-down(s) in flight (%s): their leases expire and a "
                "reconcile finishes them as they were meant",
                len(winding),
                ", ".join(winding),
            )
        return left

    def wake(self) -> None:
        """A cluster was submitted: let one idle worker look now (each submission wakes
        one, so a burst of them wakes as many as there are; the others keep polling)."""
        with self._wake:
            self._wakes = min(self._wakes + 1, max(1, self.options.workers))
            self._wake.notify()

    def _idle(self) -> None:
        """Wait for a wake-up, or ``poll_every`` (another replica's submissions, leases)."""
        with self._wake:
            if self._wakes == 0 and not self._stop.is_set():
                self._wake.wait(self.options.poll_every)
            if self._wakes:
                self._wakes -= 1

    # -- workers --------------------------------------------------------------------------------

    def _claim(self) -> str | None:
        """The oldest PENDING cluster, claimed for this worker: QUEUED under this server's
        lease in one transaction (``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL), so
        no other worker or replica takes it."""
        broker = self.broker
        now = broker.clock()
        try:
            claimed = broker.store.claim_pending(
                broker.owner, now + broker.policy.lease_seconds, 1, now=now
            )
        except BrokerError as exc:
            log.warning("cannot claim pending clusters: %s", exc)
            return None
        if not claimed:
            return None
        with self._busy_lock:
            self._busy.add(claimed[0].id)
        return claimed[0].id

    def _work(self) -> None:
        while not self._stop.is_set():
            cluster_id = self._claim()
            if cluster_id is None:
                self._idle()
                continue
            try:
                # The claim's lease is kept from now on: before the provisioner's own keeper
                # starts, ranking and a first run's imports can take longer than a lease
                # (reconcile then settled it Orphaned under a loaded host).
                with self._keeping(cluster_id):
                    self.run_one(cluster_id)
            finally:
                with self._busy_lock:
                    self._busy.discard(cluster_id)

    def _keeping(self, cluster_id: str) -> LeaseKeeper:
        broker = self.broker
        return LeaseKeeper(
            broker.store, cluster_id, broker.owner, broker.policy.lease_seconds, broker.clock
        )

    def run_one(self, cluster_id: str) -> None:
        """Provision one PENDING cluster; every outcome is recorded in the store."""
        try:
            cluster = self.broker.run(cluster_id)
            self.counters.provision(cluster.status.value)
        except ConflictError:
            return  # another worker or replica took it, or someone stopped it first
        except BrokerError as exc:
            failed = getattr(exc, "cluster", None)
            reason = getattr(failed, "reason", None) or type(exc).__name__
            self.counters.provision(str(reason))
            log.info("cluster %s: %s", cluster_id, exc)
        except Interrupted:
            raise
        except Exception:  # a bug: keep the worker alive, say which cluster
            self.counters.provision("Error")
            log.exception("cluster %s: unexpected error while provisioning", cluster_id)

    # -- runs: ending clusters as their agents decide, noticing silent agents --------------------

    def finish(self, ending: Ending) -> None:
        """End a cluster in the background (terminating nodes takes a while); one thread
        per cluster at a time."""
        with self._busy_lock:
            if ending.cluster_id in self._finishing:
                return
            self._finishing.add(ending.cluster_id)

        def run() -> None:
            try:
                ended = self.broker.finish(ending)
                if ended.status is Status.PENDING:  # recovered: its next cycle needs a worker
                    self.counters.provision(f"run:recovered:{ending.reason}")
                    self.wake()
                else:
                    self.counters.provision(f"run:{ending.reason or ending.final.value}")
            finally:
                with self._busy_lock:
                    self._finishing.discard(ending.cluster_id)

        self.broker.aside(ending.cluster_id, run, "finish")  # logs what goes wrong

    def watch_runs(self) -> None:
        """End RUNNING clusters whose agents' exits decided their end (a safety net: the exit
        call decides it at once), fail those whose agents went silent (NodeLost), and stop
        those past their run-time limit (``max_hours``: STOPPED "run-time limit")."""
        from broker.env import max_hours_of
        from broker.runs import command_of, lost_agents, outcome, over_time

        now = self.broker.clock()
        policy = self.broker.run_policy
        try:
            running = [
                c
                for c in self.broker.store.list_clusters({Status.RUNNING})
                if command_of(c) is not None
            ]
            store = self.broker.store
            agents_of = store.agents_of(running)  # one query for all of them
            limited = [c.id for c in running if max_hours_of(c) is not None]
            history_of = store.transitions_of(limited) if limited else {}  # and one for these
            for cluster in running:
                agents = agents_of[cluster.id]
                ending = outcome(cluster, agents) or lost_agents(cluster, agents, now, policy)
                if ending is None and cluster.id in history_of:
                    ending = over_time(cluster, history_of[cluster.id], now)
                if ending is not None:
                    self.finish(ending)
        except BrokerError as exc:
            log.warning("cannot watch runs: %s", exc)

    def watch_credits(self) -> None:
        """Stop every live experiment of an organisation whose credits ran out (all together:
        broker.credits says why), STOPPED "credits exhausted"."""
        from broker.credits import credit_status
        from broker.lifecycle import LIVE
        from broker.runs import Ending

        now = self.broker.clock()
        try:
            for org in self.broker.store.credits():
                status = credit_status(self.broker.store, org, now)
                if status is None or status.remaining > 0:
                    continue
                detail = (
                    f"credits exhausted: ${status.granted:,.2f} granted to {org!r}, "
                    f"${status.spent:,.2f} spent"
                )
                for cluster in self.broker.store.list_clusters(LIVE, org=org):
                    log.warning("cluster %s: %s", cluster.id, detail)
                    self.finish(Ending(cluster.id, Status.STOPPED, None, detail))
        except BrokerError as exc:
            log.warning("cannot watch credits: %s", exc)

    # -- reconcile ------------------------------------------------------------------------------

    def _reconcile_loop(self) -> None:
        """Every ``reconcile_every`` seconds, on one replica at a time (the holder of the
        named lease ``service-watch``): runs, credits, then a reconcile pass. The holder
        renews it each pass; when it dies, another replica takes over once it expires."""
        try:
            while not self._stop.wait(self.options.reconcile_every):
                if not self.lead():
                    continue
                self.watch_runs()
                self.watch_credits()
                self.reconcile_once()
        finally:
            self.resign()

    def lead(self) -> bool:
        """Take or renew the watch lease: True when this replica runs the watch loop now."""
        broker = self.broker
        now = broker.clock()
        ttl = 2 * self.options.reconcile_every + broker.policy.lease_seconds
        try:
            holder = broker.store.take_lease(WATCH_LEASE, broker.owner, now=now, until=now + ttl)
        except BrokerError as exc:
            log.warning("cannot take the watch lease: %s", exc)
            return False
        if holder is not None:
            if self.leading:
                log.info("the watch loop moved to another replica (%s)", holder)
            self.leading = False
            return False
        if not self.leading:
            log.info("this replica runs the watch and reconcile loop now")
        self.leading = True
        return True

    def resign(self) -> None:
        """Give the watch lease up (a graceful stop): another replica takes it at once."""
        if not self.leading:
            return
        self.leading = False
        try:
            self.broker.store.drop_lease(WATCH_LEASE, self.broker.owner)
        except BrokerError as exc:
            log.warning("cannot give the watch lease up: %s", exc)

    def reconcile_once(self) -> None:
        """One reconcile pass; clusters of the service orphaned while provisioning (their
        server died or stopped) are queued again as a new cycle."""
        try:
            report = self.broker.reconcile(hand_off=self.finish)  # a lost gang drains aside
            self.last_reconcile = time.time()
        except BrokerError as exc:
            log.warning("reconcile failed: %s", exc)
            return
        for problem in report.problems:
            log.warning("reconcile: %s", problem)
        for cluster_id in report.settled:
            self._requeue_orphan(cluster_id)
        if report.settled or report.recovered:
            self.wake()

    def _requeue_orphan(self, cluster_id: str) -> None:
        try:
            cluster = self.broker.get(cluster_id)
            if (
                cluster.org is None
                or cluster.status is not Status.FAILED
                or cluster.reason != FailReason.ORPHANED.value
                or cluster.cycle >= REQUEUE_MAX_CYCLES
            ):
                return
            self.broker.requeue(cluster_id)
            log.info("cluster %s: orphaned while provisioning; queued again", cluster_id)
        except BrokerError as exc:
            log.warning("cluster %s: cannot queue it again: %s", cluster_id, exc)


__all__ = ["Counters", "Service", "ServiceOptions"]

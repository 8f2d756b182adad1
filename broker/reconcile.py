"""Reconciliation: make the store and the clouds agree, from any process, at any time.

1. Clusters whose owner's lease ran out (its process died, its host was lost) are settled:
   QUEUED/STARTING ones are wound down FAILED ``Orphaned``; a TERMINATING one is finished
   with the status and reason its wind-down had written down (NodeLost stays NodeLost),
   its commands' stop and final sync included (in the background in the service).
2. RUNNING gangs that lost a node (spot preemption, a crash) are wound down FAILED
   ``NodeLost``: a gang with a hole is useless and the rest still bills. An experiment with a
   recovery left is queued again as its next cycle instead (broker.recovery); the service
   runs this every ``reconcile_every`` seconds, which bounds how long a vanished node goes
   unnoticed when its agent could not say so.
3. Every tagged node of this deployment that no live cluster owns is terminated, on every
   enabled cloud. One reconcile sweeps at a time (a named lease), so concurrent runs never
   double-count; a cluster someone else is already winding down is not a problem.

What is live is read once, after the clouds were listed: a store error stops the sweep
(nothing is terminated on a guess), and PENDING clusters wait for a worker untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from broker.errors import BrokerError, ConflictError
from broker.lifecycle import FailReason, Status
from broker.runs import Ending, command_of
from broker.teardown import WindDown
from providers.base import TAG_BROKER, Node, NodeState
from providers.errors import ProviderError

if TYPE_CHECKING:
    from broker.api import Broker
    from broker.state import ClusterRecord

SWEEP_LEASE = "reconcile-sweep"
SETTLED = frozenset({Status.QUEUED, Status.STARTING, Status.TERMINATING})


@dataclass
class ReconcileReport:
    terminated: list[Node] = field(default_factory=list)
    settled: list[str] = field(default_factory=list)  # clusters whose owner's lease expired
    lost: list[str] = field(default_factory=list)  # RUNNING clusters that lost a node: FAILED
    recovered: list[str] = field(default_factory=list)  # ... queued again as their next cycle
    handed: list[str] = field(default_factory=list)  # ... ended or recovered in the background
    problems: list[str] = field(default_factory=list)  # what could not be checked or removed
    skipped: list[str] = field(default_factory=list)  # work another reconcile is doing


class Reconciler:
    def __init__(self, broker: Broker, hand_off: Callable[[Ending], None] | None = None) -> None:
        self.broker = broker
        self.hand_off = hand_off  # ends a lost experiment in the background (the service)
        self.store = broker.store
        self.report = ReconcileReport()
        self._present: dict[str, set[str]] = {}  # cloud -> its RUNNING nodes, this pass

    def run(self) -> ReconcileReport:
        now = self.broker.clock()
        for cluster in self.store.list_clusters(SETTLED | {Status.RUNNING}):
            try:
                if cluster.status is Status.RUNNING:
                    self._check_gang(cluster)
                elif not cluster.lease_live(now):
                    self._settle(cluster)
            except ConflictError:
                continue  # someone else moved it first (another reconcile, a release)
            except BrokerError as exc:
                self.report.problems.append(f"{cluster.id}: {exc}")
        self._sweep()
        return self.report

    def _end(self, cluster: ClusterRecord, how: WindDown) -> None:
        """Wind it down as ``Broker.stop`` does: an experiment's commands are stopped and
        their artifacts get the final sync first, and its node tokens are revoked before the
        final status is written."""
        _, removed = self.broker._wind_down(cluster, how)
        self.report.terminated.extend(removed)

    def _how(self, final: Status, reason: str | None, detail: str | None) -> WindDown:
        return WindDown(
            final, self.broker.owner, self.broker.policy.lease_seconds, reason=reason, detail=detail
        )

    def _running_nodes(self, cluster: ClusterRecord) -> set[str] | None:
        """The ids of the RUNNING nodes of the cluster's cloud: one listing per cloud and
        pass, however many gangs it runs (None: no cloud to ask)."""
        name = cluster.backend or cluster.provider
        if not name:
            return None
        if name not in self._present:
            provider = self.broker.provider(name)
            self._present[name] = {
                n.provider_id for n in provider.list_tagged() if n.state is NodeState.RUNNING
            }
        return self._present[name]

    def _check_gang(self, cluster: ClusterRecord) -> None:
        present = self._running_nodes(cluster)
        if present is None:
            return
        lost = [n for n in cluster.nodes if n.provider_id not in present]
        if not lost:
            return
        detail = ", ".join(f"rank {n.rank} ({n.provider_id})" for n in lost) + " gone"
        if command_of(cluster) is not None:  # an experiment: recovered if it has a recovery left
            ending = Ending(cluster.id, Status.FAILED, FailReason.NODE_LOST.value, detail)
            if self.hand_off is not None:  # its agents' drain takes a while: not in this pass
                self.hand_off(ending)
                self.report.handed.append(cluster.id)
                return
            ended = self.broker.finish(ending)
            if ended.status is Status.PENDING:
                self.report.recovered.append(cluster.id)
                return
        else:
            self._end(cluster, self._how(Status.FAILED, FailReason.NODE_LOST.value, detail))
        self.report.lost.append(cluster.id)

    def _settle(self, cluster: ClusterRecord) -> None:
        if cluster.status is Status.TERMINATING and cluster.ending is not None:
            if self.hand_off is not None and command_of(cluster) is not None:
                # its owner died while the commands stopped and synced: that goes on aside
                self.hand_off(Ending(cluster.id, cluster.ending, cluster.reason, cluster.detail))
                self.report.settled.append(cluster.id)
                return
            how = self._how(cluster.ending, cluster.reason, cluster.detail)  # finish it as meant
        else:
            detail = f"its owner ({cluster.owner or 'none'}) stopped renewing its lease"
            how = self._how(Status.FAILED, FailReason.ORPHANED.value, detail)
        self._end(cluster, how)
        self.report.settled.append(cluster.id)

    def _sweep(self) -> None:
        broker = self.broker
        now = broker.clock()
        holder = self.store.take_lease(
            SWEEP_LEASE, broker.owner, now=now, until=now + broker.policy.lease_seconds
        )
        if holder is not None:
            self.report.skipped.append(f"orphan sweep: another reconcile ({holder}) is sweeping")
            return
        try:
            for name in broker.sweep_backends():
                try:
                    provider = broker.provider(name)
                    tagged = provider.list_tagged()
                except ProviderError as exc:
                    self.report.problems.append(f"{name}: cannot list tagged nodes: {exc}")
                    continue
                # Only this deployment's nodes: another broker in the same account owns its own.
                mine = [n for n in tagged if n.tags.get(TAG_BROKER) == broker.policy.deployment]
                if not mine:
                    continue
                owners = {c.id: c for c in self.store.list_clusters(SETTLED | {Status.RUNNING})}
                orphans = [n for n in mine if not _owned(n, owners, broker.clock())]
                if not orphans:
                    continue
                try:
                    # A release may have ended its cluster between the listing and the read
                    # of what is live: its nodes were confirmed gone before it ended, so a
                    # second listing drops them (they are not ours to count or terminate).
                    orphans = _still_there(orphans, provider.list_tagged())
                    if not orphans:
                        continue
                    provider.terminate(orphans)
                    self.report.terminated.extend(orphans)
                except ProviderError as exc:
                    self.report.problems.append(
                        f"{name}: cannot terminate {len(orphans)} node(s): {exc}"
                    )
        finally:
            self.store.drop_lease(SWEEP_LEASE, broker.owner)


def _still_there(candidates: list[Node], now_listed: list[Node]) -> list[Node]:
    present = {n.provider_id for n in now_listed}
    return [n for n in candidates if n.provider_id in present]


def _owned(node: Node, live: dict[str, ClusterRecord], now: float) -> bool:
    """Does a live cluster own this node? Unknown or finished clusters own nothing; a
    cluster someone holds (provisioning, winding down) owns every node it is tagged on."""
    cluster = live.get(node.cluster_id or "")
    if cluster is None:
        return False
    if cluster.status is Status.RUNNING:
        return any(n.provider_id == node.provider_id for n in cluster.nodes)
    return cluster.lease_live(now)


__all__ = ["ReconcileReport", "Reconciler"]

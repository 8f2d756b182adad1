"""The Broker: what a scheduler (and the CLI) calls. One object per state directory.

broker = Broker(backend="sim")                     # or Broker() for the real clouds
cluster = broker.provision(QuoteRequest(rank=RankRequest(gpus=16)))
env = broker.env(cluster.id, rank=0)
broker.release(cluster.id)                         # -> COMPLETED
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from broker.env import node_env
from broker.lifecycle import LIVE, TERMINAL, FailReason, Status
from broker.provisioner import (
    Progress,
    Provisioner,
    ProvisionFailed,
    ProvisionPolicy,
    blocked_shapes,
    owner_id,
    terminate_cluster_nodes,
)
from broker.quote import Quote, QuoteRequest, quote
from broker.state import (
    AttemptRecord,
    ClusterRecord,
    ConflictError,
    Store,
    TransitionRecord,
    default_state_dir,
)
from providers.base import TAG_BROKER, Node, NodeState, Provider
from providers.config import BrokerConfig, load_config
from providers.errors import ProviderError
from providers.registry import SIMULATED, open_provider
from providers.sim import DB_FILENAME as SIM_DB_FILENAME
from shapes.catalog import Catalog, load_catalog
from shapes.model import Shape

BILLED = frozenset({Status.STARTING, Status.RUNNING, Status.TERMINATING})
OWNER_LEASE = 600.0  # seconds without a heartbeat after which another host's owner is dead


class Usage(NamedTuple):
    gpu_hours: float
    cost: float


def accrue(history: Sequence[TransitionRecord], now: float) -> Usage:
    """GPU-hours and cost from entering STARTING to leaving TERMINATING, every cycle."""
    gpu_hours = cost = 0.0
    for i, t in enumerate(history):
        if t.status not in BILLED:
            continue
        end = history[i + 1].at if i + 1 < len(history) else now
        hours = max(0.0, end - t.at) / 3600.0
        gpu_hours += hours * (t.gpus_billed or 0)
        cost += hours * (t.price_per_hour or 0.0)
    return Usage(gpu_hours, cost)


@dataclass(frozen=True)
class ClusterReport:
    cluster: ClusterRecord
    transitions: list[TransitionRecord]
    attempts: list[AttemptRecord]
    usage: Usage


@dataclass
class ReconcileReport:
    terminated: list[Node] = field(default_factory=list)
    settled: list[str] = field(default_factory=list)  # clusters whose dead owner left them live
    lost: list[str] = field(default_factory=list)  # RUNNING clusters that lost a node: FAILED
    problems: list[str] = field(default_factory=list)  # what could not be checked or removed


def owner_alive(owner: str | None, updated_at: float, now: float) -> bool:
    """Is the process that owns a provisioning still there? Same host: ask the kernel;
    another host: trust its heartbeat for OWNER_LEASE seconds."""
    if not owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname():
        return now - updated_at < OWNER_LEASE
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


class Broker:
    """Quotes, provisions and tracks clusters; all state lives in one store."""

    def __init__(
        self,
        *,
        state_dir: Path | None = None,
        store_url: str | None = None,
        backend: str | None = None,
        sim_scenario: str | os.PathLike[str] | None = None,
        catalog: Catalog | None = None,
        config: BrokerConfig | None = None,
        policy: ProvisionPolicy | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        progress: Progress | None = None,
    ) -> None:
        self.state_dir = state_dir or default_state_dir()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store.open(self.state_dir, store_url)
        self.catalog = catalog or load_catalog()
        self.config = config if config is not None else load_config()
        self.backend = backend  # "sim": the simulated cloud serves every shape
        self.sim_scenario = sim_scenario or os.environ.get("BROKER_SIM_SCENARIO")
        self.policy = policy or ProvisionPolicy()
        self.clock = clock
        self.sleep = sleep
        self.progress = progress
        self._providers: dict[str, Provider] = {}

    # -- providers ----------------------------------------------------------------------------

    def provider(self, name: str) -> Provider:
        if name not in self._providers:
            self._providers[name] = open_provider(
                name,
                state_dir=self.state_dir,
                catalog=self.catalog,
                config=self.config,
                sim_scenario=self.sim_scenario,
            )
        return self._providers[name]

    def _backend_of(self, backend: str | None) -> Callable[[Shape], str]:
        """Which adapter serves a shape: the simulated cloud for every shape, or its own."""
        return lambda shape: backend or shape.provider

    def _cluster_provider(self, cluster: ClusterRecord) -> Provider | None:
        name = cluster.backend or cluster.provider
        return self.provider(name) if name else None

    # -- quoting and provisioning -------------------------------------------------------------

    def _unavailable(self, backend: str | None) -> dict[str, str]:
        """Shapes that cannot be tried on ``backend`` (None: the real clouds): recent
        failures block them, or their region is not among a configured cloud's regions."""
        blocks = {k: b.reason for k, b in self.store.active_blocks(self.clock()).items()}
        backend_of = self._backend_of(backend)
        out = blocked_shapes(self.catalog.shapes, blocks, backend_of) if blocks else {}
        if backend is None:
            for shape in self.catalog.shapes:
                regions = self.config.regions(shape.provider)
                if regions is not None and shape.region not in regions:
                    out.setdefault(
                        shape.key, f"region {shape.region} is not in [{shape.provider}] regions"
                    )
        return out

    def quote(self, request: QuoteRequest, *, explain: bool = False) -> Quote:
        """Rank and price, leaving out shapes known to be unavailable now."""
        unavailable = self._unavailable(self.backend)
        return quote(request, self.catalog, unavailable=unavailable, explain=explain)

    def provision(
        self, request: QuoteRequest, *, experiment: Mapping[str, Any] | None = None
    ) -> ClusterRecord:
        """Bring up a whole cluster; raise ProvisionFailed (cluster FAILED) if none can be had."""
        ranked = self.quote(request)
        cluster = self.store.create_cluster(
            f"bb-{uuid.uuid4().hex[:12]}",
            request=request.model_dump(mode="json"),
            experiment=experiment,
            backend=self.backend,
            owner=owner_id(),
            now=self.clock(),
        )
        return self._run(cluster.id, ranked, self.backend)

    def _run(self, cluster_id: str, ranked: Quote, backend: str | None) -> ClusterRecord:
        if self.progress:
            self.progress(f"cluster {cluster_id}: {len(ranked.plans)} candidate plan(s)")
        backend_of = self._backend_of(backend)
        provisioner = Provisioner(
            self.store,
            lambda shape: self.provider(backend_of(shape)),
            backend_of=backend_of,
            policy=self.policy,
            clock=self.clock,
            sleep=self.sleep,
            progress=self.progress,
        )
        return provisioner.run(cluster_id, list(ranked.plans))

    def restart(self, cluster_id: str) -> ClusterRecord:
        """Run a finished cluster's lifecycle again, as a new cycle, on the backend it was
        provisioned on; its history is kept."""
        cluster = self.store.find(cluster_id)
        self.store.transition(
            cluster.id, Status.PENDING, now=self.clock(), expect=TERMINAL, owner=owner_id()
        )
        request = QuoteRequest.model_validate(cluster.request)
        unavailable = self._unavailable(cluster.backend)
        ranked = quote(request, self.catalog, unavailable=unavailable)
        return self._run(cluster.id, ranked, cluster.backend)

    # -- tracking -----------------------------------------------------------------------------

    def get(self, cluster_id: str) -> ClusterRecord:
        return self.store.find(cluster_id)

    def list_clusters(self, statuses: Sequence[Status] | None = None) -> list[ClusterRecord]:
        return self.store.list_clusters(statuses)

    def describe(self, cluster_id: str) -> ClusterReport:
        cluster = self.store.find(cluster_id)
        history = self.store.transitions(cluster.id)
        return ClusterReport(
            cluster, history, self.store.attempts(cluster.id), accrue(history, self.clock())
        )

    def env(self, cluster_id: str, rank: int) -> dict[str, str]:
        return node_env(self.store.find(cluster_id), rank)

    def util(self) -> dict[str, dict[str, float]]:
        """GPUs starting and running, and spend per hour, per provider (or backend)."""
        out: dict[str, dict[str, float]] = defaultdict(
            lambda: {"gpus_starting": 0, "gpus_running": 0, "clusters": 0, "spend_per_hour": 0.0}
        )
        for c in self.store.list_clusters([Status.STARTING, Status.RUNNING, Status.TERMINATING]):
            key = f"{c.backend}:{c.provider}" if c.backend else str(c.provider)
            row = out[key]
            row["clusters"] += 1
            row["gpus_starting" if c.status is Status.STARTING else "gpus_running"] += (
                c.gpus_billed or 0
            )
            row["spend_per_hour"] += c.price_per_hour or 0.0
        return dict(out)

    # -- ending clusters ----------------------------------------------------------------------

    def release(self, cluster_id: str) -> ClusterRecord:
        """The owner is done: terminate the nodes, then COMPLETED."""
        return self._end(cluster_id, Status.COMPLETED)

    def stop(self, cluster_id: str) -> ClusterRecord:
        """Stop before completion (also cancels a provisioning in flight): STOPPED."""
        return self._end(cluster_id, Status.STOPPED)

    def _end(self, cluster_id: str, final: Status) -> ClusterRecord:
        cluster = self.store.find(cluster_id)
        if final is Status.COMPLETED:
            startable = {Status.RUNNING, Status.TERMINATING}  # only a running cluster completes
        else:
            startable = {Status.PENDING, Status.QUEUED, Status.STARTING, Status.RUNNING}
            startable.add(Status.TERMINATING)
        if cluster.status not in startable:
            verb = "release" if final is Status.COMPLETED else "stop"
            raise ConflictError(f"cluster {cluster.id} is {cluster.status.value}; cannot {verb} it")
        return self._wind_down(cluster, final)[0]

    def _wind_down(
        self,
        cluster: ClusterRecord,
        final: Status,
        *,
        reason: str | None = None,
        detail: str | None = None,
    ) -> tuple[ClusterRecord, list[Node]]:
        """Take a live cluster to ``final``: through TERMINATING when it may have nodes,
        which are terminated and confirmed gone first. Returns it and the nodes removed."""
        now = self.clock()
        if cluster.status in (Status.PENDING, Status.QUEUED):
            ended = self.store.transition(
                cluster.id,
                final,
                now=now,
                expect={Status.PENDING, Status.QUEUED},
                reason=reason,
                detail=detail,
            )
            return ended, []
        if cluster.status in (Status.RUNNING, Status.STARTING):
            cluster = self.store.transition(
                cluster.id,
                Status.TERMINATING,
                now=now,
                expect={cluster.status},
                owner=owner_id(),
            )
        provider = self._cluster_provider(cluster)
        removed = (
            terminate_cluster_nodes(cluster.id, provider, sleep=self.sleep) if provider else []
        )
        ended = self.store.transition(
            cluster.id,
            final,
            now=self.clock(),
            expect={Status.TERMINATING},
            reason=reason,
            detail=detail,
        )
        return ended, removed

    def delete(self, cluster_id: str) -> None:
        """Forget a finished cluster (COMPLETED, STOPPED or FAILED only)."""
        cluster = self.store.find(cluster_id)
        self.store.delete_cluster(cluster.id, allowed=TERMINAL)

    # -- reconciliation -----------------------------------------------------------------------

    def _backends_in_use(self) -> set[str]:
        """Every cloud the configuration enables (a node may be there even when the store
        has forgotten its cluster, or never knew it), every backend a stored cluster used,
        and the simulated cloud once it exists."""
        names = {c.backend or c.provider for c in self.store.list_clusters()}
        names.update(self.config.broker.providers)
        if (self.state_dir / SIM_DB_FILENAME).exists() or self.backend == SIMULATED:
            names.add(SIMULATED)
        return {n for n in names if n}

    def reconcile(self) -> ReconcileReport:
        """Settle clusters whose provisioning process died, and terminate every tagged node
        that no live cluster owns. Safe to run at any time, from any process."""
        report = ReconcileReport()
        now = self.clock()
        for cluster in self.store.list_clusters(LIVE | {Status.TERMINATING}):
            try:
                if cluster.status is Status.RUNNING:
                    self._check_gang(cluster, report)
                elif not owner_alive(cluster.owner, cluster.updated_at, now):
                    self._settle(cluster, report)
            except (ProviderError, RuntimeError, ConflictError) as exc:
                report.problems.append(f"{cluster.id}: {exc}")
        for name in sorted(self._backends_in_use()):
            try:
                provider = self.provider(name)
                tagged = provider.list_tagged()
            except ProviderError as exc:
                report.problems.append(f"{name}: cannot list tagged nodes: {exc}")
                continue
            # Only this deployment's nodes: another broker in the same account owns its own.
            mine = [n for n in tagged if n.tags.get(TAG_BROKER) == self.policy.deployment]
            orphans = [n for n in mine if not self._owned(n, now)]
            if orphans:
                try:
                    provider.terminate(orphans)
                    report.terminated.extend(orphans)
                except ProviderError as exc:
                    report.problems.append(
                        f"{name}: cannot terminate {len(orphans)} node(s): {exc}"
                    )
        return report

    def _check_gang(self, cluster: ClusterRecord, report: ReconcileReport) -> None:
        """A gang that lost a node (spot preemption, a crash) is useless and still bills:
        terminate the rest and fail the cluster with NodeLost."""
        provider = self._cluster_provider(cluster)
        if provider is None:
            return
        present = {
            n.provider_id for n in provider.describe(cluster.id) if n.state is NodeState.RUNNING
        }
        lost = [n for n in cluster.nodes or [] if n["provider_id"] not in present]
        if not lost:
            return
        detail = ", ".join(f"rank {n['rank']} ({n['provider_id']})" for n in lost) + " gone"
        _, removed = self._wind_down(
            cluster, Status.FAILED, reason=FailReason.NODE_LOST.value, detail=detail
        )
        report.terminated.extend(removed)
        report.lost.append(cluster.id)

    def _settle(self, cluster: ClusterRecord, report: ReconcileReport) -> None:
        """A cluster whose provisioning (or releasing) process died: remove its nodes, FAILED."""
        detail = f"its owning process ({cluster.owner}) died; settled by reconcile"
        _, removed = self._wind_down(
            cluster, Status.FAILED, reason=FailReason.ORPHANED.value, detail=detail
        )
        report.terminated.extend(removed)
        report.settled.append(cluster.id)

    def _owned(self, node: Node, now: float) -> bool:
        """Does a live cluster own this node? Unknown or finished clusters own nothing."""
        cluster_id = node.cluster_id
        if cluster_id is None:
            return False
        try:
            cluster = self.store.get(cluster_id)
        except Exception:
            return False
        if cluster.status is Status.RUNNING:
            return any(n["provider_id"] == node.provider_id for n in cluster.nodes or [])
        if cluster.status in (Status.PENDING, Status.QUEUED, Status.STARTING):
            return owner_alive(cluster.owner, cluster.updated_at, now)
        return False


__all__ = ["Broker", "ClusterReport", "ProvisionFailed", "ReconcileReport", "Usage", "accrue"]

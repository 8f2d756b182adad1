"""Taking a cluster down: terminate its nodes, confirm they are gone, record the end.

Shared by release/stop (broker.api), reconcile (broker.reconcile) and an interrupted
provisioning (broker.provisioner). A wind-down goes through TERMINATING, where the final
status it heads for is written down first (``ending``), so a wind-down whose process dies
half-way is finished by reconcile with the same status and reason (NodeLost stays NodeLost).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from broker.errors import TeardownFailed
from broker.lease import LeaseKeeper
from broker.lifecycle import Status
from broker.state import ClusterRecord, Lease, Store
from providers.base import Node, Provider
from providers.errors import TransientError


def terminate_cluster_nodes(
    cluster_id: str,
    provider: Provider,
    *,
    attempts: int = 4,
    sleep: Callable[[float], None] = time.sleep,
    only: Callable[[Node], bool] | None = None,
) -> list[Node]:
    """Terminate every node tagged with the cluster (or those ``only`` keeps), confirm none
    is left, and return them. Transient errors are retried; TeardownFailed if some linger."""
    nodes = [n for n in provider.describe(cluster_id) if only is None or only(n)]
    if not nodes:
        return []
    for call in Retrying(
        retry=retry_if_exception_type(TransientError),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential_jitter(initial=1, max=20),
        sleep=sleep,
        reraise=True,
    ):
        with call:
            provider.terminate(nodes)
    ids = {n.provider_id for n in nodes}
    left = [n for n in provider.describe(cluster_id) if n.provider_id in ids]
    if left:
        raise TeardownFailed(
            f"{len(left)} node(s) of {cluster_id} still alive after terminate: "
            + ", ".join(n.provider_id for n in left)
            + " (run `broker reconcile` once the cloud answers)"
        )
    return nodes


@dataclass(frozen=True)
class WindDown:
    """How to end one cluster: its final status, why, and who does it."""

    final: Status
    owner: str
    lease_seconds: float
    reason: str | None = None
    detail: str | None = None


def wind_down(
    store: Store,
    cluster: ClusterRecord,
    how: WindDown,
    provider: Provider | None,
    *,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    before_terminate: Callable[[ClusterRecord], None] | None = None,
    after_terminate: Callable[[ClusterRecord], None] | None = None,
    aside: Callable[[Callable[[], object]], None] | None = None,
) -> tuple[ClusterRecord, list[Node]]:
    """Take a live (or TERMINATING) cluster to ``how.final``: through TERMINATING when it
    may have nodes, which are terminated and confirmed gone first. ``after_terminate`` runs
    once they are gone, before the final status is written (e.g. revoking the nodes'
    tokens: nobody may see the end while they still work). Returns the ended cluster and
    the nodes removed. ConflictError if someone else moved it meanwhile.

    ``aside``: once TERMINATING is written (under this owner's lease), the rest (drain,
    terminate, final status) is handed to it to run elsewhere, e.g. a thread, and the
    TERMINATING cluster is returned at once with no node removed yet."""

    def settle(from_: ClusterRecord) -> ClusterRecord:
        if after_terminate is not None:
            after_terminate(from_)
        return store.transition(
            from_.id,
            how.final,
            now=clock(),
            expect={from_.status},
            reason=how.reason,
            detail=how.detail,
        )

    if cluster.status is Status.PENDING or (cluster.status is Status.QUEUED and not cluster.nodes):
        return settle(cluster), []  # no node to terminate; a token may exist already
    lease = Lease(how.owner, clock() + how.lease_seconds)
    if cluster.status is not Status.TERMINATING:
        cluster = store.transition(
            cluster.id,
            Status.TERMINATING,
            now=clock(),
            expect={cluster.status},
            lease=lease,
            ending=how.final,
            reason=how.reason,
            detail=how.detail,
        )
    else:  # finishing a wind-down whose owner's lease ran out: take it over
        cluster = store.take_over(cluster.id, how.owner, now=clock(), until=lease.until)
    terminating = cluster

    def rest() -> tuple[ClusterRecord, list[Node]]:
        removed: list[Node] = []
        if provider is not None:
            with LeaseKeeper(store, terminating.id, how.owner, how.lease_seconds, clock):
                if before_terminate is not None:
                    before_terminate(terminating)  # e.g. let the nodes' commands stop first
                removed = terminate_cluster_nodes(terminating.id, provider, sleep=sleep)
        return settle(terminating), removed

    if aside is not None:
        aside(rest)
        return terminating, []
    return rest()


__all__ = ["WindDown", "terminate_cluster_nodes", "wind_down"]

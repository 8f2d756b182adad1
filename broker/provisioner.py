"""Gang provisioning with fallback: a whole cluster comes up, or nothing is left behind.

Two different decisions, kept apart:
- *retry the same call* (tenacity): only for TransientError, with the same idempotency
  token, exponential backoff with jitter, bounded in attempts and time;
- *move on* (the plain loops below): on a capacity error to the next zone, on a regional
  quota error to the next region, on a provider-wide error past every shape of that
  provider; an invalid request fails at once. Never a sleep on a capacity error.
Each decision comes from the error's ``reach`` (providers.errors), never from its text.

Crash safety: the attempt (cluster, attempt number, token) is written to the store before
the cloud is called, and every node carries the cluster and attempt tags, so
``Broker.reconcile`` can find and remove whatever a killed process left behind.
"""

from __future__ import annotations

import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from broker.lifecycle import FailReason, Status
from broker.ranking import Plan
from broker.state import AttemptRecord, ClusterRecord, ConflictError, Store
from providers.base import TAG_ATTEMPT, TAG_BROKER, TAG_CLUSTER, LaunchRequest, Node, Provider
from providers.errors import ProviderError, Reach, TransientError
from shapes.model import Provisioning, Shape

Progress = Callable[[str], None]
ProviderFor = Callable[[Shape], Provider]  # raises ProviderError if the cloud is unusable


@dataclass(frozen=True)
class ProvisionPolicy:
    """Bounds of one provisioning run (seconds)."""

    timeout: float = 1800.0  # the whole request
    launch_timeout: float = 900.0  # one launch call, waiting for nodes to run
    retry_attempts: int = 4  # calls per attempt, for transient errors
    retry_initial_wait: float = 1.0
    retry_max_wait: float = 20.0
    capacity_block: float = 600.0  # how long a stocked-out zone is not asked again
    quota_block: float = 1800.0
    provider_block: float = 900.0
    transient_block: float = 120.0  # a zone that kept failing transiently
    deployment: str = field(default_factory=lambda: os.environ.get("BROKER_DEPLOYMENT", "default"))


def owner_id() -> str:
    """Who is provisioning: host and pid, so reconcile can tell a dead owner."""
    return f"{socket.gethostname()}:{os.getpid()}"


def zone_scope(backend: str, shape: Shape, zone: str) -> str:
    where = f"{shape.provider}:{shape.region}:{zone}"
    return f"{backend}/zone:{where}:{shape.instance_type}:{shape.provisioning.value}"


def quota_bucket(shape: Shape) -> str:
    """The quota a shape draws on, within its region and market. AWS counts vCPUs per
    instance family letter (P, G, ...) for on-demand and for spot apart; GCP counts GPUs
    per model (spot from the PREEMPTIBLE_* metrics, apart); Azure counts on-demand vCPUs
    per VM family and every Spot VM of a region against one ``lowPriorityCores`` bucket."""
    if shape.provider == "aws":
        return "family-" + shape.instance_type[:1].lower()  # p5.48xlarge -> P family
    if shape.provider == "azure":
        if shape.provisioning is Provisioning.SPOT:
            return "low-priority-cores"
        return "family-" + azure_family(shape.instance_type)
    return "gpu-" + shape.gpu


def azure_family(size: str) -> str:
    """The VM family of an Azure size, the sizes that share one per-family core quota:
    ``Standard_NC24ads_A100_v4`` and ``Standard_NC96ads_A100_v4`` -> ``ncads-a100-v4``."""
    parts = size.removeprefix("Standard_").split("_")
    parts[0] = "".join(c for c in parts[0] if not c.isdigit())
    return "-".join(parts).lower()


def region_scope(backend: str, shape: Shape) -> str:
    where = f"{shape.provider}:{shape.region}"
    return f"{backend}/region:{where}:{quota_bucket(shape)}:{shape.provisioning.value}"


def provider_scope(backend: str, shape: Shape) -> str:
    return f"{backend}/provider:{shape.provider}"


class ProvisionFailed(Exception):
    """No shape could be provisioned; the cluster is FAILED with ``reason``."""

    def __init__(self, cluster: ClusterRecord, attempts: list[AttemptRecord]) -> None:
        self.cluster = cluster
        self.attempts = attempts
        super().__init__(f"cluster {cluster.id} FAILED ({cluster.reason}): {cluster.detail}")


class CleanupFailed(ProvisionFailed):
    """A failed attempt's nodes could not be removed: fallback stopped, nodes may be leaking."""


class Cancelled(Exception):
    """Someone else moved the cluster (stop/release) while it was being provisioned."""


def order_zones(shape: Shape) -> list[str]:
    """Cheapest zone first where prices differ by zone, else the catalog's order."""
    if not shape.zone_prices:
        return list(shape.zones)
    priced = shape.zone_prices
    return sorted(shape.zones, key=lambda z: (z not in priced, priced.get(z, 0.0), z))


class Provisioner:
    def __init__(
        self,
        store: Store,
        provider_for: ProviderFor,
        *,
        backend_of: Callable[[Shape], str],
        policy: ProvisionPolicy | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        progress: Progress | None = None,
    ) -> None:
        self.store = store
        self.provider_for = provider_for
        self.backend_of = backend_of
        self.policy = policy or ProvisionPolicy()
        self.clock = clock
        self.sleep = sleep
        self.say: Progress = progress or (lambda _msg: None)
        self.owner = owner_id()
        self._attempts_made = 0  # numbering of attempts, across cycles, of the current run

    # -- the fallback loop ------------------------------------------------------------------

    def run(self, cluster_id: str, plans: Sequence[Plan]) -> ClusterRecord:
        """Provision the cluster on the first plan and zone that works; raise ProvisionFailed."""
        now = self.clock()
        deadline = now + self.policy.timeout
        cluster = self.store.transition(
            cluster_id, Status.QUEUED, now=now, expect={Status.PENDING}, owner=self.owner
        )
        blocked = {k: b.reason for k, b in self.store.active_blocks(now).items()}
        self._attempts_made = len(self.store.attempts(cluster_id))  # earlier cycles count too
        reasons: list[str] = []
        for plan in plans:
            shape = plan.shape
            backend = self.backend_of(shape)
            skip = next(
                (
                    f"{scope.split('/', 1)[1]} blocked: {blocked[scope]}"
                    for scope in (provider_scope(backend, shape), region_scope(backend, shape))
                    if scope in blocked
                ),
                None,
            )
            if skip:
                self.say(f"skip {shape.id}: {skip}")
                reasons.append(FailReason.NO_CAPACITY.value)
                continue
            try:
                provider = self.provider_for(shape)
            except ProviderError as exc:
                self._block(
                    provider_scope(backend, shape), exc, self.policy.provider_block, blocked
                )
                self.say(f"skip {shape.id}: {exc}")
                reasons.append(exc.reason)
                continue
            for zone in order_zones(shape):
                zscope = zone_scope(backend, shape, zone)
                if zscope in blocked:
                    self.say(f"skip {shape.id} in {zone}: {blocked[zscope]}")
                    reasons.append(FailReason.NO_CAPACITY.value)
                    continue
                if self.clock() >= deadline:
                    return self._fail(cluster, FailReason.TIMEOUT.value, "deadline reached")
                outcome = self._attempt(cluster, plan, provider, backend, zone, deadline)
                if isinstance(outcome, ClusterRecord):
                    return outcome
                reasons.append(outcome.reason)
                reach = outcome.reach
                if reach is Reach.REQUEST:
                    return self._fail(cluster, outcome.reason, str(outcome))
                if reach is Reach.CALL:
                    self._block(zscope, outcome, self.policy.transient_block, blocked)
                elif reach is Reach.ZONE:
                    self._block(zscope, outcome, self.policy.capacity_block, blocked)
                elif reach is Reach.REGION:
                    self._block(
                        region_scope(backend, shape), outcome, self.policy.quota_block, blocked
                    )
                    break
                elif reach is Reach.PROVIDER:
                    self._block(
                        provider_scope(backend, shape), outcome, self.policy.provider_block, blocked
                    )
                    break
        reason = Counter(reasons).most_common(1)[0][0] if reasons else FailReason.NO_CAPACITY.value
        detail = f"{len(reasons)} attempt(s) or skip(s) over {len(plans)} plan(s) failed"
        return self._fail(cluster, reason, detail)

    def _block(self, scope: str, exc: ProviderError, ttl: float, blocked: dict[str, str]) -> None:
        now = self.clock()
        until = now + ttl
        reason = (
            f"{exc.code} ({exc.reason}) until {time.strftime('%H:%M:%S', time.gmtime(until))} UTC"
        )
        blocked[scope] = reason
        self.store.block(scope, reason=reason, until=until, now=now)

    def _fail(self, cluster: ClusterRecord, reason: str, detail: str) -> ClusterRecord:
        failed = self.store.transition(
            cluster.id,
            Status.FAILED,
            now=self.clock(),
            expect={Status.QUEUED, Status.PENDING},
            reason=reason,
            detail=detail,
        )
        self.say(f"FAILED {cluster.id}: {reason}: {detail}")
        raise ProvisionFailed(failed, self.store.attempts(cluster.id))

    # -- one attempt: one shape in one zone -------------------------------------------------

    def _attempt(
        self,
        cluster: ClusterRecord,
        plan: Plan,
        provider: Provider,
        backend: str,
        zone: str,
        deadline: float,
    ) -> ClusterRecord | ProviderError:
        shape = plan.shape
        self._attempts_made += 1
        attempt_no = self._attempts_made
        token = f"{cluster.id}-c{cluster.cycle}-a{attempt_no}"
        tag = f"c{cluster.cycle}-a{attempt_no}"  # valid as a GCP label value too
        now = self.clock()
        record = self.store.start_attempt(
            cluster.id,
            now=now,
            cycle=cluster.cycle,
            attempt_no=attempt_no,
            shape_id=shape.id,
            provider=shape.provider,
            backend=backend,
            region=shape.region,
            zone=zone,
            nodes=plan.nodes,
            token=token,
        )
        try:
            self.store.transition(
                cluster.id,
                Status.STARTING,
                now=now,
                expect={Status.QUEUED},
                shape_id=shape.id,
                provider=shape.provider,
                region=shape.region,
                zone=zone,
                nodes_count=plan.nodes,
                procs_per_node=plan.procs_per_node,
                gpus_billed=plan.gpus_billed,
                price_per_hour=plan.price_per_hour,
            )
        except ConflictError as exc:
            self.store.finish_attempt(record.id, now=self.clock(), outcome="cancelled")
            raise Cancelled(str(exc)) from exc
        self.say(
            f"attempt {attempt_no}: {plan.nodes} x {shape.id} in {zone} "
            f"(${plan.price_per_hour:,.2f}/h)"
        )
        request = LaunchRequest(
            shape=shape,
            zone=zone,
            count=plan.nodes,
            token=token,
            tags={TAG_BROKER: self.policy.deployment, TAG_CLUSTER: cluster.id, TAG_ATTEMPT: tag},
        )
        calls = 0
        try:
            nodes: list[Node] = []
            for call in self._retrying(deadline):
                with call:
                    calls += 1
                    nodes = provider.launch(
                        request,
                        timeout=max(1.0, min(self.policy.launch_timeout, deadline - self.clock())),
                    )
        except ProviderError as exc:
            self.say(f"attempt {attempt_no} failed: {exc} -> {self._next_step(exc.reach)}")
            created, cleaned = self._cleanup(cluster.id, provider, tag, record, exc, calls)
            self.store.finish_attempt(
                record.id,
                now=self.clock(),
                outcome="cleaned" if created else "failed",
                error_code=exc.code,
                reach=exc.reach.value,
                reason=exc.reason,
                message=exc.message,
                retries=calls - 1,
                nodes_created=created,
                nodes_cleaned=cleaned,
            )
            self._requeue(cluster.id)
            return exc
        except BaseException:
            # A bug or Ctrl-C mid-launch: remove what this attempt made before going down.
            self._cleanup_quietly(cluster.id, provider, tag)
            self.store.finish_attempt(
                record.id, now=self.clock(), outcome="aborted", retries=calls - 1
            )
            raise
        ranked = [
            {
                "rank": rank,
                "provider_id": n.provider_id,
                "private_ip": n.private_ip,
                "zone": n.zone,
                "region": n.region,
            }
            for rank, n in enumerate(nodes)
        ]
        try:
            running = self.store.transition(
                cluster.id, Status.RUNNING, now=self.clock(), expect={Status.STARTING}, nodes=ranked
            )
        except ConflictError as exc:  # stopped while we launched: give the nodes back
            self._cleanup_quietly(cluster.id, provider, tag)
            self.store.finish_attempt(
                record.id, now=self.clock(), outcome="cancelled", retries=calls - 1
            )
            raise Cancelled(str(exc)) from exc
        self.store.finish_attempt(
            record.id,
            now=self.clock(),
            outcome="running",
            retries=calls - 1,
            nodes_created=len(nodes),
        )
        self.say(f"RUNNING {cluster.id}: {len(nodes)} x {shape.id} in {zone}")
        return running

    def _retrying(self, deadline: float) -> Retrying:
        p = self.policy

        def wait(state: RetryCallState) -> float:
            backoff = wait_exponential_jitter(initial=p.retry_initial_wait, max=p.retry_max_wait)(
                state
            )
            exc = state.outcome.exception() if state.outcome else None
            hinted = getattr(exc, "retry_after", None) or 0.0
            return max(backoff, min(float(hinted), p.retry_max_wait))

        def announce(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            self.say(f"  transient error, retrying the same call: {exc}")

        remaining = max(0.0, deadline - self.clock())
        return Retrying(
            retry=retry_if_exception_type(TransientError),
            stop=stop_after_attempt(p.retry_attempts) | stop_after_delay(remaining),
            wait=wait,
            sleep=self.sleep,
            before_sleep=announce,
            reraise=True,
        )

    @staticmethod
    def _next_step(reach: Reach) -> str:
        return {
            Reach.CALL: "retries exhausted, next zone",
            Reach.ZONE: "next zone",
            Reach.REGION: "next region",
            Reach.PROVIDER: "skipping the provider",
            Reach.REQUEST: "failing the request",
        }[reach]

    def _requeue(self, cluster_id: str) -> None:
        try:
            self.store.transition(
                cluster_id, Status.QUEUED, now=self.clock(), expect={Status.STARTING}
            )
        except ConflictError as exc:
            raise Cancelled(str(exc)) from exc

    # -- cleanup ------------------------------------------------------------------------------

    def _attempt_nodes(self, cluster_id: str, provider: Provider, tag: str) -> list[Node]:
        return [n for n in provider.describe(cluster_id) if n.attempt == tag]

    def _cleanup(
        self,
        cluster_id: str,
        provider: Provider,
        tag: str,
        record: AttemptRecord,
        cause: ProviderError,
        calls: int,
    ) -> tuple[int, int]:
        """Terminate a failed attempt's nodes and confirm they are gone.

        Returns (nodes found, nodes terminated). If they cannot be removed the fallback
        stops: the cluster goes FAILED (CleanupFailed) and CleanupFailed is raised.
        """
        try:
            leftovers = self._attempt_nodes(cluster_id, provider, tag)
            if not leftovers:
                return 0, 0
            self.say(f"  partial gang: terminating {len(leftovers)} node(s) of the failed attempt")
            for call in self._retrying(self.clock() + self.policy.launch_timeout):
                with call:
                    provider.terminate(leftovers)
            remaining = self._attempt_nodes(cluster_id, provider, tag)
            if remaining:
                raise RuntimeError(f"{len(remaining)} node(s) still alive after terminate")
            return len(leftovers), len(leftovers)
        except (ProviderError, RuntimeError) as exc:
            detail = (
                f"could not remove the nodes of attempt {tag} after {cause.code}: {exc}. "
                "Fallback stopped; run `broker reconcile` once the cloud answers."
            )
            self.say(f"!! CLEANUP FAILED for {cluster_id}: {detail}")
            self.store.finish_attempt(
                record.id,
                now=self.clock(),
                outcome="leaked",
                error_code=cause.code,
                reach=cause.reach.value,
                reason=cause.reason,
                message=cause.message,
                retries=calls - 1,
            )
            now = self.clock()
            self.store.transition(cluster_id, Status.TERMINATING, now=now, expect={Status.STARTING})
            failed = self.store.transition(
                cluster_id,
                Status.FAILED,
                now=self.clock(),
                expect={Status.TERMINATING},
                reason=FailReason.CLEANUP_FAILED.value,
                detail=detail,
            )
            raise CleanupFailed(failed, self.store.attempts(cluster_id)) from exc

    def _cleanup_quietly(self, cluster_id: str, provider: Provider, tag: str) -> None:
        try:
            nodes = self._attempt_nodes(cluster_id, provider, tag)
            if nodes:
                provider.terminate(nodes)
        except Exception as exc:  # reconcile will find them by tag
            self.say(
                f"!! could not terminate nodes of attempt {tag}: {exc}; run `broker reconcile`"
            )


def terminate_cluster_nodes(
    cluster_id: str,
    provider: Provider,
    *,
    attempts: int = 4,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Node]:
    """Terminate every node tagged with the cluster, confirm none is left, return them."""
    nodes = provider.describe(cluster_id)
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
    left = provider.describe(cluster_id)
    if left:
        raise RuntimeError(f"{len(left)} node(s) of {cluster_id} still alive after terminate")
    return nodes


def blocked_shapes(
    shapes: Sequence[Shape], blocks: Mapping[str, str], backend_of: Callable[[Shape], str]
) -> dict[str, str]:
    """Shapes that cannot be tried now (every zone, its region or its provider blocked),
    keyed by shape key, with the reason: the ranking's ``unavailable`` input."""
    out: dict[str, str] = {}
    for shape in shapes:
        backend = backend_of(shape)
        for scope in (provider_scope(backend, shape), region_scope(backend, shape)):
            if scope in blocks:
                out[shape.key] = f"{scope.split('/', 1)[1]} blocked: {blocks[scope]}"
                break
        else:
            zones = [zone_scope(backend, shape, z) for z in shape.zones]
            if zones and all(z in blocks for z in zones):
                out[shape.key] = f"every zone blocked: {blocks[zones[0]]}"
    return out

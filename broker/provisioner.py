"""Gang provisioning with fallback: a whole cluster comes up, or nothing is left behind.

Two different decisions, kept apart:
- *retry the same call* (tenacity): only for TransientError, with the same idempotency
  token, exponential backoff with jitter, bounded in attempts and time;
- *move on* (the plain loops below): on a capacity error to the next zone, on a regional
  quota error to the next region, on a provider-wide error past every shape of that
  provider; an invalid request fails at once. Never a sleep on a capacity error.
Each decision comes from the error's ``reach`` (providers.errors), never from its text. A
*local* error (the cloud is not configured here) moves on the same way but is never stored
as a block: fixing the configuration must take effect at once.

Crash safety: the attempt (cluster, attempt number, token) is written to the store before
the cloud is called, and every node carries the cluster and attempt tags, so
``Broker.reconcile`` can find and remove whatever a killed process left behind. The run
holds the cluster's lease and renews it while it waits (broker.lease).

A signal (Ctrl-C, SIGTERM) during a run removes the in-flight attempt's nodes, confirms they
are gone and records the cluster STOPPED before the signal goes on up.
"""

from __future__ import annotations

import signal
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

from broker.diagnostics import Diagnostic
from broker.errors import (
    Cancelled,
    CleanupFailed,
    ConflictError,
    Interrupted,
    InvalidRequest,
    ProvisionFailed,
    TeardownFailed,
)
from broker.lease import LeaseKeeper, new_owner_id
from broker.lifecycle import FailReason, Status
from broker.quotas import QuotaGate, describe_shortfalls
from broker.ranking import Plan, order_zones
from broker.scopes import BlockScope
from broker.state import (
    AttemptIntent,
    AttemptOutcome,
    AttemptRecord,
    AttemptResult,
    ClusterRecord,
    Lease,
    NodeRecord,
    PlanFields,
    Store,
)
from broker.teardown import WindDown, terminate_cluster_nodes, wind_down
from broker.views import skip_summary
from providers.base import (
    TAG_ATTEMPT,
    TAG_BROKER,
    TAG_CLUSTER,
    AgentLaunch,
    LaunchRequest,
    Node,
    Provider,
)
from providers.errors import GlobalQuotaError, ProviderError, QuotaError, Reach, TransientError
from shapes.model import Shape

Progress = Callable[[str], None]
ProviderFor = Callable[[Shape], Provider]  # raises ProviderError if the cloud is unusable
BucketOf = Callable[[Shape], str]  # the quota bucket a shape draws on (providers' table)

_NUMBERS = (
    "timeout",
    "agent_start_timeout",
    "launch_timeout",
    "retry_initial_wait",
    "retry_max_wait",
    "capacity_block",
    "quota_block",
    "provider_block",
    "transient_block",
    "lease_seconds",
)


class _EndedWhileStarting(ConflictError):
    """The cluster was moved (stopped) while its nodes' agents were starting the command."""


@dataclass(frozen=True)
class ProvisionPolicy:
    """Bounds of one provisioning run (seconds). Every number must be finite and > 0."""

    timeout: float = 1800.0  # the whole request
    launch_timeout: float = 900.0  # one launch call, waiting for nodes to run
    retry_attempts: int = 4  # calls per attempt, for transient errors
    retry_initial_wait: float = 1.0
    retry_max_wait: float = 20.0
    capacity_block: float = 600.0  # how long a stocked-out zone is not asked again
    quota_block: float = 1800.0
    provider_block: float = 900.0
    transient_block: float = 120.0  # a zone that kept failing transiently
    lease_seconds: float = 120.0  # the owner's lease, renewed every quarter of it
    agent_start_timeout: float = 600.0  # nodes up -> every rank's command started
    deployment: str = "default"  # the ``broker`` tag: whose nodes reconcile may touch

    def __post_init__(self) -> None:
        errors = []
        for name in _NUMBERS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                errors.append(Diagnostic(field=name, message=f"must be a number, got {value!r}"))
            elif not (value > 0 and value != float("inf")):  # also refuses NaN
                errors.append(
                    Diagnostic(field=name, message=f"must be a finite number > 0, got {value}")
                )
        attempts = self.retry_attempts
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            errors.append(
                Diagnostic(
                    field="retry_attempts", message=f"must be an integer >= 1, got {attempts!r}"
                )
            )
        if errors:
            raise InvalidRequest(errors)


def _cloud(backend: str, shape: Shape) -> str:
    """How messages name the cloud a plan is on: ``aws``, or ``sim:aws`` when simulated."""
    return shape.provider if backend == shape.provider else f"{backend}:{shape.provider}"


@dataclass
class _Run:
    """What one run learns as it goes: blocks (stored or local), reasons, notices given."""

    blocked: dict[str, str]  # scope key -> reason
    reasons: list[str] = field(default_factory=list)
    unusable: dict[str, ProviderError] = field(default_factory=dict)  # cloud -> why
    skipped: Counter[str] = field(default_factory=Counter)  # cloud -> plans skipped
    skips: Counter[str] = field(default_factory=Counter)  # cause -> plans/zones not asked
    quota: list[str] = field(default_factory=list)  # plans skipped for quota, with the numbers

    def skip(self, cause: str, count: int = 1) -> None:
        """A plan (or, cause ``zone blocked``, one zone of it) passed over without a launch
        call, and why: the cause is a few words (``blocked``, ``not configured``,
        ``quota``) that the failed cluster's detail sums up by count
        (broker.views.skip_summary)."""
        self.skips[cause] += count


class Provisioner:
    def __init__(
        self,
        store: Store,
        provider_for: ProviderFor,
        *,
        backend_of: Callable[[Shape], str],
        bucket_of: BucketOf,
        policy: ProvisionPolicy | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        progress: Progress | None = None,
        owner: str | None = None,
        agent: AgentLaunch | None = None,
        bootstrap: str | None = None,
        drain: Callable[[ClusterRecord], None] | None = None,
    ) -> None:
        self.store = store
        self.agent = agent  # nodes start the node agent (sim: as local processes)
        self.bootstrap = bootstrap  # the boot script clouds run on each node
        self.drain = drain  # before a failed start's nodes go: the other ranks stop and sync
        self.provider_for = provider_for
        self.backend_of = backend_of
        self.bucket_of = bucket_of
        self.policy = policy or ProvisionPolicy()
        self.clock = clock
        self.sleep = sleep
        self.say: Progress = progress or (lambda _msg: None)
        self.quotas = QuotaGate(store, clock=clock, say=self.say)  # broker.quotas
        self.owner = owner or new_owner_id()
        self._attempts_made = 0  # numbering of attempts, across cycles, of the current run
        self._attempts_this_run = 0
        self._last_provider: Provider | None = None

    # -- the fallback loop ------------------------------------------------------------------

    def run(
        self,
        cluster_id: str,
        plans: Sequence[Plan],
        skipped: Mapping[str, int] | None = None,
        *,
        current: ClusterRecord | None = None,
    ) -> ClusterRecord:
        """Provision the cluster on the first plan and zone that works. Raises
        ProvisionFailed (FAILED), CleanupFailed, Cancelled (someone else moved it) or
        Interrupted (a signal: the cluster is STOPPED, its nodes removed). ``skipped``:
        shapes already left out without a call (cause -> count), for the FAILED summary.
        ``current``: the cluster as the caller just read it (else it is read here); every
        move from it is a compare-and-set, so a stale one only ends in Cancelled."""
        now = self.clock()
        claimed = current if current is not None else self.store.get(cluster_id)
        if claimed.status is Status.QUEUED and claimed.owner == self.owner:
            cluster = claimed  # a worker claimed it for us (Store.claim_pending): QUEUED
        else:
            cluster = self.store.transition(
                cluster_id,
                Status.QUEUED,
                now=now,
                expect={Status.PENDING},
                lease=Lease(self.owner, now + self.policy.lease_seconds),
            )
        try:
            with LeaseKeeper(
                self.store, cluster_id, self.owner, self.policy.lease_seconds, self.clock
            ):
                return self._fallback(cluster, plans, skipped or {})
        except KeyboardInterrupt:
            raise self._interrupted(cluster_id, Interrupted(signal.SIGINT)) from None
        except Interrupted as exc:
            raise self._interrupted(cluster_id, exc) from None

    def _fallback(
        self, cluster: ClusterRecord, plans: Sequence[Plan], skipped: Mapping[str, int]
    ) -> ClusterRecord:
        deadline = self.clock() + self.policy.timeout
        run = _Run({b.scope.key: b.reason for b in self.store.active_blocks(self.clock())})
        run.skips.update(skipped)
        self._attempts_made = self.store.attempt_count(cluster.id)  # earlier cycles count
        self._attempts_this_run = 0
        for plan in plans:
            shape = plan.shape
            backend = self.backend_of(shape)
            provider = self._usable(shape, backend, run)
            if provider is None:
                continue
            short = self.quotas.shortfalls(provider, shape, plan.nodes)
            if short:  # the cloud would refuse the gang: no launch call
                why = describe_shortfalls(short)
                self.say(f"skip {shape.id}: quota: {why}")
                run.reasons.append(FailReason.QUOTA_EXCEEDED.value)
                run.quota.append(f"{shape.id}: {why}")
                run.skip("quota")
                continue
            for zone in order_zones(shape):
                zscope = BlockScope.zone_of(backend, shape, zone)
                if zscope.key in run.blocked:
                    self.say(f"skip {shape.id} in {zone}: {run.blocked[zscope.key]}")
                    run.reasons.append(FailReason.NO_CAPACITY.value)
                    run.skip("zone blocked")  # one zone of a plan still tried elsewhere
                    continue
                if self.clock() >= deadline:
                    detail = f"deadline reached after {self._attempts_this_run} attempt(s)"
                    if run.skips:
                        detail += f"; {skip_summary(run.skips)}"
                    return self._fail(cluster, FailReason.TIMEOUT.value, detail)
                outcome = self._attempt(cluster, plan, provider, backend, zone, deadline)
                if isinstance(outcome, ClusterRecord):
                    return outcome
                run.reasons.append(outcome.reason)
                reach = outcome.reach
                if reach is Reach.REQUEST:
                    return self._fail(cluster, outcome.reason, str(outcome))
                if isinstance(outcome, QuotaError | GlobalQuotaError):
                    self.quotas.refresh(provider, shape.region)  # usage moved: read again
                if reach is Reach.CALL:
                    self._block(zscope, outcome, self.policy.transient_block, run)
                elif reach is Reach.ZONE:
                    self._block(zscope, outcome, self.policy.capacity_block, run)
                elif reach is Reach.REGION:
                    region = BlockScope.region_of(backend, shape, self.bucket_of(shape))
                    self._block(region, outcome, self.policy.quota_block, run)
                    break
                elif reach is Reach.PROVIDER:
                    scope = BlockScope.provider_of(backend, shape)
                    self._block(scope, outcome, self.policy.provider_block, run)
                    run.unusable[_cloud(backend, shape)] = outcome
                    break
        self._say_skipped(run)
        reason = (
            Counter(run.reasons).most_common(1)[0][0]
            if run.reasons
            else FailReason.NO_CAPACITY.value
        )
        detail = f"{self._attempts_this_run} attempt(s) over {len(plans)} plan(s) failed"
        if run.unusable and not self._attempts_this_run:
            if all(e.local for e in run.unusable.values()):
                detail = (
                    f"no cloud is configured here ({', '.join(sorted(run.unusable))}): enable "
                    "one under [broker] providers in the configuration file (`broker "
                    "providers` says where it is read from), or use --provider sim"
                )
            else:
                detail = "no cloud could be used: " + "; ".join(
                    f"{b}: {e.message}" for b, e in sorted(run.unusable.items())
                )
        if run.quota:  # the numbers of the first plan skipped for quota
            more = f" (and {len(run.quota) - 1} more)" if len(run.quota) > 1 else ""
            detail += f"; skipped for quota: {run.quota[0]}{more}"
        if run.skips:  # by cause and count, read back by describe (broker.views.skips_in)
            detail += f"; {skip_summary(run.skips)}"
        return self._fail(cluster, reason, detail)

    def _usable(self, shape: Shape, backend: str, run: _Run) -> Provider | None:
        """The provider for this plan, or None (said once per cloud, not once per plan)."""
        cloud = _cloud(backend, shape)
        known = run.unusable.get(cloud)
        if known is not None:
            run.skipped[cloud] += 1
            run.reasons.append(known.reason)
            run.skip("not configured" if known.local else "blocked")
            return None
        for scope in (
            BlockScope.provider_of(backend, shape),
            BlockScope.region_of(backend, shape, self.bucket_of(shape)),
        ):
            if scope.key in run.blocked:
                self.say(f"skip {shape.id}: {scope.describe()} blocked: {run.blocked[scope.key]}")
                run.reasons.append(FailReason.NO_CAPACITY.value)
                run.skip("blocked")
                return None
        try:
            return self.provider_for(shape)
        except ProviderError as exc:
            run.unusable[cloud] = exc
            run.skipped[cloud] += 1
            run.reasons.append(exc.reason)
            run.skip("not configured" if exc.local else "blocked")
            if not exc.local:
                scope = BlockScope.provider_of(backend, shape)
                self._block(scope, exc, self.policy.provider_block, run)
            self.say(f"skipping every {cloud} shape: {exc.message}")
            return None

    def _say_skipped(self, run: _Run) -> None:
        for backend, count in sorted(run.skipped.items()):
            why = run.unusable[backend]
            if why.local:
                self.say(f"{count} plan(s) on {backend} skipped: {backend} is not configured")

    def _block(self, scope: BlockScope, exc: ProviderError, ttl: float, run: _Run) -> None:
        now = self.clock()
        until = now + ttl
        reason = (
            f"{exc.code} ({exc.reason}) until {time.strftime('%H:%M:%S', time.gmtime(until))} UTC"
        )
        run.blocked[scope.key] = reason
        if not exc.local:  # our own configuration is not the cloud's state: never stored
            self.store.block(scope, reason=reason, until=until, now=now)

    def _fail(self, cluster: ClusterRecord, reason: str, detail: str) -> ClusterRecord:
        try:
            failed = self.store.transition(
                cluster.id,
                Status.FAILED,
                now=self.clock(),
                expect={Status.QUEUED, Status.PENDING},
                reason=reason,
                detail=detail,
            )
        except ConflictError as exc:
            raise self._cancelled(cluster.id, exc) from None
        self.say(f"FAILED {cluster.id}: {reason}: {detail}")
        raise ProvisionFailed(failed, self.store.attempts(cluster.id))

    def _cancelled(self, cluster_id: str, exc: ConflictError) -> Cancelled:
        now = self.store.get(cluster_id)
        return Cancelled(
            f"cluster {cluster_id} was moved by someone else while this process provisioned "
            f"it: it is {now.status.value} now ({exc})",
            now,
        )

    def _interrupted(self, cluster_id: str, exc: Interrupted) -> Interrupted:
        """A signal arrived: remove what may be up, record STOPPED, hand the signal on."""
        name = signal.Signals(exc.signum).name
        self.say(f"{name}: stopping {cluster_id} and removing its nodes ...")
        cluster = self.store.get(cluster_id)
        if cluster.status in (Status.QUEUED, Status.STARTING, Status.RUNNING, Status.PENDING):
            how = WindDown(
                Status.STOPPED,
                self.owner,
                self.policy.lease_seconds,
                detail=f"interrupted by {name} while provisioning",
            )
            provider = self._provider_of(cluster)
            try:
                cluster, removed = wind_down(
                    self.store,
                    cluster,
                    how,
                    provider,
                    clock=self.clock,
                    sleep=self.sleep,
                    after_terminate=self._revoke_tokens,
                )
                self.say(f"STOPPED {cluster_id}; {len(removed)} node(s) terminated")
            except (ProviderError, TeardownFailed, ConflictError) as err:
                self.say(f"!! could not finish stopping {cluster_id}: {err}; run broker reconcile")
                cluster = self.store.get(cluster_id)
        exc.cluster = cluster
        return exc

    def _revoke_tokens(self, cluster: ClusterRecord) -> None:
        self.store.revoke_cluster_tokens(cluster.id, now=self.clock())

    def _provider_of(self, cluster: ClusterRecord) -> Provider | None:
        """The adapter of the attempt in flight (or the last one): where nodes may be."""
        return self._last_provider if cluster.status is not Status.PENDING else None

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
        self._attempts_this_run += 1
        attempt_no = self._attempts_made
        token = f"{cluster.id}-c{cluster.cycle}-a{attempt_no}"
        tag = f"c{cluster.cycle}-a{attempt_no}"  # valid as a GCP label value too
        now = self.clock()
        record = self.store.start_attempt(
            cluster.id,
            AttemptIntent(
                cycle=cluster.cycle,
                attempt_no=attempt_no,
                shape_id=shape.id,
                provider=shape.provider,
                backend=backend,
                region=shape.region,
                zone=zone,
                nodes=plan.nodes,
                token=token,
            ),
            now=now,
        )
        self._last_provider = provider
        try:
            self.store.transition(
                cluster.id,
                Status.STARTING,
                now=now,
                expect={Status.QUEUED},
                plan=PlanFields(
                    shape_id=shape.id,
                    provider=shape.provider,
                    region=shape.region,
                    zone=zone,
                    nodes_count=plan.nodes,
                    procs_per_node=plan.procs_per_node,
                    gpus_billed=plan.gpus_billed,
                    price_per_hour=plan.price_in_zone(zone),  # where the price varies by zone
                ),
            )
        except ConflictError as exc:
            self._finish(record, AttemptResult(AttemptOutcome.CANCELLED))
            raise self._cancelled(cluster.id, exc) from None
        self.say(
            f"attempt {attempt_no}: {plan.nodes} x {shape.id} in {zone} "
            f"(${plan.price_in_zone(zone):,.2f}/h)"
        )
        request = LaunchRequest(
            shape=shape,
            zone=zone,
            count=plan.nodes,
            token=token,
            tags={TAG_BROKER: self.policy.deployment, TAG_CLUSTER: cluster.id, TAG_ATTEMPT: tag},
            bootstrap=self.bootstrap,
            agent=self.agent,
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
            self._finish(
                record,
                AttemptResult(
                    AttemptOutcome.CLEANED if created else AttemptOutcome.FAILED,
                    error_code=exc.code,
                    reach=exc.reach.value,
                    reason=exc.reason,
                    message=exc.message,
                    retries=calls - 1,
                    nodes_created=created,
                    nodes_cleaned=cleaned,
                ),
            )
            self._requeue(cluster.id)
            return exc
        except BaseException as exc:
            # Ctrl-C, SIGTERM or a bug mid-launch: remove what this attempt made first.
            removed = self._cleanup_quietly(cluster.id, provider, tag)
            signalled = isinstance(exc, KeyboardInterrupt | Interrupted)
            outcome = AttemptOutcome.INTERRUPTED if signalled else AttemptOutcome.ABORTED
            self._finish(
                record,
                AttemptResult(
                    outcome, retries=max(0, calls - 1), nodes_created=removed, nodes_cleaned=removed
                ),
            )
            raise
        ranked = [
            NodeRecord(
                rank=rank,
                provider_id=n.provider_id,
                private_ip=n.private_ip or "",
                zone=n.zone,
                region=n.region,
            )
            for rank, n in enumerate(nodes)
        ]
        recorded = False  # the cluster's record names the nodes: whoever stops it removes them
        try:
            if self.agent is not None:  # RUNNING once every rank's command has started
                self.store.record_nodes(cluster.id, ranked)
                recorded = True
                failure = self._await_agents(cluster.id, len(ranked))
                if failure is not None:
                    return self._agents_failed(cluster, provider, record, calls, nodes, failure)
            running = self.store.transition(
                cluster.id, Status.RUNNING, now=self.clock(), expect={Status.STARTING}, nodes=ranked
            )
        except ConflictError as exc:  # stopped while we launched: give the nodes back
            # Stopped while its agents were starting (or just as they all had started, before
            # RUNNING was recorded): whoever stopped it winds it down (its agents are told to
            # stop the command and sync first); killing the nodes here would cut that short.
            ending = recorded or isinstance(exc, _EndedWhileStarting)
            removed = 0 if ending else self._cleanup_quietly(cluster.id, provider, tag)
            self._finish(
                record,
                AttemptResult(
                    AttemptOutcome.CANCELLED,
                    retries=calls - 1,
                    nodes_created=len(nodes),
                    nodes_cleaned=removed,
                ),
            )
            raise self._cancelled(cluster.id, exc) from None
        self._finish(
            record,
            AttemptResult(AttemptOutcome.RUNNING, retries=calls - 1, nodes_created=len(nodes)),
        )
        self.say(f"RUNNING {cluster.id}: {len(nodes)} x {shape.id} in {zone}")
        return running

    def _await_agents(self, cluster_id: str, ranks: int) -> tuple[str, str] | None:
        """Wait (holding the lease) until every rank's agent has started the command: None;
        or the reason and detail when one failed first (a non-zero exit, a failed image
        pull) or they did not all start in time. ConflictError if the cluster was moved
        meanwhile (stopped)."""
        from broker.runs import outcome

        deadline = self.clock() + self.policy.agent_start_timeout
        while True:
            cluster = self.store.get(cluster_id)
            if cluster.status is not Status.STARTING:
                raise _EndedWhileStarting(f"cluster {cluster_id} is {cluster.status.value} now")
            agents = self.store.agents(cluster_id, cluster.cycle)
            ending = outcome(cluster, agents)
            if ending is not None and ending.final is Status.FAILED:
                return ending.reason or FailReason.ERROR.value, ending.detail or ""
            started = {a.rank for a in agents if a.started_at is not None}
            if len(started) >= ranks:
                return None
            if self.clock() >= deadline:
                missing = sorted(set(range(ranks)) - started)
                return FailReason.TIMEOUT.value, (
                    f"the command did not start on rank(s) {', '.join(map(str, missing))} "
                    f"within {self.policy.agent_start_timeout:g} s of the nodes running "
                    "(their agents never registered or never started it)"
                )
            self.sleep(0.2)

    def _agents_failed(
        self,
        cluster: ClusterRecord,
        provider: Provider,
        record: AttemptRecord,
        calls: int,
        nodes: Sequence[Node],
        failure: tuple[str, str],
    ) -> ClusterRecord:
        """The gang came up but its command could not start: end the cluster FAILED (its
        nodes terminated and confirmed) and raise ProvisionFailed. Another shape would not
        help: the command or the image is at fault, or the nodes never reached us."""
        reason, detail = failure
        self.say(f"attempt {record.attempt_no}: the command did not start: {reason}: {detail}")
        how = WindDown(
            Status.FAILED, self.owner, self.policy.lease_seconds, reason=reason, detail=detail
        )
        current = self.store.get(cluster.id)
        failed, removed = wind_down(
            self.store,
            current,
            how,
            provider,
            clock=self.clock,
            sleep=self.sleep,
            before_terminate=self.drain,  # the ranks still running stop, flush and sync
            after_terminate=self._revoke_tokens,  # the nodes' tokens go before the end shows
        )
        self._finish(
            record,
            AttemptResult(
                AttemptOutcome.CLEANED,
                error_code="CommandNotStarted",
                reason=reason,
                message=detail,
                retries=calls - 1,
                nodes_created=len(nodes),
                nodes_cleaned=len(removed),
            ),
        )
        raise ProvisionFailed(failed, self.store.attempts(cluster.id))

    def _finish(self, record: AttemptRecord, result: AttemptResult) -> None:
        self.store.finish_attempt(record.id, result, now=self.clock())

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
            raise self._cancelled(cluster_id, exc) from None

    # -- cleanup ------------------------------------------------------------------------------

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
            removed = terminate_cluster_nodes(
                cluster_id,
                provider,
                attempts=self.policy.retry_attempts,
                sleep=self.sleep,
                only=lambda n: n.attempt == tag,
            )
            if removed:
                self.say(f"  partial gang: terminated {len(removed)} node(s) of the failed attempt")
            return len(removed), len(removed)
        except (ProviderError, TeardownFailed) as exc:
            detail = (
                f"could not remove the nodes of attempt {tag} after {cause.code}: {exc}. "
                "Fallback stopped; run `broker reconcile` once the cloud answers."
            )
            self.say(f"!! CLEANUP FAILED for {cluster_id}: {detail}")
            self._finish(
                record,
                AttemptResult(
                    AttemptOutcome.LEAKED,
                    error_code=cause.code,
                    reach=cause.reach.value,
                    reason=cause.reason,
                    message=cause.message,
                    retries=calls - 1,
                ),
            )
            self.store.transition(
                cluster_id,
                Status.TERMINATING,
                now=self.clock(),
                expect={Status.STARTING},
                ending=Status.FAILED,
                reason=FailReason.CLEANUP_FAILED.value,
                detail=detail,
            )
            failed = self.store.transition(
                cluster_id,
                Status.FAILED,
                now=self.clock(),
                expect={Status.TERMINATING},
                reason=FailReason.CLEANUP_FAILED.value,
                detail=detail,
            )
            raise CleanupFailed(failed, self.store.attempts(cluster_id)) from exc

    def _cleanup_quietly(self, cluster_id: str, provider: Provider, tag: str) -> int:
        """Remove an attempt's nodes on the way out; a failure is said loudly, and
        reconcile finds the nodes by tag. Returns how many were removed."""
        try:
            return len(
                terminate_cluster_nodes(
                    cluster_id,
                    provider,
                    attempts=self.policy.retry_attempts,
                    sleep=self.sleep,
                    only=lambda n: n.attempt == tag,
                )
            )
        except (ProviderError, TeardownFailed) as exc:
            self.say(
                f"!! could not terminate nodes of attempt {tag}: {exc}; run `broker reconcile`"
            )
            return 0


__all__ = [
    "Cancelled",
    "CleanupFailed",
    "ProvisionFailed",
    "ProvisionPolicy",
    "Provisioner",
    "order_zones",
]

"""The Broker: what a scheduler, the CLI and (soon) the HTTP service call. One object per store.

    broker = Broker(Settings.from_env(), backend="sim")   # or backend=None: the real clouds
    cluster = broker.submit(QuoteRequest(rank=RankRequest(gpus=16)))   # PENDING, durable
    cluster = broker.run(cluster.id)                       # the fallback loop -> RUNNING
    env = broker.env(cluster.id, rank=0)
    broker.release(cluster.id)                             # -> COMPLETED

``provision`` is ``submit`` then ``run``. Everything a request needs is checked before
anything is written (``submit`` raises InvalidRequest / NoShape / ConfigError first). The
store opens on first use, so constructing a Broker and quoting with no store yet costs no
database import at all.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from broker.diagnostics import Diagnostic
from broker.errors import (
    ConflictError,
    CreditsExhausted,
    InvalidRequest,
    NoShape,
    NotFoundError,
    StoreError,
)
from broker.lifecycle import TERMINAL, Status
from broker.quote import Quote, QuoteRequest, quote
from broker.scopes import Block, blocked_shapes, blocked_zones, read_blocks_sqlite
from broker.settings import STATE_DB_FILENAME, Settings
from shapes.catalog import Catalog, load_catalog
from shapes.model import Shape

if TYPE_CHECKING:
    import threading

    from broker.artifacts import Artifact
    from broker.credits import CreditsSummary, CreditStatus
    from broker.provisioner import ProvisionPolicy
    from broker.reconcile import ReconcileReport
    from broker.runs import Ending, RunPolicy
    from broker.state import (
        AttemptRecord,
        ClusterRecord,
        Everyone,
        LogLine,
        Store,
        TokenRecord,
        TransitionRecord,
    )
    from broker.teardown import WindDown
    from broker.tokens import Principal
    from providers.base import AgentLaunch, Node, Provider
    from providers.config import BrokerConfig
    from providers.sim import SimScenario
    from providers.storage.base import ArtifactStore

SIMULATED = "sim"
BILLED = frozenset({Status.STARTING, Status.RUNNING, Status.TERMINATING})
Progress = Callable[[str], None]
DRAIN_LOOK_AFTER = 2.0  # seconds a drain waits before it asks the cloud which nodes are gone
DRAIN_LOOK_EVERY = 5.0  # ... and then between two asks
DRAIN_POLL = (0.2, 1.0)  # seconds between a drain's reads of its agents: first, at most


class Usage(NamedTuple):
    gpu_hours: float
    cost: float


def accrue(history: Sequence[TransitionRecord], now: float, since: float | None = None) -> Usage:
    """GPU-hours and cost from entering STARTING to leaving TERMINATING, every cycle (only
    the part after ``since`` when given: spend against credits granted then)."""
    gpu_hours = cost = 0.0
    for i, t in enumerate(history):
        if t.status not in BILLED:
            continue
        end = history[i + 1].at if i + 1 < len(history) else now
        start = t.at if since is None else max(t.at, since)
        hours = max(0.0, end - start) / 3600.0
        gpu_hours += hours * (t.gpus_billed or 0)
        cost += hours * (t.price_per_hour or 0.0)
    return Usage(gpu_hours, cost)


@dataclass(frozen=True)
class ClusterReport:
    cluster: ClusterRecord
    transitions: list[TransitionRecord]
    attempts: list[AttemptRecord]
    usage: Usage
    syncs: list[dict[str, Any]] = field(default_factory=list)  # artifact sync totals


class LogPage(NamedTuple):
    cluster: ClusterRecord
    rank: int
    lines: list[LogLine]
    dropped: int


class ClusterPage(NamedTuple):
    clusters: list[ClusterRecord]
    next_cursor: str | None


def _encode_cursor(last: ClusterRecord) -> str:
    import base64
    import json

    raw = json.dumps([last.created_at, last.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[float, str]:
    import base64
    import json

    from broker.diagnostics import Diagnostic

    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, last_id = json.loads(raw)
        if isinstance(at, bool) or not isinstance(at, int | float) or not isinstance(last_id, str):
            raise ValueError(cursor)
        return float(at), last_id
    except (ValueError, TypeError, UnicodeDecodeError):
        raise InvalidRequest(
            [Diagnostic(field="cursor", message="not a cursor this broker handed out")]
        ) from None


def _same_request(cluster: ClusterRecord, request: QuoteRequest, key: str) -> ClusterRecord:
    """The cluster a repeated Idempotency-Key made, if it was made for the same request;
    the same key for another request is a client bug: refused, never silently merged."""
    import json

    if cluster.request != json.loads(json.dumps(request.to_json_dict())):
        raise ConflictError(
            f"Idempotency-Key {key!r} was used for another request (cluster {cluster.id}); "
            "use a new key for a new request"
        )
    return cluster


def _check_backend(backend: str | None) -> None:
    if backend is not None and backend != SIMULATED:
        from broker.diagnostics import Diagnostic

        raise InvalidRequest(
            [
                Diagnostic(
                    field="backend",
                    message=f"must be None (the shapes' own clouds) or {SIMULATED!r}, "
                    f"got {backend!r}",
                )
            ]
        )


class Broker:
    """Quotes, provisions and tracks clusters; all state lives in one store."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        state_dir: Path | None = None,
        store_url: str | None = None,
        backend: str | None = None,
        sim_scenario: str | Path | None = None,
        catalog: Catalog | None = None,
        config: BrokerConfig | None = None,
        policy: ProvisionPolicy | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        progress: Progress | None = None,
        org: str | None = None,
        run_policy: RunPolicy | None = None,
        service_url: str | None = None,
        service_public: bool = False,
    ) -> None:
        """``settings`` (default: built-in defaults, no environment) says where things
        are; ``state_dir``/``store_url`` override it. Everything is validated here, before
        anything is written: the backend name, the scenario file, the policy numbers."""
        _check_backend(backend)
        base = settings or Settings()
        self.settings = base
        self.state_dir = state_dir or base.state_dir
        self.store_url = store_url if store_url is not None else base.state_url
        self.backend = backend  # "sim": the simulated cloud serves every shape
        self._catalog = catalog
        self._config = config
        self._policy = policy
        self.clock = clock
        self.sleep = sleep
        self.progress = progress
        # None: a local store, every cluster visible; a name: only that organisation's
        # clusters exist for this Broker (others are "not found"), and it owns new ones.
        self.org = org
        self._run_policy = run_policy
        # Where nodes reach the service (None: no service, so clusters only get machines
        # and no command runs on them, as with `broker provision` on its own).
        self.service_url = service_url
        self.service_public = service_public  # reachable by a real cloud's nodes
        self._providers: dict[str, Provider] = {}
        # Threads of this process winding clusters down (stop(within=), the service's
        # endings), each with its cluster's id: shared by its scoped copies, so a graceful
        # stop can wait for them (``aside``).
        self.winding: dict[threading.Thread, str] = {}
        scenario_path = sim_scenario if sim_scenario is not None else base.sim_scenario
        self.sim_scenario: SimScenario | None = None
        if scenario_path is not None:
            from providers.sim import load_scenario

            self.sim_scenario = load_scenario(scenario_path)  # a bad file: refused now

    def scoped(self, org: str) -> Broker:
        """This broker as one organisation sees it: the same store, catalog and clouds;
        only ``org``'s clusters visible; new clusters belong to ``org``."""
        import copy

        _ = self.store, self.catalog, self.owner  # share them, never open a second engine
        view = copy.copy(self)
        view.org = org
        return view

    def _find(self, cluster_id: str) -> ClusterRecord:
        if self.org is None:
            return self.store.find(cluster_id)
        return self.store.find(cluster_id, org=self.org)

    def _scope(self) -> str | Everyone | None:
        from broker.state import EVERYONE

        return EVERYONE if self.org is None else self.org

    # -- what it is built from (each loaded on first use) --------------------------------------

    @cached_property
    def artifact_store(self) -> ArtifactStore:
        """Where experiments' artifacts and datasets live: the configuration's
        ``[artifacts] url``, else ``file://<state dir>/artifacts`` (signed URLs served by this
        broker's service, at ``service_url``)."""
        from providers.storage.base import parse_store_url

        section = self.config.artifacts
        url = section.url or f"file://{(self.state_dir / 'artifacts').resolve()}"
        parsed = parse_store_url(url)
        if parsed.scheme == "file":
            from providers.storage.file import FileStore, signing_key

            return FileStore(
                parsed,
                public_url=self.service_url,
                secret=signing_key(self.state_dir),
                clock=self.clock,
            )
        from providers.storage.factory import open_store

        named = (("endpoint", section.endpoint), ("region", section.region))
        store: ArtifactStore = open_store(
            url, options={k: v for k, v in named if v}, environ=self.settings.credentials
        )
        return store

    @cached_property
    def catalog(self) -> Catalog:
        if self._catalog is not None:
            return self._catalog
        return load_catalog(self.settings.catalog_dir, cache_dir=self.settings.cache_dir)

    @cached_property
    def config(self) -> BrokerConfig:
        if self._config is not None:
            return self._config
        from providers.config import load_config

        return load_config(self.settings.config_path, required=self.settings.config_explicit)

    @cached_property
    def policy(self) -> ProvisionPolicy:
        if self._policy is not None:
            return self._policy
        from broker.provisioner import ProvisionPolicy

        return ProvisionPolicy(
            deployment=self.settings.deployment, lease_seconds=self.settings.lease_seconds
        )

    @cached_property
    def store(self) -> Store:
        from broker.state import Store

        return Store.open(self.state_dir, self.store_url)

    @cached_property
    def run_policy(self) -> RunPolicy:
        from broker.runs import RunPolicy

        return self._run_policy or RunPolicy()

    @cached_property
    def owner(self) -> str:
        from broker.lease import new_owner_id

        return new_owner_id()

    def _configured_regions(self) -> Mapping[str, frozenset[str]] | None:
        """Each enabled cloud's configured regions; None when there is no configuration
        (then every shape stays quotable, and nothing about clouds needs loading)."""
        if self._config is None and not self.settings.config_path.exists():
            if self.settings.config_explicit:
                _ = self.config  # raises the ConfigError naming the missing file
            return None
        config = self.config
        return {
            name: regions
            for name in config.broker.providers
            if (regions := config.regions(name)) is not None
        }

    # -- providers ----------------------------------------------------------------------------

    def provider(self, name: str) -> Provider:
        if name not in self._providers:
            from providers.registry import open_provider

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

    # -- quoting ------------------------------------------------------------------------------

    def blocks(self) -> list[Block]:
        """Scopes that recent failures block now (none when no store exists yet). A SQLite
        store is read with the standard library, so quoting never loads SQLAlchemy."""
        now = self.clock()
        if self.store_url or "store" in self.__dict__:
            return self.store.active_blocks(now)
        path = self.state_dir / STATE_DB_FILENAME
        try:
            return read_blocks_sqlite(path, now)
        except Exception as exc:  # sqlite3.Error, OSError: say which store, touch nothing
            raise StoreError(f"cannot read the blocks of the store {path}: {exc}") from None

    def unblock(self, scope: str | None = None) -> int:
        """Forget the block on this scope key (every block when None); how many went."""
        return self.store.unblock(scope)

    def _unavailable(
        self, backend: str | None, active: Sequence[Block] | None = None
    ) -> dict[str, str]:
        """Shapes that cannot be tried on ``backend`` (None: the real clouds): recent
        failures block them (``active``: the blocks, read now when None), or their region
        is not among a configured cloud's regions."""
        out: dict[str, str] = {}
        active = self.blocks() if active is None else active
        if active:
            from providers.clouds import quota_bucket

            out = blocked_shapes(
                self.catalog.shapes, active, self._backend_of(backend), quota_bucket
            )
        if backend is None:
            regions = self._configured_regions()
            if regions is not None:
                for shape in self.catalog.shapes:
                    allowed = regions.get(shape.provider)
                    if allowed is not None and shape.region not in allowed:
                        out.setdefault(
                            shape.key,
                            f"region {shape.region} is not in [{shape.provider}] regions",
                        )
        return out

    def quote(
        self, request: QuoteRequest, *, explain: bool = False, backend: str | None = None
    ) -> Quote:
        """Rank and price what ``provision`` would try: shapes known to be unavailable now
        (blocked, or outside a configured cloud's regions) are excluded, with the reason."""
        chosen = backend if backend is not None else self.backend
        active = self.blocks()
        return quote(
            request,
            self.catalog,
            unavailable=self._unavailable(chosen, active),
            blocked_zones=self._blocked_zones(chosen, active),
            explain=explain,
        )

    def _blocked_zones(
        self, backend: str | None, active: Sequence[Block]
    ) -> dict[str, frozenset[str]]:
        """Shapes priced by zone with some zones blocked now: ranked at the cheapest zone
        left, as the provisioner will try them."""
        zoned = self.catalog.zoned
        if not active or not zoned:
            return {}
        shapes = self.catalog.shapes
        return blocked_zones((shapes[i] for i in zoned), active, self._backend_of(backend))

    # -- provisioning -------------------------------------------------------------------------

    def submit(
        self,
        request: QuoteRequest,
        *,
        experiment: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> ClusterRecord:
        """Validate the request and record it as a PENDING cluster (durable; returns at
        once). Raises InvalidRequest, or NoShape when no catalog shape passes its filters,
        before anything is written. A repeated ``idempotency_key`` (per organisation)
        returns the cluster the first submission made."""
        if idempotency_key is not None:
            existing = self.store.by_idempotency_key(self.org, idempotency_key)
            if existing is not None:
                return _same_request(existing, request, idempotency_key)
        ranked = quote(request, self.catalog)  # availability aside
        if not ranked.plans:
            ranked = quote(request, self.catalog, explain=True)  # only to say how many
            raise NoShape(
                f"no shape can serve this request ({len(ranked.ranking.excluded)} excluded; "
                "`broker quote --explain` says why)"
            )
        if (
            self.service_url is not None  # its nodes run the command: inputs must exist
            and experiment is not None
            and (experiment.get("dataset_id_list") or experiment.get("input_artifact_id_list"))
        ):
            from broker.artifacts import missing_inputs

            missing = missing_inputs(self.artifact_store, self.org, experiment)
            if missing:
                raise InvalidRequest(missing)
        self._check_credits(ranked.plans[0].price_per_hour)
        if experiment is not None and experiment.get("image") is None:
            default = self.config.node.image  # the configuration's [node] image
            if default is not None:
                experiment = {**experiment, "image": default}
        made = self.store.create_cluster(
            f"bb-{os.urandom(6).hex()}",
            request=request.to_json_dict(),
            experiment=experiment,
            backend=self.backend,
            now=self.clock(),
            org=self.org,
            idempotency_key=idempotency_key,
        )
        if idempotency_key is not None:  # another submission may have won the key meanwhile
            return _same_request(made, request, idempotency_key)
        return made

    def run(self, cluster_id: str) -> ClusterRecord:
        """Provision a PENDING cluster: the fallback loop, holding its lease. Raises
        ProvisionFailed, CleanupFailed, Cancelled or Interrupted (broker.errors)."""
        cluster = self._find(cluster_id)
        request = QuoteRequest.from_json_dict(cluster.request)
        ranked = self.quote(request, backend=cluster.backend, explain=True)
        if self.progress:
            self.progress(f"cluster {cluster.id}: {len(ranked.plans)} candidate plan(s)")
        from collections import Counter

        from broker.ranking import Rule

        skipped = Counter(  # shapes the ranking left out as unavailable: skipped without a call
            "not configured" if " is not in [" in e.reason else "blocked"
            for e in ranked.ranking.excluded
            if e.rule is Rule.UNAVAILABLE
        )
        from broker.provisioner import Provisioner
        from providers.clouds import quota_bucket

        backend_of = self._backend_of(cluster.backend)
        agent, bootstrap, token_id = self._node_boot(cluster)
        provisioner = Provisioner(
            self.store,
            lambda shape: self.provider(backend_of(shape)),
            backend_of=backend_of,
            bucket_of=quota_bucket,
            policy=self.policy,
            clock=self.clock,
            sleep=self.sleep,
            progress=self.progress,
            owner=self.owner,
            agent=agent,
            bootstrap=bootstrap,
            drain=self._drain_agents,
        )
        try:
            running = provisioner.run(cluster.id, ranked.plans, skipped=skipped, current=cluster)
        except BaseException:
            if token_id is not None:
                self._drop_token_if_ended(cluster, token_id)
            raise
        if agent is not None:  # a quick command may have ended before RUNNING was recorded
            from broker.runs import outcome

            ending = outcome(running, self.store.agents(running.id, running.cycle))
            if ending is not None:
                return self.finish(ending)
        return running

    def _drop_token_if_ended(self, cluster: ClusterRecord, token_id: str) -> None:
        """A provisioning that raised: when the cluster has ended (no capacity anywhere,
        an error), no gang uses its node token, which is revoked. A cluster still going on
        keeps it: a stop's wind-down (TERMINATING) drains the agents with it and revokes
        it after; a cluster left STARTING is settled by reconcile, which revokes it. Best
        effort: a store that cannot be reached leaves it to the cluster's end."""
        from shapes.errors import BrokerError

        try:
            if self.store.get(cluster.id).status in TERMINAL:
                self.store.revoke_node_token(token_id, now=self.clock())
        except BrokerError:
            pass

    def _node_boot(
        self, cluster: ClusterRecord
    ) -> tuple[AgentLaunch | None, str | None, str | None]:
        """How this cluster's nodes start the agent: a fresh node token for this cycle,
        the agent's parameters (the simulated cloud), the boot script (the clouds) and the
        token's id. None when the cluster has no command or no service is there to run it."""
        from broker.runs import command_of

        if self.service_url is None or command_of(cluster) is None:
            return None, None, None
        if cluster.backend != SIMULATED and not self.service_public:
            return None, None, None  # refused at submit by the service; machines only
        from broker.agent.bootstrap import bootstrap_script
        from broker.tokens import create_node_token
        from providers.base import AgentLaunch

        token, record = create_node_token(self.store, cluster.id, cluster.org, now=self.clock())
        agent_path = Path(__file__).resolve().parent / "agent" / "agent.py"
        launch = AgentLaunch(self.service_url, cluster.id, token, agent_path=str(agent_path))
        if cluster.backend == SIMULATED:
            return launch, None, record.id
        script = bootstrap_script(
            service_url=self.service_url, cluster_id=cluster.id, node_token=token
        )
        return launch, script, record.id

    def provision(
        self, request: QuoteRequest, *, experiment: Mapping[str, Any] | None = None
    ) -> ClusterRecord:
        """Bring up a whole cluster: ``submit`` then ``run``."""
        return self.run(self.submit(request, experiment=experiment).id)

    def restart(self, cluster_id: str) -> ClusterRecord:
        """Run a finished cluster's lifecycle again, as a new cycle, on the backend it was
        provisioned on; its history is kept."""
        return self.run(self.requeue(cluster_id).id)

    def requeue(self, cluster_id: str) -> ClusterRecord:
        """Make a finished cluster PENDING again, as a new cycle (a worker runs it)."""
        cluster = self._find(cluster_id)
        return self.store.transition(cluster.id, Status.PENDING, now=self.clock(), expect=TERMINAL)

    # -- tracking -----------------------------------------------------------------------------

    def get(self, cluster_id: str) -> ClusterRecord:
        return self._find(cluster_id)

    def list_clusters(
        self, statuses: Collection[Status] | None = None, *, limit: int | None = 50
    ) -> list[ClusterRecord]:
        """The newest ``limit`` clusters in these statuses (None: all), oldest first."""
        return self.store.list_clusters(statuses, limit=limit, org=self._scope())

    def page_clusters(
        self,
        statuses: Collection[Status] | None = None,
        *,
        mode: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> ClusterPage:
        """One page of clusters, newest first, and the cursor of the next page (None at
        the end). The cursor is opaque; a malformed one is InvalidRequest."""
        before = _decode_cursor(cursor) if cursor else None
        found = self.store.page_clusters(
            org=self._scope(), statuses=statuses, mode=mode, limit=limit + 1, before=before
        )
        page = found[:limit]
        nxt = _encode_cursor(page[-1]) if len(found) > limit else None
        return ClusterPage(page, nxt)

    def pending(self, limit: int = 16) -> list[ClusterRecord]:
        """PENDING clusters, oldest first: what a worker picks up next."""
        pending = self.store.list_clusters({Status.PENDING}, limit=limit, org=self._scope())
        return sorted(pending, key=lambda c: (c.created_at, c.id))

    def attempts(self, cluster_id: str) -> list[AttemptRecord]:
        return self.store.attempts(self._find(cluster_id).id)

    def describe(self, cluster_id: str) -> ClusterReport:
        cluster = self._find(cluster_id)
        history = self.store.transitions(cluster.id)
        return ClusterReport(
            cluster,
            history,
            self.store.attempts(cluster.id),
            accrue(history, self.clock()),
            self.store.syncs(cluster.id),
        )

    # -- credits ------------------------------------------------------------------------------

    def set_credits(self, org: str, usd: float) -> None:
        """Grant ``org`` ``usd`` of credits from now on (replacing an earlier grant)."""
        import math

        from broker.tokens import check_org

        if isinstance(usd, bool) or not isinstance(usd, int | float) or not math.isfinite(usd):
            raise InvalidRequest([Diagnostic(field="usd", message="must be a number")])
        if usd < 0:
            raise InvalidRequest([Diagnostic(field="usd", message=f"must be >= 0, got {usd}")])
        self.store.set_credits(check_org(org), float(usd), now=self.clock())

    def credit_status(self, org: str | None = None) -> list[CreditStatus]:
        """The credits of ``org`` (this broker's organisation when None), or of every
        organisation with a grant (an unscoped broker, ``org`` None)."""
        from broker.credits import credit_status

        who = org or self.org
        orgs = [who] if who is not None else sorted(self.store.credits())
        found = [credit_status(self.store, o, self.clock()) for o in orgs]
        return [s for s in found if s is not None]

    def _check_credits(self, first_hour: float) -> None:
        if self.org is None:
            return  # local use: no organisation, no credits
        from broker.credits import credit_status

        status = credit_status(self.store, self.org, self.clock())
        if status is not None and first_hour > status.remaining:
            raise CreditsExhausted(
                f"organisation {self.org!r} has ${max(status.remaining, 0):,.2f} of credits left "
                f"(${status.granted:,.2f} granted, ${status.spent:,.2f} spent); the cheapest plan "
                f"costs ${first_hour:,.2f} for its first hour"
            )

    # -- artifacts ----------------------------------------------------------------------------

    def artifacts(self, cluster_id: str, kind: str | None = None) -> list[Artifact]:
        """The files the experiment wrote (its nodes' syncs), every cycle together."""
        from broker.artifacts import check_kind, list_artifacts

        cluster = self._find(cluster_id)
        return list_artifacts(
            self.artifact_store, cluster, None if kind is None else check_kind(kind)
        )

    def artifact_link(self, cluster_id: str, path: str, *, expires: float = 600.0) -> Any:
        """A signed GET (``SignedRequest``) of one artifact, ``<kind>/rank-<r>/<file>``."""
        from broker.artifacts import artifact_key
        from providers.storage.base import NotFound

        key = artifact_key(self._find(cluster_id), path)
        try:
            return self.artifact_store.download(key, expires=expires)
        except NotFound:
            raise NotFoundError(f"no artifact {path!r} in cluster {cluster_id}") from None

    def fetch_artifact(self, cluster_id: str, path: str, dest: Path) -> int:
        """Copy one artifact to ``dest`` (a file path); the bytes copied."""
        from broker.artifacts import artifact_key
        from providers.storage.file import FileStore

        key = artifact_key(self._find(cluster_id), path)
        store = self.artifact_store
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.part")
        if isinstance(store, FileStore):  # the same host: no URL needed
            source = store.path_for(key)
            if not source.is_file():
                raise NotFoundError(f"no artifact {path!r} in cluster {cluster_id}")
            shutil.copyfile(source, tmp)
        else:
            import urllib.request

            link = self.artifact_link(cluster_id, path)
            request = urllib.request.Request(link.url, headers=dict(link.headers))
            with urllib.request.urlopen(request, timeout=60) as answer, tmp.open("wb") as out:
                shutil.copyfileobj(answer, out, 1024 * 1024)
        os.replace(tmp, dest)
        return dest.stat().st_size

    def env(self, cluster_id: str, rank: int) -> dict[str, str]:
        from broker.env import node_env
        from broker.runs import history_for_limit

        cluster = self._find(cluster_id)
        return node_env(cluster, rank, history=history_for_limit(self, cluster))

    def util(self) -> dict[str, dict[str, float]]:
        """GPUs starting and running, and spend per hour, per provider (or backend)."""
        out: dict[str, dict[str, float]] = defaultdict(
            lambda: {"gpus_starting": 0, "gpus_running": 0, "clusters": 0, "spend_per_hour": 0.0}
        )
        for c in self.store.list_clusters(BILLED, org=self._scope()):
            key = f"{c.backend}:{c.provider}" if c.backend else str(c.provider)
            row = out[key]
            row["clusters"] += 1
            row["gpus_starting" if c.status is Status.STARTING else "gpus_running"] += (
                c.gpus_billed or 0
            )
            row["spend_per_hour"] += c.price_per_hour or 0.0
        return dict(out)

    def util_credits(self) -> CreditsSummary:
        """The credits part of ``util``: this organisation's (granted or not), or for an
        unscoped broker every organisation's with a grant or a live cluster (bounded)."""
        from broker.credits import util_credits

        return util_credits(self.store, self.org, self.clock())

    # -- ending clusters ----------------------------------------------------------------------

    def release(self, cluster_id: str, *, within: float | None = None) -> ClusterRecord:
        """The owner is done: terminate the nodes, then COMPLETED. A finished cluster is
        returned as it is (releasing twice is no error). ``within``: see :meth:`stop`."""
        return self._end(cluster_id, Status.COMPLETED, within=within)

    def stop(self, cluster_id: str, *, within: float | None = None) -> ClusterRecord:
        """Stop before completion (also cancels a provisioning in flight): STOPPED. A
        finished cluster is returned as it is.

        ``within`` (seconds; None: wait for the end): the wind-down (the commands' stop and
        final artifact sync, then the nodes' termination) goes on in a thread of this
        process, and the cluster is returned as it is after at most that long, TERMINATING
        if it has not ended yet. The service answers a stop this way: a final sync may take
        minutes, longer than any HTTP call should."""
        return self._end(cluster_id, Status.STOPPED, within=within)

    def _end(
        self,
        cluster_id: str,
        final: Status,
        *,
        reason: str | None = None,
        detail: str | None = None,
        within: float | None = None,
    ) -> ClusterRecord:
        from broker.teardown import WindDown

        cluster = self._find(cluster_id)
        if cluster.status in TERMINAL:
            return cluster
        if cluster.status is Status.TERMINATING:
            if cluster.lease_live(self.clock()):
                return cluster  # someone else is winding it down right now
            if cluster.ending is not None:  # its owner died meanwhile: finish it as it meant
                final, reason, detail = cluster.ending, cluster.reason, cluster.detail
        elif final is Status.COMPLETED and cluster.status is not Status.RUNNING:
            raise ConflictError(
                f"cluster {cluster.id} is {cluster.status.value}; only a RUNNING cluster can "
                "be released (use `broker stop` to cancel a provisioning)"
            )
        how = WindDown(final, self.owner, self.policy.lease_seconds, reason=reason, detail=detail)
        if within is None:
            return self._wind_down(cluster, how)[0]
        done: list[threading.Event] = []  # set once the rest, handed to a thread, has ended
        ended = self._wind_down(
            cluster, how, aside=lambda rest: done.append(self.aside(cluster.id, rest))
        )[0]
        if not done:
            return ended  # nothing to wind down: ended already
        done[0].wait(within)
        return self._find(cluster.id)  # ended, or TERMINATING while the thread goes on

    def aside(
        self, cluster_id: str, work: Callable[[], object], what: str = "end"
    ) -> threading.Event:
        """Run ``work``, a cluster's wind-down, in a thread of this process, listed in
        ``winding`` while it runs; the Event is set when it has ended, well or not. Its
        errors are logged with the cluster's id: the cluster stays TERMINATING under a
        lease that runs out, and reconcile finishes it."""
        import logging
        import threading

        from shapes.errors import BrokerError

        done = threading.Event()

        def run() -> None:
            log = logging.getLogger("broker")
            try:
                work()
            except BrokerError as exc:
                log.warning("cluster %s: cannot end it: %s", cluster_id, exc)
            except Exception:  # a bug: say which cluster, keep the process up
                log.exception("cluster %s: unexpected error while ending it", cluster_id)
            finally:
                self.winding.pop(thread, None)
                done.set()

        thread = threading.Thread(target=run, name=f"broker-{what}-{cluster_id}", daemon=True)
        self.winding[thread] = cluster_id
        thread.start()
        return done

    def finish(self, ending: Ending) -> ClusterRecord:
        """End a cluster as its agents' reports decided (COMPLETED, FAILED Error, ...). A
        lost node (Preempted, NodeLost) of an experiment with a recovery left winds the gang
        down and makes the cluster PENDING as its next cycle instead (broker.recovery): a
        worker of the service provisions it again."""
        from broker.recovery import RECOVERABLE

        detail = ending.detail
        if ending.final is Status.FAILED and ending.reason in RECOVERABLE:
            recovered, detail = self._recover(ending)
            if recovered is not None:
                return recovered
        return self._end(ending.cluster_id, ending.final, reason=ending.reason, detail=detail)

    def _recover(self, ending: Ending) -> tuple[ClusterRecord | None, str | None]:
        """The cluster PENDING as its next cycle, its gang gone and the lost zone blocked;
        or None and the FAILED detail when it has no recovery left (or is not an
        experiment, or is not up any more)."""
        from broker.recovery import (
            exhausted_detail,
            max_recoveries_of,
            recoveries_made,
            recovery_detail,
        )
        from broker.runs import command_of
        from broker.teardown import WindDown

        cluster = self._find(ending.cluster_id)
        if command_of(cluster) is None or cluster.status not in (Status.STARTING, Status.RUNNING):
            return None, ending.detail
        limit = max_recoveries_of(cluster)
        used = recoveries_made(self.store.transitions(cluster.id))
        if used >= limit:
            return None, exhausted_detail(used, limit, ending.detail)
        self._block_lost_zone(cluster, ending)
        detail = recovery_detail(used, limit, ending.detail)
        how = WindDown(
            Status.PENDING,
            self.owner,
            self.policy.lease_seconds,
            reason=ending.reason,
            detail=detail,
        )
        # The old cycle's tokens go before it is PENDING: a worker of any replica may make
        # the next cycle's token as soon as it is.
        recovered = self._wind_down(cluster, how)[0]
        if self.progress:
            self.progress(f"{cluster.id}: {detail}; queued again as cycle {recovered.cycle}")
        return recovered, None

    def _block_lost_zone(self, cluster: ClusterRecord, ending: Ending) -> None:
        """Keep the next cycle (and every other cluster) out of the zone that lost the node
        for as long as a stockout blocks it."""
        from broker.scopes import BlockScope

        shape = self.catalog.get(cluster.shape_id) if cluster.shape_id else None
        if shape is None or not cluster.zone:
            return
        backend = cluster.backend or shape.provider
        now = self.clock()
        until = now + self.policy.capacity_block
        reason = (
            f"{ending.reason} (a node of {cluster.id} was lost there) until "
            f"{time.strftime('%H:%M:%S', time.gmtime(until))} UTC"
        )
        self.store.block(
            BlockScope.zone_of(backend, shape, cluster.zone), reason=reason, until=until, now=now
        )

    def _wind_down(
        self,
        cluster: ClusterRecord,
        how: WindDown,
        aside: Callable[[Callable[[], object]], None] | None = None,
    ) -> tuple[ClusterRecord, list[Node]]:
        """broker.teardown.wind_down on the cluster's cloud, as every ending of an
        experiment goes: its commands stop and their artifacts get the final sync first
        (``_drain_agents``), and its node tokens are revoked before anyone sees the end."""
        from broker.teardown import wind_down

        return wind_down(
            self.store,
            cluster,
            how,
            self._cluster_provider(cluster),
            clock=self.clock,
            sleep=self.sleep,
            before_terminate=self._drain_agents,
            after_terminate=self._revoke_node_tokens,
            aside=aside,
        )

    def _revoke_node_tokens(self, cluster: ClusterRecord) -> None:
        self.store.revoke_cluster_tokens(cluster.id, now=self.clock())

    def _drain_agents(self, cluster: ClusterRecord) -> None:
        """Before its nodes go: give a running command ``stop_grace`` to stop and its
        artifacts their final sync (``final_sync_timeout``): agents hear "stop" on their next
        call, signal the command, sync, and report its exit. An agent that stopped calling
        (silent for three heartbeats: it keeps beating while it syncs) is not waited for, nor
        one whose node the cloud says is terminated (a preempted node after its notice: the
        cloud is asked after DRAIN_LOOK_AFTER s of waiting, then every DRAIN_LOOK_EVERY s)."""
        from broker.runs import command_of

        if command_of(cluster) is None:
            return
        policy = self.run_policy
        start = self.clock()
        deadline = start + policy.stop_grace + policy.final_sync_timeout + policy.heartbeat_every
        silent = min(policy.heartbeat_timeout, 3 * policy.heartbeat_every + 1)
        said = False
        gone: set[int] = set()  # ranks whose node the cloud no longer runs
        look_at = start + DRAIN_LOOK_AFTER
        pause = DRAIN_POLL[0]  # store reads slow down as the wait goes on: many gangs may
        while self.clock() < deadline:  # drain at once (a zone's spot nodes all preempted)
            now = self.clock()
            if now >= look_at:
                gone = self._gone_ranks(cluster)
                look_at = now + DRAIN_LOOK_EVERY
            agents = self.store.agents(cluster.id, cluster.cycle)
            waiting = [
                a
                for a in agents
                if a.exited_at is None  # registered agents are waited for, started or not:
                and now - (a.heartbeat_at or a.started_at or a.registered_at) <= silent
                and a.rank not in gone
            ]
            if not waiting:
                return
            if not said and self.progress is not None:
                said = True
                self.progress(
                    f"{cluster.id}: waiting up to {deadline - now:.0f} s for the command on "
                    f"{len(waiting)} node(s) to stop and its artifacts' final sync"
                )
            self.sleep(pause)
            pause = min(DRAIN_POLL[1], pause * 1.5)

    def _gone_ranks(self, cluster: ClusterRecord) -> set[int]:
        """The ranks of the gang whose node the cloud says is terminated or no longer lists
        (none when it cannot be asked now: the drain goes on waiting as before). A node that
        is stopping is not gone: a GCP VM is STOPPING through its preemption notice, while
        its agent's final sync runs."""
        from providers.base import NodeState
        from shapes.errors import BrokerError

        provider = self._cluster_provider(cluster)
        if provider is None:
            return set()
        try:
            there = {
                n.provider_id
                for n in provider.describe(cluster.id)
                if n.state is not NodeState.TERMINATED
            }
        except BrokerError:
            return set()
        return {n.rank for n in cluster.nodes if n.provider_id not in there}

    def logs(
        self,
        cluster_id: str,
        rank: int = 0,
        *,
        tail: int | None = 100,
        after: int | None = None,
        wait: float = 0.0,
    ) -> LogPage:
        """A rank's output as its agent sent it (the last ``tail`` lines, or the lines after
        the line id ``after``) and how many were lost (the per-rank cap, or the agent's
        own spool). With ``after`` and ``wait``, waits up to ``wait`` seconds for a new line
        while the cluster is live (following a log is calling again with the last id)."""
        cluster = self._find(cluster_id)
        deadline = self.clock() + wait
        while True:
            lines = self.store.log_tail(cluster.id, rank, tail=tail, after=after)
            if lines or after is None or cluster.status in TERMINAL or self.clock() >= deadline:
                break
            self.sleep(0.25)
            cluster = self._find(cluster.id)
        agents = [a for a in self.store.agents(cluster.id, cluster.cycle) if a.rank == rank]
        dropped = agents[0].log_dropped if agents else 0
        return LogPage(cluster, rank, lines, dropped)

    def delete(self, cluster_id: str) -> None:
        """Forget a finished cluster (COMPLETED, STOPPED or FAILED only)."""
        cluster = self._find(cluster_id)
        self.store.delete_cluster(cluster.id, allowed=TERMINAL)

    # -- API tokens (organisations) ------------------------------------------------------------

    def create_token(
        self, org: str, *, name: str = "token", role: str = "member"
    ) -> tuple[str, TokenRecord]:
        """A new API token for ``org``: (its secret, shown only now; its record). A scoped
        broker creates tokens only for its own organisation."""
        from broker.tokens import create_token

        if self.org is not None and org != self.org:
            raise NotFoundError(f"no organisation {org!r}")
        return create_token(self.store, org, name=name, role=role, now=self.clock())

    def list_tokens(self) -> list[TokenRecord]:
        """Every token (a scoped broker: its organisation's), revoked ones included."""
        return self.store.list_tokens(self.org)

    def revoke_token(self, token_id: str) -> TokenRecord:
        """Revoke a token by id; revoking a revoked token is no error."""
        found = [t for t in self.store.list_tokens(self.org) if t.id == token_id]
        if not found:
            raise NotFoundError(f"no token {token_id!r}")
        self.store.revoke_token(token_id, now=self.clock(), org=self.org)
        return next(t for t in self.store.list_tokens(self.org) if t.id == token_id)

    def authenticate(self, token: str) -> Principal | None:
        """Who holds this token, or None (unknown, malformed, revoked)."""
        from broker.tokens import authenticate

        return authenticate(self.store, token)

    # -- reconciliation -----------------------------------------------------------------------

    def sweep_backends(self) -> list[str]:
        """Where tagged nodes may be: every cloud the configuration enables (a node may be
        there even when the store has forgotten its cluster), and the simulated cloud once
        it exists. Costs no scan of the store."""
        from providers.registry import sim_exists

        names = set(self.config.broker.providers)
        if self.backend == SIMULATED or sim_exists(self.state_dir):
            names.add(SIMULATED)
        return sorted(names)

    def reconcile(self, hand_off: Callable[[Ending], None] | None = None) -> ReconcileReport:
        """Settle clusters whose owner's lease expired, fail RUNNING gangs that lost a node,
        and terminate every tagged node of this deployment that no live cluster owns.
        Safe to run at any time, from any process on any host, several at once.
        ``hand_off``: ends an experiment that lost a node in the background (the service's
        ``finish``), so one gang's drain does not hold up the rest of the pass."""
        from broker.reconcile import Reconciler

        return Reconciler(self, hand_off).run()


__all__ = ["SIMULATED", "Broker", "ClusterPage", "ClusterReport", "LogPage", "Usage", "accrue"]

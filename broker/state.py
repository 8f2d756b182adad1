"""The broker's durable state: clusters, their transitions and attempts, blocked scopes, leases.

SQLAlchemy Core over SQLite by default (``<state dir>/broker.sqlite``), or PostgreSQL for
several broker hosts: ``BROKER_STATE_URL=postgresql+psycopg://user:password@127.0.0.1:5432/broker``
(``pip install 'burst-broker[postgres]'``; a plain ``postgresql://`` URL means psycopg too).
The password is never printed: messages and reprs name the store with ``***`` in its place.

Schema: versioned by Alembic migrations (broker.migrations). Opening a store checks its
revision: a brand-new empty database is created through the migrations (on PostgreSQL under
an advisory lock, so replicas starting together never race to create it); SQLite upgrades an
older store itself (under its write lock); a PostgreSQL store at an older revision is refused
with a message naming ``broker db upgrade``, which applies them (:meth:`Store.upgrade`).

Concurrency: every change is one transaction. On SQLite, transactions start with
``BEGIN IMMEDIATE`` (one writer at a time, others wait up to 30 s) in WAL mode; every status
change is also a compare-and-set on a version column, so two processes racing to move the
same cluster cannot both win, whatever the database. Writes that several processes can make
at once (blocks, quota readings, named leases, agents, credits, sync totals) are upserts
(``INSERT ... ON CONFLICT``) or conditional updates, never "read, then insert". Workers claim
PENDING clusters with :meth:`Store.claim_pending` (``SELECT ... FOR UPDATE SKIP LOCKED`` on
PostgreSQL), so two replicas never take the same one.

Ownership: whoever provisions or winds down a cluster holds its *lease* (owner id and expiry)
and renews it while it waits on a cloud; ``reconcile`` settles only clusters whose lease has
expired, on any host. Named leases (one row each) serialise broker-wide chores such as the
orphan sweep.

Every database failure leaves this module as a :class:`StoreError` that names the store
(never its password); the store file is never modified or deleted to recover from one.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import (
    JSON,
    Column,
    Connection,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, RowMapping, make_url

from broker.errors import ConflictError, NotFoundError, StateError, StoreError
from broker.lifecycle import ALLOWED, TERMINAL, Status
from broker.migrations import HEAD, REVISIONS
from broker.scopes import Block, BlockScope, block_from_row
from broker.settings import STATE_DB_FILENAME

metadata = MetaData()

clusters = Table(
    "clusters",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("created_at", Float, nullable=False, index=True),
    Column("updated_at", Float, nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("reason", String(32)),
    Column("detail", Text),
    Column("cycle", Integer, nullable=False),
    Column("request", JSON, nullable=False),
    Column("experiment", JSON),
    Column("backend", String(32)),  # "sim", or None for the shape's own cloud
    Column("shape_id", String(255)),
    Column("provider", String(32)),
    Column("region", String(64)),
    Column("zone", String(64)),
    Column("nodes_count", Integer),
    Column("procs_per_node", Integer),
    Column("gpus_billed", Integer),
    Column("price_per_hour", Float),
    Column("nodes", JSON),
    Column("owner", String(255)),  # the lease holder: who provisions or winds it down
    Column("lease_until", Float),  # clock time the owner's lease runs out
    Column("ending", String(16)),  # while TERMINATING: the final status it is heading for
    Column("version", Integer, nullable=False),
    # The organisation whose token submitted it (None: a local, single-user store).
    Column("org", String(128)),
    Column("mode", String(16)),  # compute mode of its experiment ("burst")
    Column("idempotency_key", String(255)),  # a submission's Idempotency-Key, per org
    Index("clusters_org_created", "org", "created_at"),
    Index("clusters_org_idempotency", "org", "idempotency_key", unique=True),
    # The list filters (migration 0002): the PENDING queue in creation order, and an
    # organisation's clusters by status or by compute mode, newest first.
    Index("clusters_status_created", "status", "created_at"),
    Index("clusters_org_status_created", "org", "status", "created_at"),
    Index("clusters_org_mode_created", "org", "mode", "created_at"),
)

transitions = Table(
    "transitions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("cluster_id", String(64), ForeignKey("clusters.id"), nullable=False, index=True),
    Column("cycle", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("at", Float, nullable=False),
    Column("reason", String(32)),
    Column("detail", Text),
    Column("price_per_hour", Float),  # of the plan being attempted, for accounting
    Column("gpus_billed", Integer),
)

attempts = Table(
    "attempts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("cluster_id", String(64), ForeignKey("clusters.id"), nullable=False, index=True),
    Column("cycle", Integer, nullable=False),
    Column("attempt_no", Integer, nullable=False),
    Column("shape_id", String(255), nullable=False),
    Column("provider", String(32), nullable=False),
    Column("backend", String(32), nullable=False),
    Column("region", String(64), nullable=False),
    Column("zone", String(64), nullable=False),
    Column("nodes", Integer, nullable=False),
    Column("token", String(64), nullable=False),
    Column("started_at", Float, nullable=False),
    Column("ended_at", Float),
    Column("outcome", String(16), nullable=False),  # an AttemptOutcome
    Column("error_code", String(64)),
    Column("reach", String(16)),
    Column("reason", String(32)),
    Column("message", Text),
    Column("retries", Integer, nullable=False),
    Column("nodes_created", Integer, nullable=False),
    Column("nodes_cleaned", Integer, nullable=False),
)

blocks = Table(
    "blocks",
    metadata,
    Column("scope", String(400), primary_key=True),  # BlockScope.key
    Column("kind", String(16)),
    Column("backend", String(32)),
    Column("provider", String(32)),
    Column("region", String(64)),
    Column("zone", String(64)),
    Column("instance_type", String(255)),
    Column("bucket", String(128)),
    Column("provisioning", String(16)),
    Column("reason", Text, nullable=False),
    Column("until", Float, nullable=False),
    Column("created_at", Float, nullable=False),
)

tokens = Table(
    "tokens",
    metadata,
    Column("id", String(32), primary_key=True),  # public: shown by `token list`, used to revoke
    Column("org", String(128), nullable=False, index=True),
    Column("name", String(255), nullable=False),
    Column("role", String(16), nullable=False),
    Column("digest", String(64), nullable=False, unique=True),  # sha256 of the secret
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float),
    Column("cluster_id", String(64)),  # a node token: the one cluster whose agents it serves
)

agents = Table(
    "agents",
    metadata,
    Column("cluster_id", String(64), ForeignKey("clusters.id"), primary_key=True),
    Column("cycle", Integer, primary_key=True),
    Column("rank", Integer, primary_key=True),
    Column("address", String(64), nullable=False),
    Column("instance_id", String(255)),
    Column("registered_at", Float, nullable=False),
    Column("started_at", Float),
    Column("pid", Integer),
    Column("heartbeat_at", Float),
    Column("exited_at", Float),
    Column("exit_code", Integer),
    Column("exit_signal", Integer),
    Column("exit_reason", String(32)),
    Column("exit_tail", JSON),  # the last lines the agent saw, for the failure's detail
    Column("log_next_seq", Integer, nullable=False),  # the next line number expected
    Column("log_dropped", Integer, nullable=False),  # lines lost: by the agent or the cap
)

log_lines = Table(
    "log_lines",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("cluster_id", String(64), ForeignKey("clusters.id"), nullable=False),
    Column("cycle", Integer, nullable=False),
    Column("rank", Integer, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("line", Text, nullable=False),
    Index("log_lines_cluster_rank", "cluster_id", "rank", "id"),
)

artifact_syncs = Table(  # per rank and kind: what the agent's syncs sent (broker.artifacts)
    "artifact_syncs",
    metadata,
    Column("cluster_id", String(64), ForeignKey("clusters.id"), primary_key=True),
    Column("cycle", Integer, primary_key=True),
    Column("rank", Integer, primary_key=True),
    Column("kind", String(16), primary_key=True),
    Column("files", Integer, nullable=False),  # sent, every sync of the cycle together
    Column("bytes", Integer, nullable=False),
    Column("failed", Integer, nullable=False),  # files the last sync could not send
    Column("errors", JSON),  # the last sync's messages (a few)
    Column("final_at", Float),  # when the final sync reported; None: not yet
    Column("updated_at", Float, nullable=False),
)

quota_readings = Table(  # the clouds' quotas as last read (broker.quotas): a short-lived cache
    "quota_readings",
    metadata,
    Column("provider", String(32), primary_key=True),  # the adapter's name: aws, ..., sim
    Column("region", String(64), primary_key=True),  # or "global"
    Column("bucket", String(128), primary_key=True),  # "" marks the read of a whole region
    Column("name", String(255)),
    Column("unit", String(8)),
    Column("market", String(16)),
    Column("quota_limit", Float),
    Column("usage", Float),
    Column("note", Text),  # the region marker: what could not be read, and why
    Column("read_at", Float, nullable=False),
)

credits = Table(  # an organisation's grant: spend since granted_at counts against it
    "credits",
    metadata,
    Column("org", String(64), primary_key=True),
    Column("usd", Float, nullable=False),
    Column("granted_at", Float, nullable=False),
)

leases = Table(
    "leases",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("owner", String(255), nullable=False),
    Column("until", Float, nullable=False),
)


class Everyone:
    """The scope of an unscoped query: every organisation's clusters (local use, workers)."""

    def __repr__(self) -> str:
        return "EVERYONE"


EVERYONE = Everyone()


def _agent_key(cluster_id: str, cycle: int, rank: int) -> Any:
    return (agents.c.cluster_id == cluster_id) & (agents.c.cycle == cycle) & (agents.c.rank == rank)


def _transition(r: RowMapping) -> TransitionRecord:
    return TransitionRecord(
        cycle=r["cycle"],
        status=Status(r["status"]),
        at=r["at"],
        reason=r["reason"],
        detail=r["detail"],
        price_per_hour=r["price_per_hour"],
        gpus_billed=r["gpus_billed"],
    )


IN_CHUNK = 500  # ids per IN (...): SQLite caps bound parameters per statement


def _chunks(ids: Sequence[str]) -> list[list[str]]:
    return [list(ids[i : i + IN_CHUNK]) for i in range(0, len(ids), IN_CHUNK)]


def _org_is(org: str | None) -> Any:
    return clusters.c.org.is_(None) if org is None else clusters.c.org == org


def _upsert(
    conn: Connection,
    table: Table,
    values: Mapping[str, Any],
    *,
    keys: Sequence[str],
    update: Mapping[str, Any] | None = None,
    where: Any = None,
) -> Any:
    """``INSERT ... ON CONFLICT (keys) DO UPDATE`` in the connection's dialect: one
    statement, so two writers of the same key never collide. ``update`` (default: every
    other value)."""
    from sqlalchemy.dialects import postgresql, sqlite

    stmt: postgresql.Insert | sqlite.Insert = (
        postgresql.insert(table) if conn.dialect.name == "postgresql" else sqlite.insert(table)
    )
    stmt = stmt.values(**values)
    changes = (
        {k: getattr(stmt.excluded, k) for k in values if k not in keys}
        if update is None
        else dict(update)
    )
    return conn.execute(
        stmt.on_conflict_do_update(index_elements=list(keys), set_=changes, where=where)
    )


class AttemptOutcome(StrEnum):
    """How one attempt (one shape in one zone) ended."""

    INTENT = "intent"  # recorded before the cloud call; still in flight, or its process died
    RUNNING = "running"  # the whole gang runs: the cluster is RUNNING on it
    FAILED = "failed"  # the cloud refused and created nothing
    CLEANED = "cleaned"  # the cloud refused after creating nodes; they were removed
    LEAKED = "leaked"  # the cloud refused and its nodes could not be removed (CleanupFailed)
    CANCELLED = "cancelled"  # someone stopped the cluster meanwhile; its nodes were given back
    INTERRUPTED = "interrupted"  # a signal (Ctrl-C, SIGTERM) stopped it; its nodes were removed
    ABORTED = "aborted"  # an unexpected error in the broker itself; nodes removed if possible


@dataclass(frozen=True)
class NodeRecord:
    """One node of a RUNNING cluster, as stored with it: rank = the provider's node order."""

    rank: int
    provider_id: str
    private_ip: str
    zone: str
    region: str

    def to_json(self) -> dict[str, object]:
        return {
            "rank": self.rank,
            "provider_id": self.provider_id,
            "private_ip": self.private_ip,
            "zone": self.zone,
            "region": self.region,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> NodeRecord:
        return cls(
            rank=int(doc["rank"]),
            provider_id=str(doc["provider_id"]),
            private_ip=str(doc["private_ip"]),
            zone=str(doc["zone"]),
            region=str(doc.get("region") or ""),
        )


@dataclass(frozen=True)
class PlanFields:
    """What a cluster is being provisioned on: written with the STARTING transition."""

    shape_id: str
    provider: str
    region: str
    zone: str
    nodes_count: int
    procs_per_node: int
    gpus_billed: int
    price_per_hour: float


@dataclass(frozen=True)
class ClusterRecord:
    id: str
    created_at: float
    updated_at: float
    status: Status
    reason: str | None
    detail: str | None
    cycle: int
    request: dict[str, Any]
    experiment: dict[str, Any] | None
    backend: str | None
    shape_id: str | None
    provider: str | None
    region: str | None
    zone: str | None
    nodes_count: int | None
    procs_per_node: int | None
    gpus_billed: int | None
    price_per_hour: float | None
    nodes: tuple[NodeRecord, ...]
    owner: str | None
    lease_until: float | None
    ending: Status | None
    version: int
    org: str | None = None  # the organisation that submitted it (None: local use)
    mode: str = "burst"
    idempotency_key: str | None = None

    @property
    def gpus(self) -> int | None:
        """The GPUs asked for (the request's ``gpus``)."""
        rank = self.request.get("rank")
        value = rank.get("gpus") if isinstance(rank, dict) else None
        return value if isinstance(value, int) else None

    @property
    def name(self) -> str | None:
        """The experiment's name (free text from the launch file), if it has one."""
        value = self.request.get("experiment_name")
        return value if isinstance(value, str) else None

    def lease_live(self, now: float) -> bool:
        """Does someone hold an unexpired lease on it (provisioning or winding it down)?"""
        return self.owner is not None and self.lease_until is not None and self.lease_until > now

    @classmethod
    def from_row(cls, row: Any) -> ClusterRecord:
        ending = row["ending"]
        return cls(
            id=row["id"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            status=Status(row["status"]),
            reason=row["reason"],
            detail=row["detail"],
            cycle=row["cycle"],
            request=_json(row["request"]) or {},
            experiment=_json(row["experiment"]),
            backend=row["backend"],
            shape_id=row["shape_id"],
            provider=row["provider"],
            region=row["region"],
            zone=row["zone"],
            nodes_count=row["nodes_count"],
            procs_per_node=row["procs_per_node"],
            gpus_billed=row["gpus_billed"],
            price_per_hour=row["price_per_hour"],
            nodes=tuple(NodeRecord.from_json(n) for n in _json(row["nodes"]) or []),
            owner=row["owner"],
            lease_until=row["lease_until"],
            ending=Status(ending) if ending else None,
            version=row["version"],
            org=row["org"],
            mode=row["mode"] or "burst",
            idempotency_key=row["idempotency_key"],
        )


@dataclass(frozen=True)
class AgentRecord:
    """What the agent of one node reported in one cycle."""

    cluster_id: str
    cycle: int
    rank: int
    address: str
    instance_id: str | None
    registered_at: float
    started_at: float | None
    pid: int | None
    heartbeat_at: float | None
    exited_at: float | None
    exit_code: int | None
    exit_signal: int | None
    exit_reason: str | None
    log_next_seq: int
    log_dropped: int
    exit_tail: tuple[str, ...] = ()

    @classmethod
    def from_row(cls, row: Any) -> AgentRecord:
        values = {f: row[f] for f in cls.__dataclass_fields__ if f != "exit_tail"}
        tail = _json(row["exit_tail"]) or []
        return cls(**values, exit_tail=tuple(str(x) for x in tail))


class LogLine(NamedTuple):
    id: int  # increasing in the store: ``after=`` follows from here
    cycle: int
    seq: int  # the line's number in its rank's output (per cycle)
    line: str


@dataclass(frozen=True)
class StoreStats:
    clusters_by_status: dict[str, int]
    attempts: dict[tuple[str, str], int]  # (outcome, error code or "") -> count
    gpus_running: int
    spend_per_hour: float  # of every cluster that bills now (STARTING..TERMINATING)


@dataclass(frozen=True)
class TokenRecord:
    """An API token as stored: everything but its secret (only a digest of that is kept)."""

    id: str
    org: str
    name: str
    role: str  # "member" or "admin"
    created_at: float
    revoked_at: float | None = None
    cluster_id: str | None = None  # a node token's cluster

    @classmethod
    def from_row(cls, row: Any) -> TokenRecord:
        return cls(
            id=row["id"],
            org=row["org"],
            name=row["name"],
            role=row["role"],
            created_at=row["created_at"],
            revoked_at=row["revoked_at"],
            cluster_id=row["cluster_id"],
        )


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


@dataclass(frozen=True)
class TransitionRecord:
    cycle: int
    status: Status
    at: float
    reason: str | None
    detail: str | None
    price_per_hour: float | None
    gpus_billed: int | None


@dataclass(frozen=True)
class AttemptIntent:
    """What an attempt is about to ask the cloud for: recorded before the call."""

    cycle: int
    attempt_no: int
    shape_id: str
    provider: str
    backend: str
    region: str
    zone: str
    nodes: int
    token: str


@dataclass(frozen=True)
class AttemptResult:
    """How an attempt ended: recorded once the call (and any cleanup) is over."""

    outcome: AttemptOutcome
    error_code: str | None = None
    reach: str | None = None
    reason: str | None = None
    message: str | None = None
    retries: int = 0
    nodes_created: int = 0
    nodes_cleaned: int = 0


@dataclass(frozen=True)
class AttemptRecord:
    id: int
    cycle: int
    attempt_no: int
    shape_id: str
    provider: str
    backend: str
    region: str
    zone: str
    nodes: int
    token: str
    started_at: float
    ended_at: float | None
    outcome: AttemptOutcome
    error_code: str | None
    reach: str | None
    reason: str | None
    message: str | None
    retries: int
    nodes_created: int
    nodes_cleaned: int

    @property
    def duration(self) -> float | None:
        return None if self.ended_at is None else self.ended_at - self.started_at

    @classmethod
    def from_row(cls, row: Any) -> AttemptRecord:
        values = {k: row[k] for k in _ATTEMPT_FIELDS}
        values["outcome"] = AttemptOutcome(values["outcome"])
        return cls(**values)


_ATTEMPT_FIELDS = (
    "id",
    "cycle",
    "attempt_no",
    "shape_id",
    "provider",
    "backend",
    "region",
    "zone",
    "nodes",
    "token",
    "started_at",
    "ended_at",
    "outcome",
    "error_code",
    "reach",
    "reason",
    "message",
    "retries",
    "nodes_created",
    "nodes_cleaned",
)


@dataclass(frozen=True)
class Lease:
    """A lease to take with a transition: ``owner`` holds the cluster until ``until``."""

    owner: str
    until: float


# -- opening a store ----------------------------------------------------------------------------


def safe_url(url: str | URL) -> str:
    """A database URL fit to print: the password replaced by ``***``."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sa_exc.ArgumentError:
        return "(not a database URL)"


def _sqlite_engine(path: Path) -> Engine:
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let BEGIN below decide, not the driver
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # A write transaction takes the write lock at once (its reads then see what it
        # updates); a read-only one is a deferred BEGIN: in WAL mode it never waits for,
        # nor blocks, a writer.
        read_only = conn.get_execution_options().get("broker_read_only", False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def _prepare_dir(directory: Path) -> None:
    if directory.exists() and not directory.is_dir():
        raise StoreError(f"the state directory {directory} is a file, not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(
            f"cannot create the state directory {directory}: {exc.strerror or exc}"
            " (set BROKER_STATE_DIR to a writable directory)"
        ) from None
    if not _writable(directory):
        raise StoreError(
            f"the state directory {directory} is not writable"
            " (set BROKER_STATE_DIR to a writable directory)"
        )


def _writable(directory: Path) -> bool:
    import os

    return os.access(directory, os.W_OK | os.X_OK)


# A PostgreSQL advisory lock key ("broker schema"): whoever creates or upgrades the schema
# holds it for that transaction, so replicas starting together take turns.
SCHEMA_LOCK = 0x62726F6B6572


@dataclass(frozen=True)
class SchemaStatus:
    """A store's schema against this release's migrations."""

    revision: str | None  # None: no migration ever ran on it (empty, or from before them)
    head: str  # what this release needs
    has_tables: bool  # False: an empty database (it is created on first use)

    @property
    def current(self) -> bool:
        return self.revision == self.head

    @property
    def newer(self) -> bool:
        """Written by a newer release (a revision this one does not know)."""
        return self.revision is not None and self.revision not in REVISIONS

    def describe(self) -> str:
        if self.revision is not None:
            return f"revision {self.revision}"
        if not self.has_tables:
            return "an empty database"
        return "no revision: written before migrations"


def _schema_status(conn: Connection) -> SchemaStatus:
    inspector = inspect(conn)
    names = set(inspector.get_table_names())
    revision = None
    if "alembic_version" in names:
        revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return SchemaStatus(
        revision=str(revision) if revision is not None else None,
        head=HEAD,
        has_tables=bool(names & set(metadata.tables)),
    )


def _state_url(url: str) -> URL:
    """Parse a BROKER_STATE_URL; ``postgresql://`` (or ``postgres://``) means psycopg 3."""
    try:
        parsed = make_url(url)
    except sa_exc.ArgumentError:
        raise StoreError(
            "BROKER_STATE_URL is not a database URL (expected e.g. "
            "postgresql+psycopg://user:password@127.0.0.1:5432/broker or "
            "sqlite:////path/broker.sqlite)"
        ) from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


class Store:
    """All reads and writes of broker state. Safe to share between processes and threads."""

    def __init__(self, engine: Engine, *, where: str, check_schema: bool = True) -> None:
        """A store on ``engine``; ``where`` names it in messages (never with a password).
        With ``check_schema``, an empty database is created and SQLite upgraded, and a
        PostgreSQL store at another revision refused (StoreError); without, nothing is
        checked (``broker db status``/``upgrade`` look for themselves)."""
        self.engine = engine
        self.where = where  # how messages name this store (a path, or a URL without password)
        password = engine.url.password
        self._secret = str(password) if password else None
        if check_schema:
            self._check_schema()

    def __repr__(self) -> str:
        return f"Store({self.where})"

    @classmethod
    def open(cls, state_dir: Path, url: str | None = None, *, check_schema: bool = True) -> Store:
        """The store at ``url`` (a SQLite or PostgreSQL SQLAlchemy URL), else SQLite in
        ``state_dir``. Raises StoreError, naming the problem and never the password."""
        if url:
            return cls._open_url(url, check_schema=check_schema)
        _prepare_dir(state_dir)
        path = state_dir / STATE_DB_FILENAME
        if path.exists() and not path.is_file():
            raise StoreError(f"the store {path} is not a file")
        return cls(_sqlite_engine(path), where=str(path), check_schema=check_schema)

    @classmethod
    def _open_url(cls, url: str, *, check_schema: bool = True) -> Store:
        parsed = _state_url(url)
        shown = parsed.render_as_string(hide_password=True)
        backend = parsed.get_backend_name()
        if backend == "sqlite" and parsed.database not in (None, "", ":memory:"):
            # A SQLite file named by URL: the same engine (WAL, write lock) as the default.
            path = Path(str(parsed.database))
            if path.exists() and not path.is_file():
                raise StoreError(f"the store {path} is not a file")
            return cls(_sqlite_engine(path), where=str(path), check_schema=check_schema)
        unsupported = StoreError(
            f"BROKER_STATE_URL {shown}: the store runs on PostgreSQL or SQLite, not {backend}"
        )
        try:
            engine = create_engine(parsed, pool_pre_ping=backend == "postgresql")
        except sa_exc.NoSuchModuleError:
            raise StoreError(
                f"BROKER_STATE_URL {shown}: no SQLAlchemy dialect {parsed.drivername!r}"
            ) from None
        except ImportError as exc:
            if backend not in ("sqlite", "postgresql"):
                raise unsupported from None  # installing its driver would not help
            hint = "pip install 'burst-broker[postgres]'" if backend == "postgresql" else ""
            raise StoreError(
                f"BROKER_STATE_URL {shown}: its database driver is not installed "
                f"({exc.name or exc}); install it" + (f": {hint}" if hint else "")
            ) from None
        if backend not in ("sqlite", "postgresql"):
            engine.dispose()
            raise unsupported
        return cls(engine, where=shown, check_schema=check_schema)

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Database failures become StoreError, naming the store and never its password."""
        try:
            yield
        except StateError:
            raise
        except (sa_exc.OperationalError, sa_exc.DatabaseError, sqlite3.Error) as exc:
            orig = getattr(exc, "orig", None) or exc
            text_ = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
            text_ = self._hide(text_)
            if "not a database" in text_ or "malformed" in text_:
                raise StoreError(
                    f"the store {self.where} is not a readable broker store ({text_}); it was "
                    "left untouched: move it aside or point BROKER_STATE_DIR elsewhere"
                ) from None
            if "readonly" in text_ or "read-only" in text_:
                raise StoreError(f"the store {self.where} is read-only ({text_})") from None
            raise StoreError(f"the store {self.where} cannot be used: {text_}") from None
        except sa_exc.SQLAlchemyError as exc:
            raise StoreError(f"the store {self.where} failed: {type(exc).__name__}") from None

    def _hide(self, message: str) -> str:
        """``message`` without this store's password (drivers may quote what they got)."""
        return message.replace(self._secret, "***") if self._secret else message

    # -- the schema (broker.migrations) -------------------------------------------------------

    def schema_status(self) -> SchemaStatus:
        """The store's schema revision against this release's (nothing is changed)."""
        with self._read() as conn:
            return _schema_status(conn)

    def _check_schema(self) -> None:
        status = self.schema_status()
        if status.current:
            return
        if status.newer:
            raise StoreError(self._newer_message(status))
        if self.engine.dialect.name == "sqlite" or not status.has_tables:
            self.upgrade()  # SQLite's own store, or a brand-new database: create/upgrade it
            return
        raise StoreError(
            f"the store {self.where} has an older schema ({status.describe()}; this broker "
            f"needs revision {status.head}): run `broker db upgrade` with the same "
            "BROKER_STATE_URL (stop the other broker hosts first, or upgrade them after)"
        )

    def _newer_message(self, status: SchemaStatus) -> str:
        return (
            f"the store {self.where} has schema revision {status.revision}, newer than this "
            f"broker knows (up to {status.head}): upgrade burst-broker on this host"
        )

    def upgrade(self) -> tuple[SchemaStatus, SchemaStatus]:
        """Apply the migrations this store lacks, in one transaction under the schema lock
        (PostgreSQL: an advisory lock; SQLite: its write lock). Returns the schema before
        and after; a store already at this release's revision is left as it is."""
        with self._guard(), self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})
            before = _schema_status(conn)  # again, under the lock: someone may have done it
            if before.newer:
                raise StoreError(self._newer_message(before))
            if before.current:
                return before, before
            try:
                from broker.migrations import upgrade_connection
            except ImportError as exc:  # pragma: no cover - alembic is a dependency
                raise StoreError(
                    f"cannot migrate the store {self.where}: {exc.name or exc} is not "
                    "installed (reinstall burst-broker)"
                ) from None
            upgrade_connection(conn)
            return before, _schema_status(conn)

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self._guard(), self.engine.begin() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._guard(), self.engine.connect() as conn:
            conn.execution_options(broker_read_only=True)
            yield conn

    # -- clusters ---------------------------------------------------------------------------

    def create_cluster(
        self,
        cluster_id: str,
        *,
        request: Mapping[str, Any],
        experiment: Mapping[str, Any] | None,
        backend: str | None,
        now: float,
        org: str | None = None,
        mode: str = "burst",
        idempotency_key: str | None = None,
    ) -> ClusterRecord:
        """A new PENDING cluster, durable at once; nobody holds its lease yet. With an
        ``idempotency_key`` already used by ``org``, that cluster is returned instead
        (also when two submissions race: the database's unique index decides)."""
        if idempotency_key is not None:
            existing = self.by_idempotency_key(org, idempotency_key)
            if existing is not None:
                return existing
        try:
            return self._insert_cluster(
                cluster_id,
                request=request,
                experiment=experiment,
                backend=backend,
                now=now,
                org=org,
                mode=mode,
                idempotency_key=idempotency_key,
            )
        except StoreError:
            if idempotency_key is not None:
                existing = self.by_idempotency_key(org, idempotency_key)
                if existing is not None:
                    return existing  # the other submission won the race
            raise

    def by_idempotency_key(self, org: str | None, key: str) -> ClusterRecord | None:
        query = select(clusters).where(
            clusters.c.idempotency_key == key,
            clusters.c.org.is_(None) if org is None else clusters.c.org == org,
        )
        with self._read() as conn:
            row = conn.execute(query).mappings().first()
        return ClusterRecord.from_row(row) if row is not None else None

    def _insert_cluster(
        self,
        cluster_id: str,
        *,
        request: Mapping[str, Any],
        experiment: Mapping[str, Any] | None,
        backend: str | None,
        now: float,
        org: str | None,
        mode: str,
        idempotency_key: str | None,
    ) -> ClusterRecord:
        with self._tx() as conn:
            conn.execute(
                insert(clusters).values(
                    id=cluster_id,
                    org=org,
                    mode=mode,
                    idempotency_key=idempotency_key,
                    created_at=now,
                    updated_at=now,
                    status=Status.PENDING.value,
                    cycle=1,
                    request=dict(request),
                    experiment=dict(experiment) if experiment is not None else None,
                    backend=backend,
                    nodes=[],
                    version=0,
                )
            )
            conn.execute(
                insert(transitions).values(
                    cluster_id=cluster_id, cycle=1, status=Status.PENDING.value, at=now
                )
            )
            return self._get(conn, cluster_id)

    def _get(self, conn: Connection, cluster_id: str) -> ClusterRecord:
        row = conn.execute(select(clusters).where(clusters.c.id == cluster_id)).mappings().first()
        if row is None:
            raise NotFoundError(f"no cluster {cluster_id!r}")
        return ClusterRecord.from_row(row)

    def get(self, cluster_id: str) -> ClusterRecord:
        with self._read() as conn:
            return self._get(conn, cluster_id)

    def find(self, prefix: str, *, org: str | Everyone | None = EVERYONE) -> ClusterRecord:
        """A cluster by id or unique id prefix (as users type them); with ``org``, only
        that organisation's clusters exist (another's is "no cluster", never revealed)."""
        if not prefix:
            raise NotFoundError("no cluster id given")
        query = select(clusters.c.id).where(clusters.c.id.startswith(prefix, autoescape=True))
        if not isinstance(org, Everyone):
            query = query.where(_org_is(org))
        with self._read() as conn:
            rows = conn.execute(query.limit(2)).all()
            if len(rows) != 1:
                what = "no cluster" if not rows else "more than one cluster matches"
                raise NotFoundError(f"{what} {prefix!r}")
            return self._get(conn, rows[0][0])

    def list_clusters(
        self,
        statuses: Collection[Status] | None = None,
        *,
        limit: int | None = None,
        org: str | Everyone | None = EVERYONE,
    ) -> list[ClusterRecord]:
        """Clusters in these statuses (all when None), oldest first; with ``limit``, only
        the newest ``limit`` of them. Uses the status and creation-time indexes."""
        query = select(clusters)
        if not isinstance(org, Everyone):
            query = query.where(_org_is(org))
        if statuses is not None:
            query = query.where(clusters.c.status.in_([s.value for s in statuses]))
        if limit is not None:
            query = query.order_by(clusters.c.created_at.desc(), clusters.c.id.desc()).limit(limit)
        else:
            query = query.order_by(clusters.c.created_at, clusters.c.id)
        with self._read() as conn:
            found = [ClusterRecord.from_row(r) for r in conn.execute(query).mappings()]
        return found[::-1] if limit is not None else found

    def page_clusters(
        self,
        *,
        org: str | Everyone | None,
        statuses: Collection[Status] | None = None,
        mode: str | None = None,
        limit: int = 50,
        before: tuple[float, str] | None = None,
    ) -> list[ClusterRecord]:
        """One page of clusters, newest first: those created before ``before`` (the
        (created_at, id) of the previous page's last one). Keyset pagination on the
        (org, created_at) index, so page 100 costs what page 1 does."""
        query = select(clusters)
        if not isinstance(org, Everyone):
            query = query.where(_org_is(org))
        if statuses is not None:
            query = query.where(clusters.c.status.in_([s.value for s in statuses]))
        if mode is not None:
            query = query.where(clusters.c.mode == mode)
        if before is not None:
            at, last_id = before
            query = query.where(
                (clusters.c.created_at < at)
                | ((clusters.c.created_at == at) & (clusters.c.id < last_id))
            )
        query = query.order_by(clusters.c.created_at.desc(), clusters.c.id.desc()).limit(limit)
        with self._read() as conn:
            return [ClusterRecord.from_row(r) for r in conn.execute(query).mappings()]

    def transition(
        self,
        cluster_id: str,
        to: Status,
        *,
        now: float,
        expect: Collection[Status] | None = None,
        reason: str | None = None,
        detail: str | None = None,
        plan: PlanFields | None = None,
        nodes: Sequence[NodeRecord] | None = None,
        lease: Lease | None = None,
        ending: Status | None = None,
    ) -> ClusterRecord:
        """Move a cluster to ``to`` if the lifecycle allows it (and it is in ``expect``).

        ``plan`` and ``nodes`` update the cluster in the same transaction; ``lease`` takes
        its lease (a terminal status always drops it); ``ending`` records, with TERMINATING,
        which final status the wind-down is for. Raises ConflictError if the cluster is
        elsewhere: someone else moved it first.
        """
        with self._tx() as conn:
            current = self._get(conn, cluster_id)
            if expect is not None and current.status not in expect:
                raise ConflictError(
                    f"cluster {cluster_id} is {current.status.value}, "
                    f"not {'/'.join(s.value for s in expect)}"
                )
            return self._apply(
                conn,
                current,
                to,
                now=now,
                reason=reason,
                detail=detail,
                plan=plan,
                nodes=nodes,
                lease=lease,
                ending=ending,
            )

    def claim_pending(
        self, owner: str, until: float, limit: int = 1, *, now: float | None = None
    ) -> list[ClusterRecord]:
        """Claim up to ``limit`` PENDING clusters, oldest first, for a worker: each moves to
        QUEUED under ``owner``'s lease (until ``until``) in the same transaction, and is
        returned. On PostgreSQL the rows are read ``FOR UPDATE SKIP LOCKED``: concurrent
        claimers (replicas) take different clusters and never wait on each other; on SQLite
        the transaction's write lock (``BEGIN IMMEDIATE``) serialises them. Either way no
        cluster is claimed twice. The caller provisions them (``Broker.run``) and renews
        the lease meanwhile, as for any QUEUED cluster it holds."""
        at = time.time() if now is None else now
        query = (
            select(clusters)
            .where(clusters.c.status == Status.PENDING.value)
            .order_by(clusters.c.created_at, clusters.c.id)
            .limit(max(0, limit))
            .with_for_update(skip_locked=True)
        )
        with self._tx() as conn:
            pending = [ClusterRecord.from_row(r) for r in conn.execute(query).mappings()]
            return [
                self._apply(conn, c, Status.QUEUED, now=at, lease=Lease(owner, until))
                for c in pending
            ]

    def _apply(
        self,
        conn: Connection,
        current: ClusterRecord,
        to: Status,
        *,
        now: float,
        reason: str | None = None,
        detail: str | None = None,
        plan: PlanFields | None = None,
        nodes: Sequence[NodeRecord] | None = None,
        lease: Lease | None = None,
        ending: Status | None = None,
    ) -> ClusterRecord:
        """Move ``current`` (as read in this transaction) to ``to``: a compare-and-set on
        its version, with its transition row (see :meth:`transition`)."""
        cluster_id = current.id
        if to not in ALLOWED[current.status]:
            raise ConflictError(
                f"cluster {cluster_id} cannot go from {current.status.value} to {to.value}"
            )
        cycle = current.cycle + 1 if to is Status.PENDING else current.cycle
        values: dict[str, Any] = {
            "status": to.value,
            "updated_at": now,
            "version": current.version + 1,
            "cycle": cycle,
        }
        if plan is not None:
            values.update(
                shape_id=plan.shape_id,
                provider=plan.provider,
                region=plan.region,
                zone=plan.zone,
                nodes_count=plan.nodes_count,
                procs_per_node=plan.procs_per_node,
                gpus_billed=plan.gpus_billed,
                price_per_hour=plan.price_per_hour,
            )
        if nodes is not None:
            values["nodes"] = [n.to_json() for n in nodes]
        elif to is Status.PENDING:
            values["nodes"] = []  # a new cycle: the last cycle's nodes are gone
        if to in (Status.PENDING, Status.QUEUED, Status.STARTING, Status.RUNNING):
            values["reason"] = None
            values["detail"] = None
            values["ending"] = None
        if reason is not None:
            values["reason"] = reason
        if detail is not None:
            values["detail"] = detail
        if ending is not None:
            values["ending"] = ending.value
        if lease is not None:
            values["owner"] = lease.owner
            values["lease_until"] = lease.until
        if to in TERMINAL or to is Status.RUNNING or to is Status.PENDING:
            values["owner"] = None  # nobody needs to hold a settled cluster
            values["lease_until"] = None
        if to in TERMINAL:
            values["ending"] = None
        done = conn.execute(
            update(clusters)
            .where(clusters.c.id == cluster_id, clusters.c.version == current.version)
            .values(**values)
        )
        if done.rowcount != 1:
            raise ConflictError(f"cluster {cluster_id} changed under us")
        conn.execute(
            insert(transitions).values(
                cluster_id=cluster_id,
                cycle=cycle,
                status=to.value,
                at=now,
                reason=reason,
                detail=detail,
                price_per_hour=values.get("price_per_hour", current.price_per_hour),
                gpus_billed=values.get("gpus_billed", current.gpus_billed),
            )
        )
        return self._get(conn, cluster_id)

    def record_nodes(self, cluster_id: str, nodes: Sequence[NodeRecord]) -> ClusterRecord:
        """Store a STARTING cluster's nodes (its gang is up; the agents are starting the
        command): ConflictError if it is no longer STARTING."""
        with self._tx() as conn:
            current = self._get(conn, cluster_id)
            if current.status is not Status.STARTING:
                raise ConflictError(f"cluster {cluster_id} is {current.status.value}, not STARTING")
            done = conn.execute(
                update(clusters)
                .where(clusters.c.id == cluster_id, clusters.c.version == current.version)
                .values(nodes=[n.to_json() for n in nodes], version=current.version + 1)
            )
            if done.rowcount != 1:
                raise ConflictError(f"cluster {cluster_id} changed under us")
            return self._get(conn, cluster_id)

    def renew_lease(self, cluster_id: str, owner: str, *, until: float) -> bool:
        """Extend ``owner``'s lease; False if it no longer holds it (someone else moved
        the cluster, or it settled)."""
        with self._tx() as conn:
            done = conn.execute(
                update(clusters)
                .where(clusters.c.id == cluster_id, clusters.c.owner == owner)
                .values(lease_until=until)
            )
            return done.rowcount == 1

    def take_over(self, cluster_id: str, owner: str, *, now: float, until: float) -> ClusterRecord:
        """Take the lease of a cluster whose owner's lease has run out (or that nobody
        holds), keeping its status; ConflictError if a live owner still holds it."""
        with self._tx() as conn:
            current = self._get(conn, cluster_id)
            if current.lease_live(now) and current.owner != owner:
                raise ConflictError(
                    f"cluster {cluster_id} is {current.status.value}, held by {current.owner}"
                )
            done = conn.execute(
                update(clusters)
                .where(clusters.c.id == cluster_id, clusters.c.version == current.version)
                .values(owner=owner, lease_until=until, version=current.version + 1)
            )
            if done.rowcount != 1:
                raise ConflictError(f"cluster {cluster_id} changed under us")
            return self._get(conn, cluster_id)

    def transitions(self, cluster_id: str) -> list[TransitionRecord]:
        query = (
            select(transitions)
            .where(transitions.c.cluster_id == cluster_id)
            .order_by(transitions.c.id)
        )
        with self._read() as conn:
            return [_transition(r) for r in conn.execute(query).mappings()]

    def transitions_of(self, cluster_ids: Sequence[str]) -> dict[str, list[TransitionRecord]]:
        """The lifecycles of many clusters in one query per 500 (in order, by cluster id):
        the watch loop counts every limited run's clock at once."""
        found: dict[str, list[TransitionRecord]] = {i: [] for i in cluster_ids}
        for r in self._rows_of(transitions, list(found), transitions.c.id):
            found[r["cluster_id"]].append(_transition(r))
        return found

    def _rows_of(self, table: Table, cluster_ids: Sequence[str], order: Any) -> list[RowMapping]:
        """The rows of ``table`` of these clusters, by cluster id then ``order``: one query
        per IN_CHUNK ids, in one read."""
        rows: list[RowMapping] = []
        with self._read() as conn:
            for ids in _chunks(cluster_ids):
                query = (
                    select(table)
                    .where(table.c.cluster_id.in_(ids))
                    .order_by(table.c.cluster_id, order)
                )
                rows += conn.execute(query).mappings()
        return rows

    def spending_since(
        self, org: str | None, since: float
    ) -> list[tuple[ClusterRecord, list[TransitionRecord]]]:
        """The organisation's clusters that may have spent since ``since`` (not ended, or
        changed since), each with its lifecycle: two queries however many clusters the
        organisation ever had (what its credits are counted from)."""
        maybe = (clusters.c.updated_at >= since) | clusters.c.status.notin_(
            [s.value for s in TERMINAL]
        )
        wanted = select(clusters).where(_org_is(org), maybe).order_by(clusters.c.created_at)
        ids = select(clusters.c.id).where(_org_is(org), maybe)
        lives = (
            select(transitions)
            .where(transitions.c.cluster_id.in_(ids))
            .order_by(transitions.c.cluster_id, transitions.c.id)
        )
        with self._read() as conn:
            found = [ClusterRecord.from_row(r) for r in conn.execute(wanted).mappings()]
            history: dict[str, list[TransitionRecord]] = {c.id: [] for c in found}
            for r in conn.execute(lives).mappings():
                if r["cluster_id"] in history:  # one made meanwhile waits for the next read
                    history[r["cluster_id"]].append(_transition(r))
        return [(c, history[c.id]) for c in found]

    def delete_cluster(self, cluster_id: str, *, allowed: Collection[Status]) -> None:
        with self._tx() as conn:
            current = self._get(conn, cluster_id)
            if current.status not in allowed:
                raise ConflictError(
                    f"cluster {cluster_id} is {current.status.value}; only "
                    f"{'/'.join(s.value for s in allowed)} clusters can be deleted"
                )
            for table in (transitions, attempts, agents, log_lines, artifact_syncs):
                conn.execute(delete(table).where(table.c.cluster_id == cluster_id))
            conn.execute(delete(tokens).where(tokens.c.cluster_id == cluster_id))
            conn.execute(delete(clusters).where(clusters.c.id == cluster_id))

    # -- attempts ---------------------------------------------------------------------------

    def start_attempt(self, cluster_id: str, intent: AttemptIntent, *, now: float) -> AttemptRecord:
        """Record the intent to call the cloud, durably, before the call is made."""
        with self._tx() as conn:
            row = conn.execute(
                insert(attempts)
                .values(
                    cluster_id=cluster_id,
                    started_at=now,
                    outcome=AttemptOutcome.INTENT.value,
                    retries=0,
                    nodes_created=0,
                    nodes_cleaned=0,
                    cycle=intent.cycle,
                    attempt_no=intent.attempt_no,
                    shape_id=intent.shape_id,
                    provider=intent.provider,
                    backend=intent.backend,
                    region=intent.region,
                    zone=intent.zone,
                    nodes=intent.nodes,
                    token=intent.token,
                )
                .returning(attempts)
            )
            return AttemptRecord.from_row(row.mappings().one())

    def finish_attempt(self, attempt_id: int, result: AttemptResult, *, now: float) -> None:
        with self._tx() as conn:
            conn.execute(
                update(attempts)
                .where(attempts.c.id == attempt_id)
                .values(
                    ended_at=now,
                    outcome=result.outcome.value,
                    error_code=result.error_code,
                    reach=result.reach,
                    reason=result.reason,
                    message=result.message,
                    retries=result.retries,
                    nodes_created=result.nodes_created,
                    nodes_cleaned=result.nodes_cleaned,
                )
            )

    def attempts(self, cluster_id: str) -> list[AttemptRecord]:
        query = select(attempts).where(attempts.c.cluster_id == cluster_id).order_by(attempts.c.id)
        with self._read() as conn:
            return [AttemptRecord.from_row(r) for r in conn.execute(query).mappings()]

    def attempt_count(self, cluster_id: str) -> int:
        query = select(attempts.c.id).where(attempts.c.cluster_id == cluster_id)
        with self._read() as conn:
            return len(conn.execute(query).all())

    # -- blocked scopes ---------------------------------------------------------------------

    def block(self, scope: BlockScope, *, reason: str, until: float, now: float) -> None:
        """Block ``scope`` until ``until`` (replacing any block of the same scope: the
        last writer wins, also when several hosts block it at once)."""
        values = {
            "scope": scope.key,
            "kind": scope.kind.value,
            "backend": scope.backend,
            "provider": scope.provider,
            "region": scope.region,
            "zone": scope.zone,
            "instance_type": scope.instance_type,
            "bucket": scope.bucket,
            "provisioning": scope.provisioning,
            "reason": reason,
            "until": until,
            "created_at": now,
        }
        with self._tx() as conn:
            _upsert(conn, blocks, values, keys=["scope"])

    def active_blocks(self, now: float) -> list[Block]:
        cols = blocks.c
        query = (
            select(
                cols.kind,
                cols.backend,
                cols.provider,
                cols.region,
                cols.zone,
                cols.instance_type,
                cols.bucket,
                cols.provisioning,
                cols.reason,
                cols.until,
            )
            .where(cols.until > now, cols.kind.is_not(None))
            .order_by(cols.scope)
        )
        with self._read() as conn:
            return [block_from_row(tuple(r)) for r in conn.execute(query)]

    def unblock(self, key: str | None = None) -> int:
        """Remove the block with this scope key (all blocks when None); how many went."""
        with self._tx() as conn:
            query = delete(blocks) if key is None else delete(blocks).where(blocks.c.scope == key)
            return int(conn.execute(query).rowcount)

    # -- quota readings (broker.quotas) ------------------------------------------------------

    def save_quotas(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Upsert quota rows (keys: the columns of ``quota_readings``), in one transaction."""
        with self._tx() as conn:
            for row in rows:
                values = {c.name: row.get(c.name) for c in quota_readings.columns}
                _upsert(conn, quota_readings, values, keys=["provider", "region", "bucket"])

    def quota_rows(
        self, *, provider: str | None = None, regions: Collection[str] | None = None
    ) -> list[dict[str, Any]]:
        """Cached quota rows (all, or of one provider and some regions), oldest reads too:
        the caller decides what is fresh enough."""
        cols = quota_readings.c
        query = select(quota_readings).order_by(cols.provider, cols.region, cols.bucket)
        if provider is not None:
            query = query.where(cols.provider == provider)
        if regions is not None:
            query = query.where(cols.region.in_(list(regions)))
        with self._read() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    # -- aggregates (for /metrics: no cluster id, no organisation) ----------------------------

    def stats(self) -> StoreStats:
        """Clusters per status, attempts per (outcome, error code), and GPUs and spend
        per hour of the clusters that bill now, across every organisation."""
        from sqlalchemy import func

        billed = [Status.STARTING.value, Status.RUNNING.value, Status.TERMINATING.value]
        with self._read() as conn:
            by_status = {
                str(k): int(n)
                for k, n in conn.execute(
                    select(clusters.c.status, func.count()).group_by(clusters.c.status)
                )
            }
            by_attempt = {
                (str(o), str(e or "")): int(n)
                for o, e, n in conn.execute(
                    select(attempts.c.outcome, attempts.c.error_code, func.count()).group_by(
                        attempts.c.outcome, attempts.c.error_code
                    )
                )
            }
            gpus = conn.execute(
                select(func.coalesce(func.sum(clusters.c.gpus_billed), 0)).where(
                    clusters.c.status == Status.RUNNING.value
                )
            ).scalar_one()
            _, billed_spend = conn.execute(
                select(func.count(), func.coalesce(func.sum(clusters.c.price_per_hour), 0.0)).where(
                    clusters.c.status.in_(billed)
                )
            ).one()
        return StoreStats(by_status, by_attempt, int(gpus), float(billed_spend))

    def ping(self) -> None:
        """Raise StoreError unless the store answers a query."""
        with self._read() as conn:
            conn.execute(select(1)).one()

    # -- API tokens (only their digests) -----------------------------------------------------

    def add_token(self, token: TokenRecord, digest: str) -> None:
        """Store a new token. A node token replaces its cluster's live ones in the same
        transaction: a cluster's agents hold one live token, whoever creates it."""
        with self._tx() as conn:
            if token.cluster_id is not None:
                conn.execute(
                    update(tokens)
                    .where(tokens.c.cluster_id == token.cluster_id, tokens.c.revoked_at.is_(None))
                    .values(revoked_at=token.created_at)
                )
            conn.execute(
                insert(tokens).values(
                    id=token.id,
                    org=token.org,
                    name=token.name,
                    role=token.role,
                    digest=digest,
                    created_at=token.created_at,
                    revoked_at=None,
                    cluster_id=token.cluster_id,
                )
            )

    def token_by_digest(self, digest: str) -> tuple[TokenRecord, str] | None:
        """The token whose secret has this digest, and the stored digest (for the
        caller's constant-time comparison)."""
        with self._read() as conn:
            row = conn.execute(select(tokens).where(tokens.c.digest == digest)).mappings().first()
        return (TokenRecord.from_row(row), str(row["digest"])) if row is not None else None

    def revoke_cluster_tokens(self, cluster_id: str, *, now: float) -> int:
        """Revoke every live node token of a cluster (its run ended, or a new cycle
        gets a new token)."""
        with self._tx() as conn:
            done = conn.execute(
                update(tokens)
                .where(tokens.c.cluster_id == cluster_id, tokens.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            return int(done.rowcount)

    def revoke_node_token(self, token_id: str, *, now: float) -> bool:
        """Revoke one node token (a cycle whose gang never came up); False if it was not
        live any more."""
        return self._revoke_one(token_id, tokens.c.cluster_id.isnot(None), now=now)

    def list_tokens(self, org: str | None = None) -> list[TokenRecord]:
        """API tokens (node tokens are not listed: they live and die with their cluster)."""
        query = (
            select(tokens)
            .where(tokens.c.cluster_id.is_(None))
            .order_by(tokens.c.org, tokens.c.created_at, tokens.c.id)
        )
        if org is not None:
            query = query.where(tokens.c.org == org)
        with self._read() as conn:
            return [TokenRecord.from_row(r) for r in conn.execute(query).mappings()]

    def revoke_token(self, token_id: str, *, now: float, org: str | None = None) -> bool:
        """Revoke it (with ``org``: only if it is that organisation's); False if no such
        live token."""
        api = tokens.c.cluster_id.is_(None)
        return self._revoke_one(
            token_id, api if org is None else api & (tokens.c.org == org), now=now
        )

    def _revoke_one(self, token_id: str, which: Any, *, now: float) -> bool:
        """Revoke the live token ``token_id`` if it matches ``which``: whether it did."""
        query = update(tokens).where(tokens.c.id == token_id, tokens.c.revoked_at.is_(None), which)
        with self._tx() as conn:
            return int(conn.execute(query.values(revoked_at=now)).rowcount) == 1

    # -- node agents and their logs ----------------------------------------------------------

    def register_agent(
        self,
        cluster_id: str,
        cycle: int,
        rank: int,
        *,
        address: str,
        instance_id: str | None,
        now: float,
    ) -> AgentRecord:
        """Record (or refresh) the agent of node ``rank`` in this cycle; a re-registering
        agent keeps what it reported before (started, exit, log position)."""
        key = _agent_key(cluster_id, cycle, rank)
        values = {
            "cluster_id": cluster_id,
            "cycle": cycle,
            "rank": rank,
            "address": address,
            "instance_id": instance_id,
            "registered_at": now,
            "heartbeat_at": now,
            "log_next_seq": 0,
            "log_dropped": 0,
        }
        refreshed = {"address": address, "instance_id": instance_id, "heartbeat_at": now}
        with self._tx() as conn:
            _upsert(conn, agents, values, keys=["cluster_id", "cycle", "rank"], update=refreshed)
            return AgentRecord.from_row(conn.execute(select(agents).where(key)).mappings().one())

    def agents(self, cluster_id: str, cycle: int) -> list[AgentRecord]:
        query = (
            select(agents)
            .where(agents.c.cluster_id == cluster_id, agents.c.cycle == cycle)
            .order_by(agents.c.rank)
        )
        with self._read() as conn:
            return [AgentRecord.from_row(r) for r in conn.execute(query).mappings()]

    def agents_of(self, clusters: Sequence[ClusterRecord]) -> dict[str, list[AgentRecord]]:
        """The agents of each cluster's current cycle, in one query (by cluster id; ranks
        in order): the watch loop reads every running cluster's at once."""
        found: dict[str, list[AgentRecord]] = {c.id: [] for c in clusters}
        if not clusters:
            return found
        cycle_of = {c.id: c.cycle for c in clusters}
        for row in self._rows_of(agents, list(cycle_of), agents.c.rank):
            if row["cycle"] == cycle_of[row["cluster_id"]]:
                found[row["cluster_id"]].append(AgentRecord.from_row(row))
        return found

    def update_agent(
        self,
        cluster_id: str,
        cycle: int,
        rank: int,
        **changes: float | int | str | list[str] | None,
    ) -> bool:
        """Set fields of one agent's row (started_at, pid, heartbeat_at, exit_*); False if
        that agent never registered."""
        allowed = {
            "started_at", "pid", "heartbeat_at", "exited_at", "exit_code", "exit_signal",
            "exit_reason", "exit_tail",
        }  # fmt: skip
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(f"not agent fields: {sorted(unknown)}")
        with self._tx() as conn:
            done = conn.execute(
                update(agents).where(_agent_key(cluster_id, cycle, rank)).values(**changes)
            )
            return int(done.rowcount) == 1

    def set_credits(self, org: str, usd: float, *, now: float) -> None:
        """Grant ``org`` ``usd`` from ``now`` on (replacing any earlier grant)."""
        with self._tx() as conn:
            _upsert(conn, credits, {"org": org, "usd": usd, "granted_at": now}, keys=["org"])

    def credits(self, org: str | None = None) -> dict[str, tuple[float, float]]:
        """Each organisation's grant (one, or every one): org -> (usd, granted_at)."""
        query = select(credits)
        if org is not None:
            query = query.where(credits.c.org == org)
        with self._read() as conn:
            return {r["org"]: (r["usd"], r["granted_at"]) for r in conn.execute(query).mappings()}

    def record_sync(
        self,
        cluster_id: str,
        cycle: int,
        rank: int,
        kind: str,
        *,
        files: int,
        size: int,
        failed: int,
        errors: Sequence[str],
        final: bool,
        now: float,
    ) -> None:
        """Add one sync's report to a rank's totals for that kind (a retried report may
        count twice: the totals are for people, never for billing)."""
        values: dict[str, Any] = {"failed": failed, "errors": list(errors), "updated_at": now}
        if final:
            values["final_at"] = now
        changes: dict[str, Any] = {
            **values,
            "files": artifact_syncs.c.files + files,
            "bytes": artifact_syncs.c.bytes + size,
        }
        row = {"cluster_id": cluster_id, "cycle": cycle, "rank": rank, "kind": kind}
        with self._tx() as conn:
            _upsert(
                conn,
                artifact_syncs,
                {**row, "files": files, "bytes": size, **values},
                keys=list(row),
                update=changes,
            )

    def syncs(self, cluster_id: str, cycle: int | None = None) -> list[dict[str, Any]]:
        """The sync totals of a cluster (one cycle, or every cycle), by cycle, rank, kind."""
        query = select(artifact_syncs).where(artifact_syncs.c.cluster_id == cluster_id)
        if cycle is not None:
            query = query.where(artifact_syncs.c.cycle == cycle)
        query = query.order_by(artifact_syncs.c.cycle, artifact_syncs.c.rank, artifact_syncs.c.kind)
        with self._read() as conn:
            return [
                {
                    "cycle": r["cycle"],
                    "rank": r["rank"],
                    "kind": r["kind"],
                    "files": r["files"],
                    "bytes": r["bytes"],
                    "failed": r["failed"],
                    "errors": list(r["errors"] or []),
                    "final": r["final_at"] is not None,
                }
                for r in conn.execute(query).mappings()
            ]

    def append_logs(
        self,
        cluster_id: str,
        cycle: int,
        rank: int,
        *,
        seq: int,
        lines: Sequence[str],
        dropped: int,
        cap: int,
    ) -> int:
        """Store a batch of a rank's output lines numbered from ``seq``; lines already
        stored (a retried batch) are skipped. At most ``cap`` lines are kept per rank: the
        oldest go first, and are counted as dropped. Returns how many lines were new."""
        key = _agent_key(cluster_id, cycle, rank)
        with self._tx() as conn:
            row = conn.execute(select(agents).where(key)).mappings().first()
            if row is None:
                return 0
            expected = int(row["log_next_seq"])
            skip = max(0, expected - seq)
            fresh = list(lines[skip:])
            # A gap, and the agent's own count (once: a retried batch repeats it).
            lost = max(0, seq - expected) + (max(0, dropped) if seq >= expected else 0)
            if fresh:
                conn.execute(
                    insert(log_lines),
                    [
                        {
                            "cluster_id": cluster_id,
                            "cycle": cycle,
                            "rank": rank,
                            "seq": seq + skip + i,
                            "line": line,
                        }
                        for i, line in enumerate(fresh)
                    ],
                )
            rank_lines = (log_lines.c.cluster_id == cluster_id) & (log_lines.c.rank == rank)
            from sqlalchemy import func

            kept = int(conn.execute(select(func.count()).where(rank_lines)).scalar_one())
            if kept > cap:
                cut = conn.execute(
                    select(log_lines.c.id)
                    .where(rank_lines)
                    .order_by(log_lines.c.id)
                    .offset(kept - cap - 1)
                    .limit(1)
                ).scalar_one()
                done = conn.execute(delete(log_lines).where(rank_lines & (log_lines.c.id <= cut)))
                lost += int(done.rowcount)
            conn.execute(
                update(agents)
                .where(key)
                .values(
                    log_next_seq=max(expected, seq + len(lines)),
                    log_dropped=agents.c.log_dropped + lost,
                )
            )
            return len(fresh)

    def log_tail(
        self, cluster_id: str, rank: int, *, tail: int | None = None, after: int | None = None
    ) -> list[LogLine]:
        """A rank's stored lines, oldest first: the last ``tail`` of them, or those after
        the line id ``after`` (for following)."""
        query = select(log_lines.c.id, log_lines.c.cycle, log_lines.c.seq, log_lines.c.line).where(
            log_lines.c.cluster_id == cluster_id, log_lines.c.rank == rank
        )
        if after is not None:
            query = query.where(log_lines.c.id > after).order_by(log_lines.c.id)
            if tail is not None:
                query = query.limit(tail)
            with self._read() as conn:
                return [LogLine(*r) for r in conn.execute(query)]
        query = query.order_by(log_lines.c.id.desc())
        if tail is not None:
            query = query.limit(tail)
        with self._read() as conn:
            return [LogLine(*r) for r in conn.execute(query)][::-1]

    # -- named leases (broker-wide chores) ---------------------------------------------------

    def take_lease(self, name: str, owner: str, *, now: float, until: float) -> str | None:
        """Take (or renew) the named lease; None on success, else the live holder's id.
        One conditional upsert: of several hosts taking a free lease at once, one wins."""
        with self._tx() as conn:
            _upsert(
                conn,
                leases,
                {"name": name, "owner": owner, "until": until},
                keys=["name"],
                where=(leases.c.owner == owner) | (leases.c.until <= now),
            )
            holder = conn.execute(select(leases.c.owner).where(leases.c.name == name)).scalar()
            return None if holder == owner else str(holder)

    def drop_lease(self, name: str, owner: str) -> None:
        with self._tx() as conn:
            conn.execute(delete(leases).where(leases.c.name == name, leases.c.owner == owner))


__all__ = [
    "EVERYONE",
    "STATE_DB_FILENAME",
    "AttemptIntent",
    "AttemptOutcome",
    "AttemptRecord",
    "AttemptResult",
    "ClusterRecord",
    "ConflictError",
    "Everyone",
    "Lease",
    "NodeRecord",
    "NotFoundError",
    "PlanFields",
    "StateError",
    "Store",
    "StoreError",
    "StoreStats",
    "TokenRecord",
    "TransitionRecord",
    "safe_url",
]

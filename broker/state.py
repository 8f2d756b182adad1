"""The broker's durable state: clusters, their transitions and attempts, blocked scopes.

SQLAlchemy Core over SQLite by default (``<state dir>/broker.sqlite``); any SQLAlchemy URL
(``BROKER_STATE_URL``, e.g. PostgreSQL) can replace it for several broker hosts.

Concurrency: every change is one transaction. On SQLite, transactions start with
``BEGIN IMMEDIATE`` (one writer at a time, others wait up to 30 s) in WAL mode; every status
change is also a compare-and-set on a version column, so two processes racing to move the
same cluster cannot both win, whatever the database.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import (
    JSON,
    Column,
    Connection,
    Engine,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    insert,
    select,
    update,
)

from broker.lifecycle import ALLOWED, Status

metadata = MetaData()

clusters = Table(
    "clusters",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("created_at", Float, nullable=False),
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
    Column("owner", String(255)),  # host:pid of the process provisioning it
    Column("version", Integer, nullable=False),
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
    Column("outcome", String(16), nullable=False),  # intent | running | failed | cleaned | leaked
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
    Column("scope", String(400), primary_key=True),
    Column("reason", Text, nullable=False),
    Column("until", Float, nullable=False),
    Column("created_at", Float, nullable=False),
)


STATE_DB_FILENAME = "broker.sqlite"


class StateError(Exception):
    """The store refused a change (unknown cluster, illegal or lost transition)."""


class ConflictError(StateError):
    """The cluster is not in a state that allows this change (someone else moved it)."""


class ClusterRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

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
    nodes: list[dict[str, Any]] | None
    owner: str | None
    version: int


class TransitionRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    cycle: int
    status: Status
    at: float
    reason: str | None
    detail: str | None
    price_per_hour: float | None
    gpus_billed: int | None


class AttemptRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

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
    outcome: str
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


class BlockRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    scope: str
    reason: str
    until: float


def default_state_dir() -> Path:
    """``BROKER_STATE_DIR``, else ``$XDG_STATE_HOME/burst-broker`` (``~/.local/state/...``)."""
    env = os.environ.get("BROKER_STATE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "burst-broker"


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
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class Store:
    """All reads and writes of broker state. Safe to share between processes."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        metadata.create_all(engine)

    @classmethod
    def open(cls, state_dir: Path | None = None, url: str | None = None) -> Store:
        url = url or os.environ.get("BROKER_STATE_URL")
        if url:
            return cls(create_engine(url))
        directory = state_dir or default_state_dir()
        directory.mkdir(parents=True, exist_ok=True)
        return cls(_sqlite_engine(directory / STATE_DB_FILENAME))

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    # -- clusters ---------------------------------------------------------------------------

    def create_cluster(
        self,
        cluster_id: str,
        *,
        request: Mapping[str, Any],
        experiment: Mapping[str, Any] | None,
        backend: str | None,
        owner: str,
        now: float,
    ) -> ClusterRecord:
        with self._tx() as conn:
            conn.execute(
                insert(clusters).values(
                    id=cluster_id,
                    created_at=now,
                    updated_at=now,
                    status=Status.PENDING.value,
                    cycle=1,
                    request=dict(request),
                    experiment=dict(experiment) if experiment is not None else None,
                    backend=backend,
                    owner=owner,
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
            raise StateError(f"no cluster {cluster_id!r}")
        return ClusterRecord.model_validate(dict(row))

    def get(self, cluster_id: str) -> ClusterRecord:
        with self.engine.connect() as conn:
            return self._get(conn, cluster_id)

    def find(self, prefix: str) -> ClusterRecord:
        """A cluster by id or unique id prefix (as users type them)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(clusters.c.id).where(clusters.c.id.startswith(prefix, autoescape=True))
            ).all()
            if len(rows) != 1:
                what = "no cluster" if not rows else f"{len(rows)} clusters match"
                raise StateError(f"{what} {prefix!r}")
            return self._get(conn, rows[0][0])

    def list_clusters(self, statuses: Collection[Status] | None = None) -> list[ClusterRecord]:
        query = select(clusters).order_by(clusters.c.created_at, clusters.c.id)
        if statuses is not None:
            query = query.where(clusters.c.status.in_([s.value for s in statuses]))
        with self.engine.connect() as conn:
            return [ClusterRecord.model_validate(dict(r)) for r in conn.execute(query).mappings()]

    def transition(
        self,
        cluster_id: str,
        to: Status,
        *,
        now: float,
        expect: Collection[Status] | None = None,
        reason: str | None = None,
        detail: str | None = None,
        owner: str | None = None,
        **fields: Any,
    ) -> ClusterRecord:
        """Move a cluster to ``to`` if the lifecycle allows it (and it is in ``expect``).

        ``fields`` update the cluster row in the same transaction (plan, nodes...). Raises
        ConflictError if the cluster is elsewhere: someone else moved it first.
        """
        with self._tx() as conn:
            current = self._get(conn, cluster_id)
            if expect is not None and current.status not in expect:
                raise ConflictError(
                    f"cluster {cluster_id} is {current.status.value}, "
                    f"not {'/'.join(s.value for s in expect)}"
                )
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
                **fields,
            }
            if to is Status.PENDING or to in (Status.QUEUED, Status.STARTING, Status.RUNNING):
                values.setdefault("reason", None)
                values.setdefault("detail", None)
            if reason is not None:
                values["reason"] = reason
            if detail is not None:
                values["detail"] = detail
            if owner is not None:
                values["owner"] = owner
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

    def transitions(self, cluster_id: str) -> list[TransitionRecord]:
        query = (
            select(transitions)
            .where(transitions.c.cluster_id == cluster_id)
            .order_by(transitions.c.id)
        )
        with self.engine.connect() as conn:
            return [
                TransitionRecord.model_validate(dict(r)) for r in conn.execute(query).mappings()
            ]

    def delete_cluster(self, cluster_id: str, *, allowed: Collection[Status]) -> None:
        with self._tx() as conn:
            current = self._get(conn, cluster_id)
            if current.status not in allowed:
                raise ConflictError(
                    f"cluster {cluster_id} is {current.status.value}; only "
                    f"{'/'.join(s.value for s in allowed)} clusters can be deleted"
                )
            for table in (transitions, attempts):
                conn.execute(delete(table).where(table.c.cluster_id == cluster_id))
            conn.execute(delete(clusters).where(clusters.c.id == cluster_id))

    # -- attempts ---------------------------------------------------------------------------

    def start_attempt(self, cluster_id: str, *, now: float, **values: Any) -> AttemptRecord:
        """Record the intent to call the cloud, durably, before the call is made."""
        with self._tx() as conn:
            row = conn.execute(
                insert(attempts)
                .values(
                    cluster_id=cluster_id,
                    started_at=now,
                    outcome="intent",
                    retries=0,
                    nodes_created=0,
                    nodes_cleaned=0,
                    **values,
                )
                .returning(attempts)
            )
            return AttemptRecord.model_validate(dict(row.mappings().one()))

    def finish_attempt(self, attempt_id: int, *, now: float, **values: Any) -> None:
        with self._tx() as conn:
            conn.execute(
                update(attempts).where(attempts.c.id == attempt_id).values(ended_at=now, **values)
            )

    def attempts(self, cluster_id: str) -> list[AttemptRecord]:
        query = select(attempts).where(attempts.c.cluster_id == cluster_id).order_by(attempts.c.id)
        with self.engine.connect() as conn:
            return [AttemptRecord.model_validate(dict(r)) for r in conn.execute(query).mappings()]

    # -- blocked scopes ---------------------------------------------------------------------

    def block(self, scope: str, *, reason: str, until: float, now: float) -> None:
        with self._tx() as conn:
            conn.execute(delete(blocks).where(blocks.c.scope == scope))
            conn.execute(
                insert(blocks).values(scope=scope, reason=reason, until=until, created_at=now)
            )

    def active_blocks(self, now: float) -> dict[str, BlockRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(blocks).where(blocks.c.until > now)).mappings()
            return {r["scope"]: BlockRecord.model_validate(dict(r)) for r in rows}

    def clear_blocks(self) -> int:
        with self._tx() as conn:
            return conn.execute(delete(blocks)).rowcount

"""The schema of the last release without migrations (git a3ed784): every table of
broker.state as it was then, with its indexes.

On an empty database this creates it. On a store that release (or an older one) wrote, it
adopts it: missing tables and indexes are created, missing nullable columns added (the data
stays), and blocks from before scopes were values (no ``kind``) dropped: they cannot be read
and expire within the hour anyway.

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import (
    JSON,
    Column,
    Connection,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    inspect,
    text,
)

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def snapshot() -> MetaData:
    """The tables as release a3ed784 declared them (frozen: never edit; add a revision)."""
    schema = MetaData()
    Table(
        "clusters",
        schema,
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
    )

    Table(
        "transitions",
        schema,
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

    Table(
        "attempts",
        schema,
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

    Table(
        "blocks",
        schema,
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

    Table(
        "tokens",
        schema,
        Column("id", String(32), primary_key=True),  # public: shown by `token list`, used to revoke
        Column("org", String(128), nullable=False, index=True),
        Column("name", String(255), nullable=False),
        Column("role", String(16), nullable=False),
        Column("digest", String(64), nullable=False, unique=True),  # sha256 of the secret
        Column("created_at", Float, nullable=False),
        Column("revoked_at", Float),
        Column("cluster_id", String(64)),  # a node token: the one cluster whose agents it serves
    )

    Table(
        "agents",
        schema,
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

    Table(
        "log_lines",
        schema,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("cluster_id", String(64), ForeignKey("clusters.id"), nullable=False),
        Column("cycle", Integer, nullable=False),
        Column("rank", Integer, nullable=False),
        Column("seq", Integer, nullable=False),
        Column("line", Text, nullable=False),
        Index("log_lines_cluster_rank", "cluster_id", "rank", "id"),
    )

    # per rank and kind: what the agent's syncs sent (broker.artifacts)
    Table(
        "artifact_syncs",
        schema,
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

    # the clouds' quotas as last read (broker.quotas): a short-lived cache
    Table(
        "quota_readings",
        schema,
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

    # an organisation's grant: spend since granted_at counts against it
    Table(
        "credits",
        schema,
        Column("org", String(64), primary_key=True),
        Column("usd", Float, nullable=False),
        Column("granted_at", Float, nullable=False),
    )

    Table(
        "leases",
        schema,
        Column("name", String(128), primary_key=True),
        Column("owner", String(255), nullable=False),
        Column("until", Float, nullable=False),
    )
    return schema


def upgrade() -> None:
    bind: Connection = op.get_bind()
    schema = snapshot()
    have = set(inspect(bind).get_table_names())
    schema.create_all(bind, checkfirst=True)  # an empty database: everything, here
    inspector = inspect(bind)
    for table in schema.sorted_tables:
        if table.name not in have:
            continue
        columns = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in columns and column.nullable:
                kind = column.type.compile(dialect=bind.dialect)
                bind.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))
        for index in table.indexes:
            index.create(bind, checkfirst=True)
    blocks = schema.tables["blocks"]
    bind.execute(delete(blocks).where(blocks.c.kind.is_(None)))


def downgrade() -> None:
    bind: Connection = op.get_bind()
    snapshot().drop_all(bind)

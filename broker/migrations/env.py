"""Alembic's entry point for the broker's migrations: they run on the connection (and inside
the transaction) that broker.state hands over; `broker db upgrade` is how to apply them."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "the broker's migrations run through `broker db upgrade`, which hands them a "
        "connection (set BROKER_STATE_URL, or BROKER_STATE_DIR for SQLite)"
    )
context.configure(connection=connection, target_metadata=None)
with context.begin_transaction():
    context.run_migrations()

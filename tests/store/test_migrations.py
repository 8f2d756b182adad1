"""The store's schema migrations on SQLite and PostgreSQL: revision 1 is the previous release's
schema, head is what broker.state declares, a store the previous release wrote (with data)
upgrades keeping its rows, an older PostgreSQL store is refused naming `broker db upgrade`,
a newer one is refused, an empty database is created once however many open it at once, and
no message ever shows the store's password."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import JSON, Engine, create_engine, inspect, text

from broker.errors import StoreError
from broker.migrations import HEAD, REVISIONS, alembic_config, upgrade_connection
from broker.state import Store, metadata
from tests.conftest import run_broker

DATA = Path(__file__).parent / "data"


@pytest.fixture
def empty_url(store_backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """The URL of a new, empty database on this backend."""
    if store_backend == "sqlite":
        (tmp_path / "store").mkdir()
        return f"sqlite:///{tmp_path / 'store' / 'broker.sqlite'}"
    server: Any = request.getfixturevalue("postgres_server")
    url: str = server.database("mig")
    return url


def engine_of(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return create_engine(url)


def load_previous_release(engine: Engine) -> None:
    """The schema release a3ed784 created (its DDL, as its create_all emitted it)."""
    ddl = (DATA / f"a3ed784.{engine.dialect.name}.sql").read_text()
    with engine.begin() as conn:
        for statement in ddl.split(";"):
            body = "\n".join(line for line in statement.splitlines() if not line.startswith("--"))
            if body.strip():
                conn.exec_driver_sql(body)


def described(engine: Engine) -> dict[str, Any]:
    """Tables, columns (type, nullability, key) and indexes, comparable across databases."""
    found = inspect(engine)
    schema: dict[str, Any] = {}
    for table in sorted(set(found.get_table_names()) - {"alembic_version"}):
        pk = set(found.get_pk_constraint(table)["constrained_columns"])
        schema[table] = {
            "columns": [
                (c["name"], str(c["type"]), c["nullable"], c["name"] in pk)
                for c in found.get_columns(table)
            ],
            "indexes": sorted(
                (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                for i in found.get_indexes(table)
            ),
            "unique": sorted(tuple(u["column_names"]) for u in found.get_unique_constraints(table)),
        }
    return schema


def revision_of(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        value = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        return None if value is None else str(value)


def test_the_revisions_this_release_lists_are_the_migrations_it_ships() -> None:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    shipped = [r.revision for r in reversed(list(script.walk_revisions()))]
    assert shipped == list(REVISIONS)
    assert script.get_current_head() == HEAD


def test_revision_1_is_the_previous_release_schema(
    empty_url: str, store_backend: str, request: pytest.FixtureRequest
) -> None:
    if store_backend == "sqlite":
        old_url = empty_url.replace("broker.sqlite", "old.sqlite")
    else:
        old_url = request.getfixturevalue("postgres_server").database("old")
    old = engine_of(old_url)
    load_previous_release(old)
    new = engine_of(empty_url)
    with new.begin() as conn:
        upgrade_connection(conn, "0001")
    assert revision_of(new) == "0001"
    assert described(new) == described(old)
    assert "clusters_org_status_created" not in str(described(new))  # that is 0002's
    old.dispose()
    new.dispose()


def test_the_migrations_make_the_schema_broker_state_declares(empty_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    store = Store.open(Path("/nonexistent"), empty_url)
    assert store.schema_status().revision == HEAD
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []
    store.engine.dispose()


# A store of the previous release, with a row in every table.
ROWS: dict[str, list[dict[str, Any]]] = {
    "clusters": [
        {
            "id": "c-old-1", "created_at": 100.0, "updated_at": 160.0, "status": "RUNNING",
            "cycle": 1, "request": '{"rank": {"gpus": 8}}', "backend": "sim",
            "shape_id": "aws:us-east-1:p4d.24xlarge:on-demand", "provider": "aws",
            "region": "us-east-1", "zone": "use1-az1", "nodes_count": 1, "procs_per_node": 8,
            "gpus_billed": 8, "price_per_hour": 32.77, "nodes": "[]", "version": 3,
            "org": "acme", "mode": "burst", "idempotency_key": "k1",
        },
        {
            "id": "c-old-2", "created_at": 200.0, "updated_at": 200.0, "status": "PENDING",
            "cycle": 1, "request": '{"rank": {"gpus": 16}}', "nodes": "[]", "version": 0,
            "org": "acme", "mode": "burst",
        },
    ],
    "transitions": [
        {"cluster_id": "c-old-1", "cycle": 1, "status": "PENDING", "at": 100.0},
        {"cluster_id": "c-old-1", "cycle": 1, "status": "RUNNING", "at": 160.0},
        {"cluster_id": "c-old-2", "cycle": 1, "status": "PENDING", "at": 200.0},
    ],
    "attempts": [
        {
            "cluster_id": "c-old-1", "cycle": 1, "attempt_no": 1,
            "shape_id": "aws:us-east-1:p4d.24xlarge:on-demand", "provider": "aws",
            "backend": "sim", "region": "us-east-1", "zone": "use1-az1", "nodes": 1,
            "token": "t1", "started_at": 101.0, "ended_at": 150.0, "outcome": "running",
            "retries": 0, "nodes_created": 1, "nodes_cleaned": 0,
        }
    ],
    "blocks": [
        {"scope": "old-format", "reason": "unreadable", "until": 9e99, "created_at": 1.0},
    ],
    "tokens": [
        {
            "id": "tok1", "org": "acme", "name": "ci", "role": "admin", "digest": "d" * 64,
            "created_at": 50.0,
        }
    ],
    "leases": [{"name": "orphan-sweep", "owner": "host-a", "until": 9e99}],
    "credits": [{"org": "acme", "usd": 500.0, "granted_at": 10.0}],
    "quota_readings": [
        {"provider": "aws", "region": "us-east-1", "bucket": "", "read_at": 5.0},
    ],
}  # fmt: skip


def fill(engine: Engine) -> None:
    tables = metadata.tables
    with engine.begin() as conn:
        for name, rows in ROWS.items():
            for row in rows:
                conn.execute(tables[name].insert().values(**_json_values(name, row)))


def _json_values(table: str, row: dict[str, Any]) -> dict[str, Any]:
    import json

    columns = metadata.tables[table].columns
    as_json = {c.name for c in columns if isinstance(c.type, JSON)}
    return {k: json.loads(v) if k in as_json else v for k, v in row.items()}


def broker_env(url: str, tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    if url.startswith("sqlite:///"):
        env["BROKER_STATE_DIR"] = str(Path(url.removeprefix("sqlite:///")).parent)
        env.pop("BROKER_STATE_URL", None)
    else:
        env["BROKER_STATE_URL"] = url
        env["BROKER_STATE_DIR"] = str(tmp_path / "state")
    return env


def test_a_previous_release_store_with_data_is_upgraded_keeping_it(
    empty_url: str, store_backend: str, tmp_path: Path
) -> None:
    engine = engine_of(empty_url)
    load_previous_release(engine)
    fill(engine)
    env = broker_env(empty_url, tmp_path)

    status = run_broker(env, "db", "status", "--check")
    assert status.returncode == 6, status.stderr
    assert "written before migrations" in status.stderr and "broker db upgrade" in status.stderr
    if store_backend == "postgres":
        # A server or CLI meeting it refuses, naming the command; nothing is changed.
        refused = run_broker(env, "list")
        assert refused.returncode == 6
        assert "older schema" in refused.stderr and "`broker db upgrade`" in refused.stderr
        assert "Traceback" not in refused.stderr
        with pytest.raises(StoreError, match="broker db upgrade"):
            Store.open(tmp_path, empty_url)
        assert revision_of(engine) is None
        done = run_broker(env, "db", "upgrade")
        assert done.returncode == 0, done.stderr
        said = f"to revision {HEAD} (it had no revision: written before migrations)"
        assert said in done.stderr, done.stderr
    store = Store.open(tmp_path, empty_url)  # SQLite's own store upgrades itself here
    assert revision_of(engine) == HEAD

    running = store.get("c-old-1")
    assert (running.status.value, running.version, running.price_per_hour) == ("RUNNING", 3, 32.77)
    assert running.request == {"rank": {"gpus": 8}} and running.idempotency_key == "k1"
    assert [t.status.value for t in store.transitions("c-old-1")] == ["PENDING", "RUNNING"]
    assert [a.outcome.value for a in store.attempts("c-old-1")] == ["running"]
    assert [c.id for c in store.page_clusters(org="acme")] == ["c-old-2", "c-old-1"]
    assert store.token_by_digest("d" * 64) is not None
    assert store.credits("acme") == {"acme": (500.0, 10.0)}
    assert store.take_lease("orphan-sweep", "host-b", now=1.0, until=2.0) == "host-a"
    assert len(store.quota_rows(provider="aws")) == 1
    assert store.active_blocks(0.0) == []  # the old-format block could not be read: dropped
    indexes = {i["name"] for i in inspect(engine).get_indexes("clusters")}
    assert {"clusters_status_created", "clusters_org_mode_created"} <= indexes
    # New writes work on the upgraded store, ids continuing after the old rows.
    new = store.create_cluster("c-new", request={}, experiment=None, backend="sim", now=300.0)
    assert [t.status.value for t in store.transitions(new.id)] == ["PENDING"]

    again = run_broker(env, "db", "upgrade", "--json")  # nothing left to do
    assert again.returncode == 0 and f'"from": "{HEAD}"' in again.stdout
    assert '"current": true' in again.stdout
    store.engine.dispose()
    engine.dispose()


def test_a_store_of_a_newer_release_is_refused(empty_url: str, tmp_path: Path) -> None:
    Store.open(tmp_path, empty_url).engine.dispose()
    engine = engine_of(empty_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(StoreError, match="9999, newer than this broker"):
        Store.open(tmp_path, empty_url)
    unchecked = Store.open(tmp_path, empty_url, check_schema=False)
    with pytest.raises(StoreError, match="upgrade burst-broker"):
        unchecked.upgrade()
    assert revision_of(engine) == "9999"
    unchecked.engine.dispose()
    engine.dispose()


def test_an_empty_database_is_created_once_by_many_opening_it_at_once(
    empty_url: str, tmp_path: Path
) -> None:
    engine_of(empty_url).dispose()  # the SQLite file's directory
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []
    stores: list[Store] = []

    def open_it() -> None:
        try:
            barrier.wait()
            stores.append(Store.open(tmp_path, empty_url))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    _run_all([open_it] * 8)
    assert errors == []
    assert {s.schema_status().revision for s in stores} == {HEAD}
    engine = engine_of(empty_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    for s in stores:
        s.engine.dispose()
    engine.dispose()


def _run_all(work: list[Callable[[], None]]) -> None:
    threads = [threading.Thread(target=w) for w in work]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)


# -- PostgreSQL URLs, and their passwords ---------------------------------------------------


def test_a_plain_postgresql_url_means_psycopg_and_no_message_shows_the_password(
    postgres_server: Any, tmp_path: Path
) -> None:
    url: str = postgres_server.database("pw")
    password = url.split(":", 2)[2].split("@", 1)[0]
    assert len(password) >= 8
    plain = url.replace("postgresql+psycopg://", "postgresql://", 1)
    store = Store.open(tmp_path, plain)
    assert store.engine.dialect.driver == "psycopg"
    assert password not in repr(store) and password not in store.where and "***" in store.where
    listed = run_broker(broker_env(plain, tmp_path), "db", "status", "--json")
    assert listed.returncode == 0 and '"current": true' in listed.stdout
    assert password not in listed.stdout + listed.stderr
    store.engine.dispose()


@pytest.mark.parametrize("where", ["wrong-password", "unreachable"])
@pytest.mark.parametrize("argv", [("list",), ("db", "upgrade", "--json")])
def test_a_store_that_cannot_be_used_is_named_without_its_password(
    postgres_server: Any, tmp_path: Path, where: str, argv: tuple[str, ...]
) -> None:
    url: str = postgres_server.database("bad")
    secret = "hunter2-" + os.urandom(4).hex()
    host = url.split("@", 1)[1]
    if where == "unreachable":
        host = "127.0.0.1:9/" + host.split("/", 1)[1]  # nothing listens there
    bad = f"postgresql://broker:{secret}@{host}"
    with pytest.raises(StoreError) as caught:
        Store.open(tmp_path, bad)
    assert secret not in str(caught.value) and "***" in str(caught.value)
    done = run_broker(broker_env(bad, tmp_path), *argv)
    assert done.returncode == 6, done.stderr
    shown = done.stdout + done.stderr
    assert secret not in shown and "Traceback" not in shown
    expected = "password authentication failed" if where == "wrong-password" else "refused"
    assert expected in shown

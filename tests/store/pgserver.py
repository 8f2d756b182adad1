"""A throwaway PostgreSQL server for the tests: ``initdb`` into a temporary directory, listening
on 127.0.0.1 (a free port) and a unix socket in that directory only, with fsync off; stopped
(and deleted) at the end of the session. Or the server of ``BROKER_TEST_POSTGRES_URL`` (a URL
whose user may create databases), when that is set.

Each xdist worker gets its own server (``initdb`` and start take about a second). Databases
are created per use: :meth:`PostgresServer.database` returns the URL of a new, empty one.
"""

from __future__ import annotations

import atexit
import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import sql

ENV_URL = "BROKER_TEST_POSTGRES_URL"
USER = "broker"


class Unavailable(Exception):
    """No PostgreSQL server can be started here (the message says why)."""


def bin_dir() -> Path | None:
    """Where ``initdb``, ``pg_ctl`` and ``postgres`` are: on PATH, else the newest
    /usr/lib/postgresql/<version>/bin (Debian's packages put them only there)."""
    found = shutil.which("pg_ctl")
    candidates = [Path(found).resolve().parent] if found else []
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2] or 0)
    )
    candidates += [Path(p) for p in reversed(versions)]
    for d in candidates:
        if all((d / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return d
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PostgresServer:
    """A reachable server: ``admin_url`` (psycopg form) names its maintenance database."""

    def __init__(self, admin_url: str, *, owned: Path | None = None) -> None:
        self.admin_url = admin_url
        self._owned = owned  # the data directory of a server we started (None: someone's)
        self._count = 0
        self._created: list[str] = []

    def _url(self, database: str) -> str:
        info = psycopg.conninfo.conninfo_to_dict(self.admin_url)
        password = info.get("password") or ""
        auth = f"{info.get('user')}:{password}@" if password else f"{info.get('user')}@"
        return f"postgresql+psycopg://{auth}{info.get('host')}:{info.get('port')}/{database}"

    def database(self, label: str = "t") -> str:
        """A new empty database: its SQLAlchemy URL (with the password)."""
        self._count += 1
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        name = f"broker_{worker}_{os.getpid()}_{label}_{self._count}".lower()
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self._created.append(name)
        return self._url(name)

    def stop(self) -> None:
        if self._owned is None:
            for name in self._created:  # someone else's server: leave it as we found it
                try:
                    with psycopg.connect(self.admin_url, autocommit=True) as conn:
                        conn.execute(
                            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                                sql.Identifier(name)
                            )
                        )
                except psycopg.Error:
                    pass
            self._created.clear()
            return
        root, self._owned = self._owned, None
        _as_server_user(
            [str(_pg_ctl(root)), "-D", str(root / "data"), "-m", "immediate", "stop"],
            check=False,
        )
        shutil.rmtree(root, ignore_errors=True)


def _pg_ctl(root: Path) -> Path:
    return Path((root / "bin").read_text().strip()) / "pg_ctl"


def _as_server_user(argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL tool, as the ``postgres`` user when we are root (the server
    refuses to run as root)."""
    user = "postgres" if os.geteuid() == 0 else None
    return subprocess.run(
        argv, user=user, capture_output=True, text=True, check=check, timeout=60, cwd="/"
    )


def start() -> PostgresServer:
    """The server of BROKER_TEST_POSTGRES_URL, or a new one of our own (Unavailable if
    neither is possible)."""
    given = os.environ.get(ENV_URL)
    if given:
        url = given.replace("postgresql+psycopg://", "postgresql://", 1)
        try:
            psycopg.connect(url, connect_timeout=10).close()
        except psycopg.Error as exc:
            raise Unavailable(f"{ENV_URL} cannot be reached: {str(exc).splitlines()[0]}") from None
        return PostgresServer(url)
    tools = bin_dir()
    if tools is None:
        raise Unavailable(
            "no PostgreSQL server binaries (initdb, pg_ctl, postgres) on PATH or in "
            "/usr/lib/postgresql/*/bin: apt-get install postgresql, or set " + ENV_URL
        )
    if os.geteuid() == 0:
        import pwd

        try:
            server_user = pwd.getpwnam("postgres")
        except KeyError:
            raise Unavailable(
                "running as root, and there is no 'postgres' user to run the server as"
            ) from None
    root = Path(tempfile.mkdtemp(prefix="broker-pg-"))
    (root / "bin").write_text(str(tools))
    password = secrets.token_urlsafe(12)
    (root / "pw").write_text(password + "\n")
    if os.geteuid() == 0:
        for p in (root, root / "pw", root / "bin"):
            os.chown(p, server_user.pw_uid, server_user.pw_gid)
    try:
        _as_server_user(
            [
                str(tools / "initdb"), "-D", str(root / "data"), "-U", USER,
                f"--pwfile={root / 'pw'}", "--auth-host=scram-sha-256", "--auth-local=trust",
                "-E", "UTF8", "--no-locale", "--no-sync",
            ]
        )  # fmt: skip
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(root, ignore_errors=True)
        raise Unavailable(f"initdb failed: {exc.stderr.strip()[-500:]}") from None
    last = ""
    for _ in range(5):  # a free port can be taken before the server binds it: try another
        port = _free_port()
        options = (
            f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=400 "
            "-c shared_buffers=32MB"
        )
        done = _as_server_user(
            [str(tools / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "log"),
             "-w", "-t", "30", "-o", options, "start"],
            check=False,
        )  # fmt: skip
        if done.returncode == 0:
            server = PostgresServer(
                f"postgresql://{USER}:{password}@127.0.0.1:{port}/postgres", owned=root
            )
            atexit.register(server.stop)  # also if the session dies before its teardown
            return server
        last = (root / "log").read_text(errors="replace")[-500:] if (root / "log").exists() else ""
        time.sleep(0.2)
    shutil.rmtree(root, ignore_errors=True)
    raise Unavailable(f"the PostgreSQL server did not start: {last or done.stderr[-500:]}")

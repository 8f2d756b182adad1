"""Real `broker serve` processes on loopback, and a tiny JSON client (standard library).

``BrokerServer`` starts ``python -m broker.cli serve --sim`` on a free 127.0.0.1 port with its
own state directory, waits for /readyz, and stops it (SIGTERM, then SIGKILL) at the end.
Tokens are created on the same store, as `broker token create` does."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from broker.api import Broker
from broker.lifecycle import Status
from broker.settings import Settings
from broker.state import AttemptOutcome, ClusterRecord


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Reply:
    def __init__(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        self.status = status
        self.body = body
        self.headers = headers

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    url: str,
    method: str = "GET",
    *,
    token: str | None = None,
    body: object = None,
    raw: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 30,
) -> Reply:
    """One HTTP request; never raises for an HTTP status."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Reply(resp.status, resp.read(), dict(resp.headers))
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, exc.read(), dict(exc.headers))


# Every state dir a test used for a server (or a `broker run`), with the server if any: their
# sim node processes (agents and commands) are killed once the server is gone, and all at the
# end of the session, so nothing a test started outlives it.
STATE_DIRS: list[Path] = []
_SERVERS: dict[Path, BrokerServer] = {}


def kill_sim_nodes(state_dir: Path) -> None:
    """Terminate every simulated node process under ``state_dir``."""
    from providers.sim_nodes import NODES_DIR, stop_agents

    nodes = state_dir / NODES_DIR
    if nodes.is_dir():
        stop_agents(state_dir, [p.name for p in nodes.iterdir()], grace=0.2)


def _sweep(everything: bool) -> None:
    for state_dir in list(STATE_DIRS):
        server = _SERVERS.get(state_dir)
        if everything or server is None or server.proc.poll() is not None:
            kill_sim_nodes(state_dir)
            STATE_DIRS.remove(state_dir)
            _SERVERS.pop(state_dir, None)


@pytest.fixture(autouse=True)
def _no_node_outlives_its_server() -> Iterator[None]:
    yield
    _sweep(everything=False)  # servers of module-scoped fixtures keep their nodes


@pytest.fixture(autouse=True, scope="session")
def _no_node_outlives_the_session() -> Iterator[None]:
    yield
    _sweep(everything=True)


class BrokerServer:
    """One `broker serve --sim` process on loopback over ``state_dir``."""

    def __init__(
        self, state_dir: Path, env: Mapping[str, str], *args: str, port: int | None = None
    ) -> None:
        self.state_dir = state_dir
        STATE_DIRS.append(state_dir)
        _SERVERS[state_dir] = self
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = dict(env)
        self.log = state_dir / f"server-{self.port}.log"
        state_dir.mkdir(parents=True, exist_ok=True)
        self._log_file = self.log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "broker.cli", "serve", "--sim", "--port", str(self.port), *args],
            env=self.env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        self.wait_ready()

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.output()}")
            try:
                if call(self.url + "/readyz", timeout=2).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"server not ready: {self.output()}")

    def output(self) -> str:
        if not self._log_file.closed:
            self._log_file.flush()
        return self.log.read_text(errors="replace")

    def broker(self) -> Broker:
        return Broker(Settings.from_env(self.env), state_dir=self.state_dir)

    def token(self, org: str, role: str = "member", name: str = "test") -> str:
        secret, _ = self.broker().create_token(org, name=name, role=role)
        return secret

    def call(self, path: str, method: str = "GET", **kwargs: Any) -> Reply:
        return call(self.url + path, method, **kwargs)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()
        return self.proc.returncode


def server_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "BROKER_STATE_DIR": str(home / "state"),
            "XDG_CONFIG_HOME": str(home / "config"),
            "XDG_DATA_HOME": str(home / "data"),
            "XDG_CACHE_HOME": str(home / "cache"),
            "BROKER_LEASE_SECONDS": "5",
        }
    )
    return env


@pytest.fixture
def server(tmp_path: Path) -> Iterator[BrokerServer]:
    """A fresh server on sim (latency 0), 2 workers, reconciling every second."""
    srv = BrokerServer(
        tmp_path / "state", server_env(tmp_path), "--workers", "2", "--reconcile-every", "1"
    )
    try:
        yield srv
    finally:
        srv.stop(signal.SIGKILL if srv.proc.poll() is None else signal.SIGTERM, timeout=10)


def wait_for(predicate: Any, timeout: float = 30, every: float = 0.05) -> Any:
    """Poll until ``predicate()`` is truthy; return its value (TimeoutError otherwise)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError("condition not met in time")


__all__ = ["BrokerServer", "Reply", "call", "free_port", "server_env", "wait_for"]


def assert_provisioned_once(broker: Broker, cluster: ClusterRecord) -> None:
    """One fallback loop at a time ran this cluster: its attempts are numbered 1..k across
    cycles without a repeat (two workers running it would repeat them), each cycle has at
    most one winning attempt and one RUNNING transition, and a RUNNING cluster's current
    cycle exactly one of each."""
    from collections import Counter

    tried = broker.store.attempts(cluster.id)
    numbers = sorted(a.attempt_no for a in tried)
    assert numbers == list(range(1, len(tried) + 1)), (cluster.id, numbers)
    won = Counter(a.cycle for a in tried if a.outcome == AttemptOutcome.RUNNING.value)
    history = broker.store.transitions(cluster.id)
    ran = Counter(t.cycle for t in history if t.status is Status.RUNNING)
    assert all(n == 1 for n in won.values()), (cluster.id, won)
    assert all(n == 1 for n in ran.values()), (cluster.id, ran)
    if cluster.status is Status.RUNNING:
        assert won[cluster.cycle] == 1 and ran[cluster.cycle] == 1, (cluster.id, won, ran)

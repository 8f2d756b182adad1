"""What the service benchmarks share: a ``broker serve --sim`` process on a free loopback
port (its simulated nodes killed when it stops), a clean environment for every process, and
a small JSON client over ``http.client``. Nothing here imports from ``tests/``."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from broker.api import Broker  # noqa: E402
from broker.settings import Settings  # noqa: E402
from providers.sim_nodes import NODES_DIR, stop_agents  # noqa: E402

READY_TIMEOUT = 60.0  # seconds a server may take to answer /readyz
CALL_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def clean_env(home: Path, cache: Path) -> dict[str, str]:
    """The environment of every process started here: nothing of the caller's broker
    settings, a state dir and XDG dirs under ``home``, a shared bytecode cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "XDG_"))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(
        HOME=str(home),
        BROKER_STATE_DIR=str(home / "state"),
        XDG_CONFIG_HOME=str(home / "config"),
        XDG_DATA_HOME=str(home / "data"),
        XDG_CACHE_HOME=str(home / "cache"),
        PYTHONPYCACHEPREFIX=str(cache),
        PYTHONPATH=str(ROOT),
    )
    return env


def kill_sim_nodes(state_dir: Path) -> None:
    """Every simulated node process under ``state_dir`` (agents and commands) killed."""
    nodes = state_dir / NODES_DIR
    if nodes.is_dir():
        stop_agents(state_dir, [p.name for p in nodes.iterdir()], grace=0.2)


class Delay:
    """A TCP forwarder on a free loopback port that holds each new connection ``seconds``
    before it connects it to ``target`` (set later when the target's port is known): a
    service or store far away, for clients that open a connection per call as the agent
    does. Threads, one per direction of a connection; ``close`` stops accepting."""

    def __init__(self, seconds: float, target: int | None = None) -> None:
        self.seconds = seconds
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=256)
        self.port: int = self.listener.getsockname()[1]
        self.closed = threading.Event()
        threading.Thread(target=self._accept, name="delay-accept", daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._join, args=(conn,), daemon=True).start()

    def _join(self, conn: socket.socket) -> None:
        time.sleep(self.seconds)
        try:
            if self.target is None:
                raise OSError("no target yet")
            upstream = socket.create_connection(("127.0.0.1", self.target), timeout=CALL_TIMEOUT)
        except OSError:
            conn.close()
            return
        for a, b in ((conn, upstream), (upstream, conn)):
            threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(256 * 1024):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()

    def close(self) -> None:
        self.closed.set()
        self.listener.close()


class Server:
    """One ``broker serve --sim`` process on a free loopback port."""

    def __init__(self, env: Mapping[str, str], *args: str) -> None:
        self.env = dict(env)
        self.state_dir = Path(self.env["BROKER_STATE_DIR"])
        self.port = free_port()
        self.log = Path(self.env["HOME"]) / f"server-{self.port}.log"
        self._out = self.log.open("w")
        cmd = [sys.executable, "-m", "broker.cli", "serve", "--sim", "--port", str(self.port)]
        self.proc = subprocess.Popen(
            [*cmd, "--log-level", "warning", *args],
            env=self.env,
            cwd=ROOT,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited {self.proc.returncode}: {self.output()}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/readyz")
                ok = conn.getresponse().status == 200
                conn.close()
                if ok:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"the server was not ready in {READY_TIMEOUT:.0f} s: {self.output()}")

    def output(self) -> str:
        self._out.flush()
        return self.log.read_text(errors="replace")

    def broker(self) -> Broker:
        """A Broker over the server's store (tokens, direct inserts)."""
        return Broker(Settings.from_env(self.env))

    def token(self, org: str, name: str) -> str:
        secret, _ = self.broker().create_token(org, name=name, role="member")
        return secret

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self._out.close()
        finally:
            kill_sim_nodes(self.state_dir)  # its nodes are local processes: none outlives it


@contextmanager
def serving(env: Mapping[str, str], *args: str) -> Iterator[Server]:
    server = Server(env, *args)
    try:
        yield server
    finally:
        server.stop()


class Client:
    """One HTTP/1.1 connection with one token: kept alive, or (``fresh``) a new one for
    each call, as the agent (urllib) makes. With ``retry_idle``, a call on a connection the
    server closed while idle is made again on a new one (only for calls that may repeat)."""

    def __init__(
        self, port: int, token: str, *, fresh: bool = False, retry_idle: bool = False
    ) -> None:
        self.port = port
        self.headers = {"Authorization": f"Bearer {token}"}
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CALL_TIMEOUT)
        self.fresh = fresh
        self.retry_idle = retry_idle or fresh

    def request(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        headers = dict(self.headers)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.fresh:
            self.conn.close()  # http.client connects again on the next request
        try:
            self.conn.request(method, path, body=data, headers=headers)
            resp = self.conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            if not self.retry_idle:
                raise
            self.conn.close()  # the server closed an idle keep-alive connection: once more
            self.conn.request(method, path, body=data, headers=headers)
            resp = self.conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else None

    def ok(self, method: str, path: str, body: object = None) -> Any:
        status, doc = self.request(method, path, body)
        if status >= 300:
            raise RuntimeError(f"{method} {path}: {status} {doc}")
        return doc

    def close(self) -> None:
        self.conn.close()


class Submitters:
    """``len(tokens)`` client threads, each with its own token and keep-alive connection to
    ``ports[i % len(ports)]``, submitting its share of ``clusters`` (``{"gpus": 16}``) once
    :meth:`go` releases them all together."""

    def __init__(
        self, ports: Sequence[int], tokens: Sequence[str], clusters: int, timeout: float
    ) -> None:
        clients = len(tokens)
        self.shares = [clusters // clients + (i < clusters % clients) for i in range(clients)]
        self.ports, self.tokens, self.timeout = list(ports), list(tokens), timeout
        self.answered: list[float] = []  # when each client had its last answer
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._go = threading.Barrier(clients + 1)
        self._threads = [threading.Thread(target=self._submit, args=(i,)) for i in range(clients)]
        for t in self._threads:
            t.start()  # each waits at the barrier

    def _submit(self, i: int) -> None:
        client = Client(self.ports[i % len(self.ports)], self.tokens[i])
        try:
            self._go.wait(timeout=self.timeout)
            for _ in range(self.shares[i]):
                status, doc = client.request("POST", "/v1/clusters", {"gpus": 16})
                if status != 202:
                    raise RuntimeError(f"POST /v1/clusters: {status} {doc}")
        except Exception as exc:  # reported by finish()
            with self._lock:
                self.errors.append(f"client {i}: {exc}")
        finally:
            with self._lock:
                self.answered.append(time.perf_counter())
            client.close()

    def go(self) -> float:
        """Release every client; the moment they go (``time.perf_counter``)."""
        self._go.wait(timeout=self.timeout)
        return time.perf_counter()

    def finish(self, deadline: float) -> float:
        """Wait for every client until ``deadline`` (``perf_counter``); when the last answer
        came. RuntimeError if a submission failed or a client did not finish."""
        for t in self._threads:
            t.join(timeout=max(0.0, deadline - time.perf_counter()))
        if self.errors or any(t.is_alive() for t in self._threads):
            raise RuntimeError(f"submissions failed: {self.errors[:3]}")
        return max(self.answered)


def get_text(port: int, path: str) -> str:
    """The body of ``GET path`` (no token: /metrics, /readyz) as text."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CALL_TIMEOUT)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read().decode(errors="replace")
        if resp.status != 200:
            raise RuntimeError(f"GET {path}: {resp.status} {body[:200]}")
        return body
    finally:
        conn.close()


def metric_total(text: str, name: str) -> dict[str, float]:
    """The samples of one metric in a Prometheus text page: {labels: value}."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            labels, _, value = line[len(name) :].rpartition(" ")
            out[labels.strip()] = out.get(labels.strip(), 0.0) + float(value)
    return out


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # from field 3 (state) on


def process_cpu(pid: int, *, descendants: bool = False) -> float | None:
    """CPU seconds (user + system) of a live process: its threads and its reaped children;
    with ``descendants`` also its live children's (a PostgreSQL postmaster's backends).
    None where /proc cannot say (not Linux, or the process is gone)."""
    fields = _stat_fields(pid)
    if fields is None:
        return None

    def total(f: list[str]) -> float:
        return sum(int(v) for v in f[11:15]) / _TICK  # utime stime cutime cstime

    ticks = total(fields)
    if descendants:
        for entry in Path("/proc").iterdir():
            child = _stat_fields(int(entry.name)) if entry.name.isdigit() else None
            if child is not None and int(child[1]) == pid:  # its parent is ``pid``
                ticks += total(child)
    return ticks


def machine_cpu() -> tuple[float, float] | None:
    """(busy, all) CPU seconds of every core since boot, from /proc/stat (None elsewhere):
    a window's busy share counts everyone's load, the neighbours' too."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return None
    ticks = [int(v) for v in first[1:9]]  # user nice system idle iowait irq softirq steal
    idle = ticks[3] + ticks[4]
    return (sum(ticks) - idle) / _TICK, sum(ticks) / _TICK


__all__ = [
    "ROOT",
    "Client",
    "Server",
    "clean_env",
    "free_port",
    "get_text",
    "kill_sim_nodes",
    "machine_cpu",
    "metric_total",
    "process_cpu",
    "serving",
]

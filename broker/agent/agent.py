"""The burst-broker node agent: runs a cluster's command on one node for the broker service.

One module, Python standard library only, runnable as ``python3 -I agent.py`` on Python 3.8
or newer: the bootstrap copies it to each node, nothing is installed there. The contract is
docs/agent-protocol.md; in brief, every call is ``POST <service>/v1/agent/<name>`` with a
JSON body and ``Authorization: Bearer <node token>``:

1. ``register`` until the answer's state is "run" (every node of the gang has registered);
   that answer carries this node's rank, its environment, the command and the image.
2. Run the command: ``bash -c COMMAND`` in a new process group with the node's environment
   plus the service's (artifact paths re-rooted under ``--root``), or ``docker pull`` then
   ``docker run`` when there is an image. ``started`` once it runs.
3. While it runs: ``logs`` batches (stdout and stderr merged, numbered by ``seq``, from a
   bounded spool) and a ``heartbeat`` every ``heartbeat_every`` seconds.
4. ``exit`` with the exit code (or signal), the reason and the last lines of output.

Connection errors and 5xx answers are retried with backoff (0.5 s doubling to 30 s) for as
long as it takes. A "stop" state in any answer stops the command (SIGTERM to its process
group, SIGKILL after ``stop_grace``); a 401 stops it too and ends the agent with exit code 3.
The agent's own diagnostics go to stderr; the token is never printed.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from typing import IO, Any

AGENT_VERSION = "1"
EXIT_OK, EXIT_USAGE, EXIT_TOKEN = 0, 2, 3

MAX_LINE_CHARS = 4096  # longer lines are cut
MAX_BATCH_BYTES = 256 * 1024  # a logs body stays under this
LAST_LINES = 20  # lines of output in the exit report
DEFAULT_SPOOL_LINES = 20_000  # lines kept while the service cannot take them
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0
HTTP_TIMEOUT = 15.0

# The variables holding artifact paths (broker/env.py's ARTIFACT_PATHS; a test keeps both equal).
ARTIFACT_VARIABLES = (
    "OUTPUT_PATH",
    "CHECKPOINT_ARTIFACT_PATH",
    "CRUD_ARTIFACT_PATH",
    "LOSSY_ARTIFACT_PATH",
    "LOG_ARTIFACT_PATH",
)

# The bounds of the timings an answer may set (see Timings).
TIMING_BOUNDS = {
    "retry_after": (0.05, 300.0),
    "heartbeat_every": (0.05, 3600.0),
    "stop_grace": (0.0, 3600.0),
    "log_batch_seconds": (0.01, 60.0),
    "log_batch_lines": (1, 100_000),
}

_who = "burst-agent"


def log(message: str) -> None:
    """One diagnostic line on stderr, with a UTC timestamp."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    sys.stderr.write(f"{stamp} {_who}: {message}\n")
    sys.stderr.flush()


class TokenRefused(Exception):
    """A 401: the cluster ended or the token is wrong."""


class CallRefused(Exception):
    """A 4xx other than 401 (or a redirect): not retried."""

    def __init__(self, name: str, status: int, detail: str) -> None:
        super().__init__(f"{name} refused with HTTP {status}: {detail}")
        self.status = status


class BadAnswer(Exception):
    """A "run" answer to ``register`` that does not say what to run."""


class Retryable(Exception):
    """A connection error, a timeout, a 5xx or an answer that is not a JSON object."""


class Signalled(Exception):
    """The agent itself got SIGTERM, SIGINT or SIGHUP."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


class Backoff:
    """0.5 s doubling to 30 s; each delay is shortened by up to a quarter at random so that
    the agents of many nodes do not all come back in the same instant."""

    def __init__(self) -> None:
        self.delay = BACKOFF_FIRST

    def sleep(self) -> None:
        time.sleep(self.delay * random.uniform(0.75, 1.0))
        self.delay = min(self.delay * 2, BACKOFF_MAX)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect would carry the token elsewhere: it is an error instead."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Client:
    """The agent calls of one cluster: JSON over HTTP, retried while retrying can help."""

    def __init__(self, service: str, cluster_id: str, token: str) -> None:
        self.base = service.rstrip("/") + "/v1/agent/"
        self.cluster_id = cluster_id
        self._token = token
        self._opener = urllib.request.build_opener(_NoRedirect)

    def __repr__(self) -> str:
        return f"Client({self.base!r}, {self.cluster_id!r})"

    def post(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """The answer to ``name``, retried until it comes; TokenRefused or CallRefused."""
        payload = dict(body, cluster_id=self.cluster_id)
        backoff = Backoff()
        while True:
            try:
                return self.post_once(name, payload)
            except Retryable as error:
                log(f"{name}: {error}; retrying in about {backoff.delay:.1f}s")
                backoff.sleep()

    def post_once(self, name: str, payload: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        request = urllib.request.Request(
            self.base + name,
            data=data,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "Accept": "application/json",
                "Authorization": "Bearer " + self._token,
                "User-Agent": "burst-broker-agent/" + AGENT_VERSION,
            },
        )
        try:
            with self._opener.open(request, timeout=HTTP_TIMEOUT) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            detail = _error_detail(error)
            if error.code == 401:
                raise TokenRefused(detail) from None
            if error.code >= 500 or error.code in (408, 429):
                raise Retryable(f"HTTP {error.code}: {detail}") from None
            raise CallRefused(name, error.code, detail) from None
        except (OSError, http.client.HTTPException) as error:  # URLError is an OSError
            raise Retryable(f"cannot reach {self.base}: {_reason(error)}") from None
        try:
            answer = json.loads(raw.decode("utf-8"))
        except ValueError:
            raise Retryable("the answer is not JSON") from None
        if not isinstance(answer, dict):
            raise Retryable("the answer is not a JSON object")
        return answer


def _reason(error: BaseException) -> str:
    reason = getattr(error, "reason", None)
    return str(reason if reason is not None else error) or type(error).__name__


def _error_detail(error: urllib.error.HTTPError) -> str:
    """The service's message (its ``error``/``detail``/``message``), or the status text."""
    try:
        document = json.loads(error.read(4096).decode("utf-8", "replace"))
    except (OSError, ValueError, http.client.HTTPException):
        return str(error.reason)
    if isinstance(document, dict):
        for key in ("message", "detail", "error"):
            if document.get(key):
                return str(document[key])[:300]
    return str(error.reason)


class Timings:
    """The service's pacing, taken from every answer that carries it (within TIMING_BOUNDS);
    these defaults hold until an answer says otherwise."""

    def __init__(self) -> None:
        self.retry_after = 1.0
        self.heartbeat_every = 5.0
        self.stop_grace = 20.0
        self.log_batch_seconds = 1.0
        self.log_batch_lines = 500

    def update(self, answer: dict[str, Any]) -> None:
        for name, (lowest, highest) in TIMING_BOUNDS.items():
            value = answer.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = min(max(value, lowest), highest)
                setattr(self, name, int(value) if name == "log_batch_lines" else float(value))


class Spool:
    """Output lines waiting to be sent. Bounded: when full, the oldest line is dropped and
    counted. Also keeps the last LAST_LINES lines (for the exit report) whatever is dropped."""

    def __init__(self, cap: int) -> None:
        self.cap = max(1, cap)
        self.dropped = 0  # since the last batch taken
        self.closed = False
        self._lines: collections.deque[str] = collections.deque()
        self._last: collections.deque[str] = collections.deque(maxlen=LAST_LINES)
        self._cond = threading.Condition()
        self._wake_at = 1

    def put(self, line: str) -> None:
        with self._cond:
            if len(self._lines) >= self.cap:
                self._lines.popleft()
                self.dropped += 1
            self._lines.append(line)
            self._last.append(line)
            if len(self._lines) >= self._wake_at:
                self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def pending(self) -> int:
        with self._cond:
            return len(self._lines)

    def last_lines(self) -> list[str]:
        with self._cond:
            return list(self._last)

    def wait(self, timeout: float, lines: int) -> None:
        """Until ``lines`` lines are waiting, the spool is closed, or ``timeout`` passed."""
        with self._cond:
            self._wake_at = lines
            if len(self._lines) < lines and not self.closed:
                self._cond.wait(max(0.0, timeout))

    def take(self, max_lines: int, max_bytes: int) -> tuple[list[str], int]:
        """The next batch (at least one line if any wait) and how many lines were dropped
        since the previous batch."""
        batch: list[str] = []
        size = 2
        with self._cond:
            while self._lines and len(batch) < max_lines:
                cost = len(json.dumps(self._lines[0], ensure_ascii=False).encode("utf-8")) + 1
                if batch and size + cost > max_bytes:
                    break
                batch.append(self._lines.popleft())
                size += cost
            dropped, self.dropped = self.dropped, 0
            return batch, dropped


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "replace").rstrip("\r\n")[:MAX_LINE_CHARS]


def pump(stream: IO[bytes], spool: Spool) -> None:
    """Read ``stream`` line by line into ``spool`` until EOF; a line longer than
    MAX_LINE_CHARS keeps its beginning, the rest of it is skipped."""
    skipping = False
    try:
        for raw in iter(lambda: stream.readline(4 * MAX_LINE_CHARS), b""):
            if not skipping:
                spool.put(_decode(raw))
            skipping = not raw.endswith(b"\n")
    except (OSError, ValueError) as error:
        log(f"reading the command's output failed: {error}")
    finally:
        spool.close()


class Command:
    """A child process in its own process group (session), its merged stdout and stderr
    pumped into a spool by a thread. ``on_kill`` runs when it is SIGKILLed (docker)."""

    def __init__(
        self,
        argv: Sequence[str],
        env: dict[str, str],
        cwd: str,
        spool: Spool,
        on_kill: Callable[[], None] | None = None,
    ) -> None:
        self.proc = subprocess.Popen(
            list(argv),
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.proc.pid
        self.on_kill = on_kill
        self.stopping = False
        self._timer: threading.Timer | None = None
        assert self.proc.stdout is not None
        self.reader = threading.Thread(target=pump, args=(self.proc.stdout, spool), daemon=True)
        self.reader.start()

    def poll(self) -> int | None:
        return self.proc.poll()

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        if self.on_kill is not None:
            self.on_kill()

    def stop(self, grace: float) -> None:
        """SIGTERM to the group now, SIGKILL after ``grace`` seconds (once)."""
        if self.stopping or self.poll() is not None:
            return
        self.stopping = True
        log(f"stopping the command: SIGTERM, SIGKILL after {grace:g}s")
        self.signal(signal.SIGTERM)
        self._timer = threading.Timer(grace, self.kill)
        self._timer.daemon = True
        self._timer.start()

    def finish(self) -> None:
        """After the leader exited: let the reader drain, stop what is left of the group."""
        self.reader.join(1.0)
        if self.reader.is_alive():
            log("processes the command started still hold its output: stopping them")
            self.signal(signal.SIGTERM)
            self.reader.join(2.0)
            self.signal(signal.SIGKILL)
            self.reader.join(2.0)
        self.signal(signal.SIGKILL)
        if self._timer is not None:
            self._timer.cancel()

    def abandon(self, grace: float) -> None:
        """Stop the command and wait for it (the agent is about to end)."""
        self.stop(grace)
        try:
            self.proc.wait(grace + 5.0)
        except subprocess.TimeoutExpired:
            self.kill()
        self.finish()


def shell_argv(command: str) -> list[str]:
    shell = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"
    return [shell, "-c", command]


def reroot(env: dict[str, str], root: str) -> dict[str, str]:
    """``env`` with each artifact path moved under ``root`` (``/mnt/x`` -> ``root/mnt/x``)."""
    moved = dict(env)
    for name in ARTIFACT_VARIABLES:
        value = env.get(name, "")
        if value.startswith("/"):
            moved[name] = os.path.join(root, value.lstrip("/"))
    return moved


def mounts(env: dict[str, str], root: str, datasets: Sequence[str]) -> list[tuple[str, str]]:
    """(host path, container path) for each artifact path and each dataset, no repeats."""
    pairs: list[tuple[str, str]] = []
    paths = [env[n] for n in ARTIFACT_VARIABLES if env.get(n, "").startswith("/")]
    paths += ["/data/" + d for d in datasets]
    for path in paths:
        pair = (os.path.join(root, path.lstrip("/")), path)
        if pair not in pairs:
            pairs.append(pair)
    return pairs


def docker_run_argv(
    docker: str,
    image: str,
    command: str,
    env: dict[str, str],
    root: str,
    datasets: Sequence[str] = (),
    cidfile: str | None = None,
) -> list[str]:
    """``docker run`` for the command in ``image``: GPUs, host network and IPC, ``--init``
    (so SIGTERM reaches the command, not a PID 1 that ignores it), the service's variables
    as they are (the container sees the seed's paths) and the mounts that back them."""
    argv = [docker, "run", "--rm", "--init", "--gpus", "all", "--network", "host"]
    argv += ["--ipc", "host"]
    if cidfile is not None:
        argv += ["--cidfile", cidfile]
    for name, value in env.items():
        argv += ["-e", f"{name}={value}"]
    for host, path in mounts(env, root, datasets):
        argv += ["-v", f"{host}:{path}"]
    return [*argv, image, "bash", "-c", command]


def detect_address(service: str) -> str:
    """The source address of a UDP socket connected towards the service (nothing is sent)."""
    parts = urllib.parse.urlsplit(service)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    family, kind, proto, _, sockaddr = socket.getaddrinfo(
        parts.hostname, port, type=socket.SOCK_DGRAM
    )[0]
    with socket.socket(family, kind, proto) as sock:
        sock.connect(sockaddr)
        return str(sock.getsockname()[0])


class Plan:
    """What a "run" answer to ``register`` says this node runs."""

    def __init__(self, answer: dict[str, Any]) -> None:
        rank, env, command = answer.get("rank"), answer.get("env"), answer.get("command")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise ValueError(f"rank {rank!r} is not a rank")
        if not isinstance(env, dict):
            raise ValueError("env is not an object")
        if not isinstance(command, str) or not command.strip():
            raise ValueError("no command")
        image, datasets = answer.get("image"), answer.get("datasets") or []
        if image is not None and not isinstance(image, str):
            raise ValueError(f"image {image!r} is not a string")
        if not isinstance(datasets, list) or not all(_dataset_id(d) for d in datasets):
            raise ValueError(f"datasets {datasets!r} are not dataset ids")
        self.rank: int = rank
        self.env: dict[str, str] = {str(k): str(v) for k, v in env.items()}
        self.command: str = command
        self.image: str | None = image or None
        self.datasets: list[str] = list(datasets)


def _dataset_id(value: object) -> bool:
    """A name that is safe as a path component and in ``-v HOST:PATH``."""
    return (
        isinstance(value, str)
        and value[:1].isalnum()
        and all(c.isalnum() or c in "._-" for c in value)
    )


class Agent:
    """One node's agent: register, run, report (see the module's docstring)."""

    def __init__(self, args: argparse.Namespace, token: str) -> None:
        self.args = args
        self.client = Client(args.service, args.cluster, token)
        self.timings = Timings()
        self.rank: int | None = None
        self.command: Command | None = None
        self.pidfile: str | None = None  # <state-dir>/command.pid while the command runs
        self.stop_requested = False
        self.seq = 0

    def call(self, name: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """``name`` after ``register``: the answer, or None when refused (logged)."""
        try:
            answer = self.client.post(name, dict(body, rank=self.rank))
        except CallRefused as error:
            log(str(error))
            return None
        self.timings.update(answer)
        if answer.get("state") == "stop":
            self.request_stop()
        return answer

    def request_stop(self) -> None:
        if not self.stop_requested:
            log("the service says stop")
        self.stop_requested = True
        if self.command is not None:
            self.command.stop(self.timings.stop_grace)

    def address(self) -> str:
        backoff = Backoff()
        while True:
            try:
                return detect_address(self.args.service)
            except OSError as error:
                log(f"cannot find this node's address towards the service: {error}")
                backoff.sleep()

    def register(self) -> Plan | None:
        """Poll ``register`` until "run" (a Plan) or "stop" (None)."""
        body = {
            "address": self.args.address or self.address(),
            "instance_id": self.args.instance_id,
            "agent_version": AGENT_VERSION,
            "python": "{}.{}.{}".format(*sys.version_info[:3]),
        }
        log(f"registering {body['address']} with {self.client.base}")
        waited = False
        while True:
            answer = self.client.post("register", body)
            self.timings.update(answer)
            state = answer.get("state")
            if state == "run":
                try:
                    return Plan(answer)
                except ValueError as error:
                    raise BadAnswer(f"the service's answer to register: {error}") from None
            if state == "stop":
                return None
            if not waited:
                log("waiting for every node of the cluster to register")
                waited = True
            time.sleep(self.timings.retry_after)

    def run(self) -> int:
        plan = self.register()
        if plan is None:
            log("the service says stop before the command started: nothing to run")
            return EXIT_OK
        global _who
        self.rank = plan.rank
        _who = f"burst-agent[{self.args.cluster} rank {plan.rank}]"
        log(f"running {plan.command[:200]!r}" + (f" in {plan.image}" if plan.image else ""))
        root = self.args.root
        try:
            host_env = reroot(plan.env, root)
            datasets = [os.path.join(root, "data", d) for d in plan.datasets]
            for name in (root, *(host_env[n] for n in ARTIFACT_VARIABLES if n in host_env)):
                os.makedirs(name, exist_ok=True)
            for name in datasets:  # made here, not by docker (which would make them root's)
                os.makedirs(name, exist_ok=True)
        except OSError as error:
            return self.report("spawn_failed", None, [f"cannot create {error.filename}: {error}"])
        if plan.image is None:
            return self.execute(shell_argv(plan.command), dict(os.environ, **host_env))
        return self.run_in_docker(plan)

    def run_in_docker(self, plan: Plan) -> int:
        docker = shutil.which("docker")
        if docker is None or plan.image is None:
            return self.report("spawn_failed", None, ["docker: command not found on this node"])
        pull_spool = Spool(LAST_LINES)
        try:
            self.command = Command([docker, "pull", plan.image], dict(os.environ), "/", pull_spool)
        except OSError as error:
            return self.report("spawn_failed", None, [f"cannot run {docker}: {error}"])
        code = self.supervise(self.command, pull_spool, send_logs=False)
        if self.command.stopping:
            return self.report("stopped", code, pull_spool.last_lines())
        if code != 0:
            log(f"docker pull {plan.image} failed ({code})")
            return self.report("image_pull_failed", code, pull_spool.last_lines())
        cidfile = self.state_file("container.id")
        argv = docker_run_argv(
            docker, plan.image, plan.command, plan.env, self.args.root, plan.datasets, cidfile
        )

        def kill_container() -> None:
            if cidfile is not None and os.path.exists(cidfile):
                with open(cidfile) as handle:
                    cid = handle.read().strip()
                if cid:
                    subprocess.run([docker, "kill", cid], capture_output=True, timeout=30)

        return self.execute(argv, dict(os.environ), kill_container)

    def execute(
        self, argv: list[str], env: dict[str, str], on_kill: Callable[[], None] | None = None
    ) -> int:
        """Start the command, follow it to its end, report."""
        if self.stop_requested:
            return self.report("stopped", None, [])
        spool = Spool(self.args.spool_lines)
        try:
            self.command = Command(argv, env, self.args.root, spool, on_kill)
        except OSError as error:
            return self.report("spawn_failed", None, [f"cannot start {argv[0]}: {error}"])
        self.pidfile = self.state_file("command.pid", str(self.command.pid))
        self.call("started", {"pid": self.command.pid})
        code = self.supervise(self.command, spool, send_logs=True)
        self.forget_pid()
        reason = "stopped" if self.command.stopping else "exited"
        return self.report(reason, code, spool.last_lines())

    def supervise(self, command: Command, spool: Spool, send_logs: bool) -> int:
        """Heartbeats (and log batches) until the command ended; its return code."""
        next_beat = time.monotonic() + self.timings.heartbeat_every
        last_flush = 0.0
        while True:
            code = command.poll()
            if code is not None:
                command.finish()
                while send_logs and spool.pending():
                    self.send_logs(spool)
                return code
            now = time.monotonic()
            batch_lines = self.timings.log_batch_lines
            if now >= next_beat:
                self.call("heartbeat", {})
                next_beat = time.monotonic() + self.timings.heartbeat_every
            elif (
                send_logs
                and spool.pending()
                and (
                    spool.pending() >= batch_lines
                    or now - last_flush >= self.timings.log_batch_seconds
                )
            ):
                self.send_logs(spool)
                last_flush = time.monotonic()
            else:
                deadline = next_beat
                if send_logs and spool.pending():
                    deadline = min(deadline, last_flush + self.timings.log_batch_seconds)
                spool.wait(min(deadline - now, 0.1), batch_lines if send_logs else 1 << 30)

    def send_logs(self, spool: Spool) -> None:
        """One batch. ``seq`` numbers the lines sent; ``dropped`` counts the lines lost since
        the previous batch. A retried batch is the same body (same seq); a refused one (4xx)
        leaves a gap in seq, which the service counts as lost."""
        lines, dropped = spool.take(self.timings.log_batch_lines, MAX_BATCH_BYTES - 1024)
        if not lines:
            return
        body = {"seq": self.seq, "lines": lines, "dropped": dropped}
        self.call("logs", body)
        self.seq += len(lines)

    def report(self, reason: str, code: int | None, last_lines: list[str]) -> int:
        """``exit``. A spawn failure says 127 (the shell's "cannot run") as its code."""
        if reason == "spawn_failed":
            code = 127
        exit_code = code if code is not None and code >= 0 else None
        signum = -code if code is not None and code < 0 else None
        body = {
            "exit_code": exit_code,
            "signal": signum,
            "reason": reason,
            "last_lines": last_lines[-LAST_LINES:],
        }
        log(f"the command ended: {reason}, exit code {exit_code}, signal {signum}")
        self.call("exit", body)
        return EXIT_OK

    def state_file(self, name: str, content: str | None = None) -> str | None:
        """A path in --state-dir (created; stale file removed), with ``content`` written;
        None when the directory cannot be used."""
        path = os.path.join(self.args.state_dir, name)
        try:
            os.makedirs(self.args.state_dir, exist_ok=True)
            _remove(path)
            if content is not None:
                with open(path, "w") as handle:
                    handle.write(content + "\n")
        except OSError as error:
            log(f"cannot use the state directory: {error}")
            return None
        return path

    def forget_pid(self) -> None:
        if self.pidfile is not None:
            _remove(self.pidfile)
            self.pidfile = None

    def abandon(self) -> None:
        """Stop the command, if one runs, before the agent ends."""
        if self.command is not None and self.command.poll() is None:
            self.command.abandon(self.timings.stop_grace)
        self.forget_pid()


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="agent.py",
        description="The burst-broker node agent (docs/agent-protocol.md).",
    )
    parser.add_argument("--service", required=True, help="the service's base URL")
    parser.add_argument("--cluster", required=True, help="the cluster id")
    parser.add_argument("--token-file", required=True, help="a file holding the node token")
    parser.add_argument("--address", help="this node's private address (default: detected)")
    parser.add_argument("--instance-id", help="the cloud's instance id, for messages")
    parser.add_argument("--root", default="/", help="where the artifact paths live")
    parser.add_argument("--state-dir", help="default: <root>/var/lib/burst-broker")
    parser.add_argument(
        "--spool-lines",
        type=int,
        default=DEFAULT_SPOOL_LINES,
        help="output lines kept while the service cannot take them (tuning and tests)",
    )
    args = parser.parse_args(argv)
    parts = urllib.parse.urlsplit(args.service)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        parser.error(f"--service {args.service!r} is not an http(s) URL")
    if args.spool_lines < 1:
        parser.error("--spool-lines must be at least 1")
    args.root = os.path.abspath(args.root)
    if args.state_dir is None:
        args.state_dir = os.path.join(args.root, "var", "lib", "burst-broker")
    return args


def read_token(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            token = handle.read(4096).strip()
    except (OSError, UnicodeDecodeError) as error:
        log(f"cannot read the token file {path}: {getattr(error, 'strerror', None) or error}")
        return None
    if not token or any(c.isspace() for c in token):
        log(f"the token file {path} does not hold a token")
        return None
    return token


def _on_signal(signum: int, frame: object) -> None:
    for each in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        if signal.getsignal(each) is _on_signal:
            signal.signal(each, signal.SIG_DFL)  # a second signal ends the agent at once
    raise Signalled(signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    token = read_token(args.token_file)
    if token is None:
        return EXIT_USAGE
    for each in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        if signal.getsignal(each) is not signal.SIG_IGN:  # nohup's SIGHUP stays ignored
            signal.signal(each, _on_signal)
    agent = Agent(args, token)
    try:
        return agent.run()
    except TokenRefused as error:
        log(f"the service refused the node token (the cluster ended, or a wrong token): {error}")
        agent.abandon()
        return EXIT_TOKEN
    except (CallRefused, BadAnswer) as error:
        log(f"registration failed: {error}")
        agent.abandon()
        return EXIT_USAGE
    except Signalled as error:
        log(f"got signal {error.signum}: stopping the command and ending")
        agent.abandon()
        return 128 + error.signum


if __name__ == "__main__":
    sys.exit(main())

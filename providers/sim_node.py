"""The supervisor of a simulated node that can be preempted (the sim's ``preempt_*`` keys).

:mod:`providers.sim_nodes` runs it, instead of the agent, as the leader of the node's process
group (its pid in the node's pid file: a terminate kills it and everything under it)::

    python -I sim_node.py --db SIM_DB --node ID --pid-file F --command-pid-file F
        --notice S [--after S] [--on-line=TEXT --output-copy FILE] -- AGENT.PY ARGS...

Standard library only (``-I``: nothing of this package is importable). It serves a GCP-style
metadata endpoint on 127.0.0.1 (``/computeMetadata/v1/instance/preempted`` and
``maintenance-event``, ``Metadata-Flavor: Google`` required, ETag and ``wait_for_change``
long polls as the agent's watcher uses them) and starts the agent as its child, in its group,
with ``--cloud gcp --metadata-url`` of that endpoint (and ``--output-copy`` for a line
trigger, whose file it follows). On the trigger (``--after`` seconds after the agent started,
or a line of the command's output containing ``--on-line``) ``preempted`` turns TRUE; after
``--notice`` seconds the node ends as a terminated machine does: the agent's and the command's
process groups are killed (SIGTERM, SIGKILL after half a second), then the node is marked
terminated in the sim's SQLite file and a ``preempt`` call recorded there (the table layout
is providers/sim.py's).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

METADATA_PREFIX = "/computeMetadata/v1/instance/"
METADATA_POLL = "0.2"  # the agent's --metadata-poll: only used when no ETag comes back
MAX_WAIT = 3600.0  # seconds a wait_for_change may hold (GCP's own limit is about that)
TICK = 0.05  # seconds between two looks at the trigger
KILL_GRACE = 0.5  # seconds between SIGTERM and SIGKILL (as providers.sim_nodes.stop_agents)


def say(message: str) -> None:
    print(f"sim-node: {message}", file=sys.stderr, flush=True)


class Metadata:
    """The node's metadata values and a loopback server answering them as GCP does."""

    def __init__(self) -> None:
        self.preempted = False
        self.changed = threading.Condition()
        meta = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                meta.answer(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def preempt(self) -> None:
        with self.changed:
            self.preempted = True
            self.changed.notify_all()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        with self.changed:
            self.changed.notify_all()

    def value(self, key: str) -> str | None:
        if key == "preempted":
            return "TRUE" if self.preempted else "FALSE"
        if key == "maintenance-event":
            return "NONE"
        return None

    def answer(self, request: BaseHTTPRequestHandler) -> None:
        parts = urllib.parse.urlsplit(request.path)
        query = dict(urllib.parse.parse_qsl(parts.query))
        headers = {"Metadata-Flavor": "Google", "Content-Type": "application/text"}
        if request.headers.get("Metadata-Flavor") != "Google" or request.headers.get(
            "X-Forwarded-For"
        ):
            self.send(request, 403, b"Missing Metadata-Flavor:Google header.", headers)
            return
        key = parts.path[len(METADATA_PREFIX) :] if parts.path.startswith(METADATA_PREFIX) else ""
        value = self.value(key)
        if value is None:
            self.send(request, 404, b"Not Found", headers)
            return
        if query.get("wait_for_change") == "true":
            try:
                wait = min(max(float(query.get("timeout_sec", MAX_WAIT)), 0.0), MAX_WAIT)
            except ValueError:
                self.send(request, 400, b"Invalid timeout_sec", headers)
                return
            deadline = time.monotonic() + wait
            last = query.get("last_etag", _etag(value))
            with self.changed:
                while _etag(value) == last and time.monotonic() < deadline:
                    self.changed.wait(deadline - time.monotonic())
                    value = self.value(key) or ""
        self.send(request, 200, value.encode(), {**headers, "ETag": _etag(value)})

    @staticmethod
    def send(
        request: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str]
    ) -> None:
        with contextlib.suppress(OSError):  # the agent may be gone (killed mid long poll)
            request.send_response(status)
            for name, value in headers.items():
                request.send_header(name, value)
            request.send_header("Content-Length", str(len(body)))
            request.end_headers()
            request.wfile.write(body)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a long poll cut by the agent's end is no news


def _etag(value: str) -> str:
    return hashlib.md5(value.encode(), usedforsecurity=False).hexdigest()[:16]


class Tail:
    """Follows the agent's copy of the command's output: has a line containing ``text``
    been written yet?"""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.text = text
        self.offset = 0
        self.partial = b""

    def matched(self) -> bool:
        """Reads what was written since the last call (up to its end)."""
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                while data := handle.read(1 << 20):
                    self.offset += len(data)
                    *lines, self.partial = (self.partial + data).split(b"\n")
                    if any(self.text in line.decode("utf-8", "replace") for line in lines):
                        return True
        except FileNotFoundError:
            pass
        return False


def _pgid_in(path: str) -> int | None:
    try:
        with open(path) as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def end_processes(agent: subprocess.Popen[bytes], command_pid_file: str) -> None:
    """As a terminated machine: the command's group and the agent get SIGTERM, then SIGKILL
    after KILL_GRACE. The command's pgid is read before the agent can remove its pid file."""
    groups = {g for g in (_pgid_in(command_pid_file),) if g is not None}
    for pgid in groups:
        _signal_group(pgid, signal.SIGTERM)
    with contextlib.suppress(ProcessLookupError):
        agent.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE
    while time.monotonic() < deadline and (
        agent.poll() is None or any(_group_alive(g) for g in groups)
    ):
        time.sleep(0.02)
    late = _pgid_in(command_pid_file)  # a command that started meanwhile
    for pgid in groups | ({late} if late is not None else set()):
        _signal_group(pgid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        agent.kill()
    agent.wait()


def mark_preempted(db_path: str, node: str) -> bool:
    """The node terminated in the sim's file, with a ``preempt`` call recorded; False when
    it was not alive any more (a terminate came first)."""
    with contextlib.closing(sqlite3.connect(db_path, timeout=30, isolation_level=None)) as db:
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute(
                "SELECT shape_id, zone FROM nodes WHERE provider_id = ? "
                "AND state IN ('pending', 'running')",
                (node,),
            ).fetchone()
            if row is not None:
                now = time.time()
                db.execute(
                    "UPDATE nodes SET state = 'terminated', ended_at = ? WHERE provider_id = ?",
                    (now, node),
                )
                db.execute(
                    "INSERT INTO calls (op, shape_id, zone, token, count, nodes, outcome, at) "
                    "VALUES ('preempt', ?, ?, NULL, 1, ?, 'ok', ?)",
                    (row[0], row[1], json.dumps([node]), now),
                )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    return row is not None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sim_node.py", description=__doc__.split("\n")[0])
    parser.add_argument("--db", required=True, help="the simulated cloud's SQLite file")
    parser.add_argument("--node", required=True, help="this node's id")
    parser.add_argument("--pid-file", required=True, help="the node's pid file (this process)")
    parser.add_argument("--command-pid-file", required=True, help="the agent's command.pid")
    parser.add_argument("--notice", type=float, required=True, help="seconds of notice")
    parser.add_argument("--after", type=float, help="preempt this long after the agent started")
    parser.add_argument("--on-line", help="preempt when an output line contains this")
    parser.add_argument("--output-copy", help="the agent's --output-copy file (with --on-line)")
    parser.add_argument("agent", nargs=argparse.REMAINDER, help="-- AGENT.PY ARGS...")
    args = parser.parse_args(argv)
    if args.agent[:1] == ["--"]:
        args.agent = args.agent[1:]
    if not args.agent:
        parser.error("the agent's path and arguments come after --")
    if args.after is None and args.on_line is None:
        parser.error("no trigger: --after and/or --on-line")
    if args.on_line is not None and args.output_copy is None:
        parser.error("--on-line needs --output-copy")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    meta = Metadata()
    extra = ["--cloud", "gcp", "--metadata-url", meta.url, "--metadata-poll", METADATA_POLL]
    tail = None
    if args.on_line is not None:
        extra += ["--output-copy", args.output_copy]
        tail = Tail(args.output_copy, args.on_line)
    agent = subprocess.Popen(
        [sys.executable, "-I", *args.agent, *extra], stdin=subprocess.DEVNULL, close_fds=True
    )
    started = time.monotonic()
    say(f"{args.node}: agent {agent.pid} started, metadata at {meta.url}")
    why = None
    while why is None:
        if args.after is not None and time.monotonic() - started >= args.after:
            why = f"{args.after:g}s after the agent started"
        elif tail is not None and tail.matched():
            why = f"the command printed a line with {args.on_line!r}"
        elif agent.poll() is not None and args.after is None:
            if tail is not None and tail.matched():  # its last lines
                why = f"the command printed a line with {args.on_line!r}"
                continue
            say(f"{args.node}: the agent ended ({agent.returncode}) before any preemption")
            meta.stop()
            return 0
        else:
            time.sleep(TICK)
    say(f"{args.node}: preempted ({why}); the node ends in {args.notice:g}s")
    meta.preempt()
    time.sleep(args.notice)
    end_processes(agent, args.command_pid_file)
    marked = mark_preempted(args.db, args.node)
    say(f"{args.node}: " + ("terminated (preempted)" if marked else "was terminated already"))
    for path in (args.pid_file, args.command_pid_file):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    meta.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run a node boot script for real, in a temporary directory, with a stand-in ``python3`` and
a stand-in service on loopback that serves the agent.

The script is generated with ``install_dir`` and ``log_file`` inside the test's directory
(so it never touches /opt or /var/log), written to a file and executed through its ``#!``
line. The stand-in python answers the script's version check (yes or no, as told), hands the
agent download (``-I -c PROGRAM ARGS...``) to this machine's python, and, for any other call,
records its argv (NUL-separated, so every value comes back exactly), its session id and its
working directory, then prints a line (which must land in the log).

The stand-in service (:class:`AgentService`, one per test process, started on first use)
serves ``GET <prefix>/v1/agent/agent.py`` per :class:`Route`: each test directory gets its
own prefix (:func:`service_for`), so a script made by :func:`script_for` downloads the agent
it pins, with the node token it carries, from its own route. Every POST (an agent call) is
recorded and refused with 401, as a service refusing the token would.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.agent.bootstrap import AGENT_ROUTE, bootstrap_script, packaged_agent

SERVICE = "https://broker.internal.example:8443"  # for scripts that are read, not run
CLUSTER = "bb-0a1b2c3d4e5f"
NODE_TOKEN = "bbn_" + "Zq9-_x" * 7 + "A"  # the shape of a real one: bbn_ + 43 characters
AGENT = b'#!/usr/bin/env python3\n"""a stand-in agent"""\nprint(\'agent\')\n' + bytes(range(256))
# What the script needs besides python3 (for a PATH without any real python).
TOOLS = ("date", "mkdir", "chmod", "rm", "setsid", "nohup", "mv")  # mv: the stand-in's

STUB = """#!/bin/sh
# a stand-in python3 {version}
if [ "$1" = "-I" ] && [ "$2" = "-c" ]; then
    if [ "$#" -eq 3 ]; then
        exit {answer}
    fi
    echo "$0" >{record}/fetch.$$
    exec {python} "$@"
fi
read -r _pid _comm _state _ppid _pgrp sid _rest </proc/$$/stat
out={record}/call.$$
printf '%s\\0' "$0" "$@" >"$out.argv"
printf '%s %s\\n' "$$" "$sid" >"$out.session"
pwd >"$out.cwd"
mv "$out.argv" "$out.args"
echo "stand-in python started"
"""


@dataclass
class Route:
    """What the stand-in service answers under one prefix."""

    agent: bytes
    token: str = NODE_TOKEN
    failures: int = 0  # answer this many GETs 503 first
    status: int | None = None  # answer every GET with this status instead
    location: str | None = None  # answer every GET with a redirect (302) there instead
    gets: list[str | None] = field(default_factory=list)  # each GET's Authorization header
    paths: list[str] = field(default_factory=list)  # each GET's path
    posts: list[dict[str, Any]] = field(default_factory=list)  # path, auth, body of each POST


class AgentService(http.server.ThreadingHTTPServer):
    """The service's agent download on loopback, one :class:`Route` per path prefix."""

    daemon_threads = True

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        super().__init__(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: AgentService

    def _route(self) -> Route | None:
        """The route of the request's prefix (its first path segment)."""
        return self.server.routes.get(self.path.lstrip("/").partition("/")[0])

    def do_GET(self) -> None:
        route = self._route()
        if route is None or not self.path.endswith(AGENT_ROUTE):
            return self._answer(404, b"not found")
        auth = self.headers.get("Authorization")
        route.gets.append(auth)
        route.paths.append(self.path)
        if auth != f"Bearer {route.token}":
            return self._answer(401, b'{"error": "a valid node token is required"}')
        if route.location is not None:
            return self._answer(302, b"elsewhere", {"Location": route.location})
        if route.status is not None:
            return self._answer(route.status, b"told to")
        if route.failures > 0:
            route.failures -= 1
            return self._answer(503, b"starting up")
        digest = hashlib.sha256(route.agent).hexdigest()
        self._answer(200, route.agent, {"X-Agent-SHA256": digest})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        route = self._route()
        if route is not None:
            route.posts.append(
                {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
            )
        answer = json.dumps({"error": {"kind": "Unauthorized", "message": "no"}}).encode()
        self._answer(401, answer)

    def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


_SHARED: list[AgentService] = []
_LOCK = threading.Lock()


def shared_service() -> AgentService:
    """This process's stand-in service (started on first use; a daemon thread)."""
    with _LOCK:
        if not _SHARED:
            _SHARED.append(AgentService())
        return _SHARED[0]


def _prefix(root: Path) -> str:
    return "r" + hashlib.sha256(str(root).encode()).hexdigest()[:16]


def service_for(root: Path) -> str:
    """The service URL of the test directory ``root`` (its own prefix on the service)."""
    return f"{shared_service().url}/{_prefix(root)}"


def serve(root: Path, agent: bytes, token: str = NODE_TOKEN) -> Route:
    """Serve ``agent`` to ``token`` at ``root``'s prefix from now on (a fresh route)."""
    route = Route(agent=agent, token=token)
    shared_service().routes[_prefix(root)] = route
    return route


def route_of(root: Path) -> Route:
    """The route :func:`script_for` (or :func:`serve`) set up for ``root``."""
    return shared_service().routes[_prefix(root)]


@dataclass
class Call:
    """One call of the stand-in python (not the version check, not the download)."""

    argv: list[str]  # argv[0] is the python the script chose
    pid: int
    session: int
    cwd: str


@dataclass
class BootRun:
    root: Path
    install_dir: Path
    log_file: Path
    result: subprocess.CompletedProcess[str]
    calls: list[Call]
    fetched_with: list[str]  # the python each download ran with

    @property
    def log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""


def paths(root: Path) -> tuple[Path, Path]:
    """(install directory, log file) of a run under ``root``."""
    return root / "opt" / "burst-broker", root / "var" / "log" / "burst-broker-agent.log"


def script_for(root: Path, **overrides: object) -> str:
    """A boot script installing under ``root`` (the stand-in agent unless told otherwise).

    Without a ``service_url``, the script downloads from ``root``'s route of the stand-in
    service, which from now on serves the agent the script pins to the script's token."""
    install_dir, log_file = paths(root)
    values: dict[str, object] = {
        "cluster_id": CLUSTER,
        "node_token": NODE_TOKEN,
        "agent_source": AGENT,
        "install_dir": str(install_dir),
        "log_file": str(log_file),
    }
    values.update(overrides)
    if "service_url" not in values:
        agent = values["agent_source"]
        assert agent is None or isinstance(agent, bytes)
        token = values["node_token"]
        assert isinstance(token, str)
        serve(root, packaged_agent() if agent is None else agent, token)
        values["service_url"] = service_for(root)
    return bootstrap_script(**values)  # type: ignore[arg-type]


def stub_python(bin_dir: Path, record: Path, name: str = "python3", *, new: bool = True) -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    record.mkdir(parents=True, exist_ok=True)
    stub = bin_dir / name
    stub.write_text(
        STUB.format(
            version="3.12" if new else "3.6",
            answer=0 if new else 1,
            record=record,
            python=sys.executable,
        )
    )
    stub.chmod(0o755)
    return stub


def tools_dir(where: Path) -> Path:
    """A directory with the script's tools and nothing else (no python of this machine)."""
    where.mkdir(parents=True, exist_ok=True)
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found, f"{tool} is needed to run boot scripts"
        (where / tool).symlink_to(found)
    return where


def run(
    script: str,
    root: Path,
    *,
    path: list[Path] | None = None,
    expect_calls: int = 1,
    timeout: float = 10.0,
) -> BootRun:
    """Run ``script`` (made by :func:`script_for` with this ``root``) and wait for the
    stand-in python to be called ``expect_calls`` times (it runs detached)."""
    record = root / "calls"
    if path is None:
        stub_python(root / "bin", record)
        search = [root / "bin", *(Path(p) for p in os.environ["PATH"].split(os.pathsep) if p)]
    else:
        search = path
    file = root / "boot.sh"
    file.write_text(script)
    file.chmod(0o700)
    result = subprocess.run(
        [str(file)],
        env={"PATH": os.pathsep.join(map(str, search)), "LANG": "C"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=root,
    )
    deadline = time.monotonic() + timeout
    found: list[Path] = []
    while time.monotonic() < deadline:
        found = sorted(record.glob("call.*.args")) if record.exists() else []
        if len(found) >= expect_calls:
            break
        time.sleep(0.02)
    if expect_calls == 0:
        time.sleep(0.2)  # long enough for a wrongly started agent to show up
        found = sorted(record.glob("call.*.args")) if record.exists() else []
    calls = []
    for args in found:
        stem = str(args)[: -len(".args")]
        pid, session = Path(stem + ".session").read_text().split()
        calls.append(
            Call(
                argv=[a.decode() for a in args.read_bytes().split(b"\0")[:-1]],
                pid=int(pid),
                session=int(session),
                cwd=Path(stem + ".cwd").read_text().strip(),
            )
        )
    fetched_with = [f.read_text().strip() for f in sorted(record.glob("fetch.*"))]
    install_dir, log_file = paths(root)
    # the stand-in's echo is appended to the log by the detached process: give it a moment
    end = time.monotonic() + timeout
    while calls and time.monotonic() < end and "stand-in python started" not in _read(log_file):
        time.sleep(0.02)
    return BootRun(root, install_dir, log_file, result, calls, fetched_with)


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def agent_argv(install_dir: Path, service: str | None = None, cluster: str = CLUSTER) -> list[str]:
    """The agent's arguments after the interpreter (what the issue's protocol asks for);
    ``service`` defaults to the stand-in service of the run's directory."""
    root = install_dir.parent.parent
    return [
        "-I",
        str(install_dir / "agent.py"),
        "--service",
        service_for(root) if service is None else service,
        "--cluster",
        cluster,
        "--token-file",
        str(install_dir / "node-token"),
        "--cloud",
        host_cloud(),
        "--output-copy",
        str(root / "var" / "log" / "burst-broker-command.log"),
    ]


def host_cloud() -> str:
    """What the boot script reads this machine to be (its firmware's vendor)."""
    try:
        vendor = Path("/sys/class/dmi/id/sys_vendor").read_text().strip()
    except OSError:
        vendor = ""
    if vendor == "Amazon EC2":
        return "aws"
    if vendor.startswith("Google"):
        return "gcp"
    if vendor == "Microsoft Corporation":
        return "azure"
    try:
        if Path("/sys/hypervisor/uuid").read_text()[:3].lower() == "ec2":
            return "aws"
    except OSError:
        pass
    return "none"

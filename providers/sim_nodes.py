"""Simulated nodes that run for real: each node of a gang launched with an agent is a local
process running the node agent (the same code a cloud node runs), in its own sandbox
directory ``<state dir>/sim-nodes/<node id>/`` (its root: the artifact paths point inside
it). Terminating the node kills the process group. The processes are their own sessions,
so, like real machines, they outlive a broker service that restarts, and re-register.

The broker hands in the agent's path (providers never import the broker).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from providers.base import AgentLaunch

NODES_DIR = "sim-nodes"
PID_FILE = "agent.pid"
COMMAND_PID_FILE = "var/lib/burst-broker/command.pid"  # the agent's --state-dir under its root


def sandbox(state_dir: Path, provider_id: str) -> Path:
    return state_dir / NODES_DIR / provider_id


def start_agents(
    state_dir: Path, nodes: Iterable[tuple[str, str]], agent: AgentLaunch
) -> list[int]:
    """Start one agent process per (node id, private address); their pids."""
    if agent.agent_path is None:
        raise ValueError("the simulated cloud needs the agent's path to start nodes")
    pids = []
    for provider_id, address in nodes:
        root = sandbox(state_dir, provider_id)
        root.mkdir(parents=True, exist_ok=True)
        token_file = root / "node-token"
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(agent.node_token)
        log = (root / "agent.log").open("ab")
        try:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-I",
                    agent.agent_path,
                    "--service",
                    agent.service_url,
                    "--cluster",
                    agent.cluster_id,
                    "--token-file",
                    str(token_file),
                    "--address",
                    address,
                    "--instance-id",
                    provider_id,
                    "--root",
                    str(root),
                ],
                cwd=root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: a node's whole life
                close_fds=True,
            )
        finally:
            log.close()
        (root / PID_FILE).write_text(str(proc.pid))
        pids.append(proc.pid)
    return pids


def stop_agents(state_dir: Path, provider_ids: Iterable[str], grace: float = 0.5) -> None:
    """Kill each node's process group (SIGTERM, then SIGKILL after ``grace``), as a
    terminated machine takes everything on it with it."""
    groups = []
    for provider_id in provider_ids:
        root = sandbox(state_dir, provider_id)
        # The agent's group, and the command's (the agent starts it in a session of its own).
        for pid_file in (root / PID_FILE, root / COMMAND_PID_FILE):
            try:
                pid = int(pid_file.read_text())
            except (OSError, ValueError):
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
                groups.append(pid)
            pid_file.unlink(missing_ok=True)
    deadline = time.monotonic() + grace
    while groups and time.monotonic() < deadline:
        groups = [g for g in groups if _alive(g)]
        time.sleep(0.02)
    for pid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pgid, os.WNOHANG)  # reap our own child, if it is one
    return True


__all__ = ["AgentLaunch", "sandbox", "start_agents", "stop_agents"]

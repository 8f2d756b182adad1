"""Simulated nodes that run for real: each node of a gang launched with an agent is a local
process running the node agent (the same code a cloud node runs), in its own sandbox
directory ``<state dir>/sim-nodes/<node id>/`` (its root: the artifact paths point inside
it). Terminating the node kills the process group. The processes are their own sessions,
so, like real machines, they outlive a broker service that restarts, and re-register.

A node the scenario may preempt (``preempt_*``: see :mod:`providers.sim`) starts under a
supervisor (:mod:`providers.sim_node`) instead: it leads the node's process group (its pid is
in the pid file, so a terminate still takes everything), serves the agent a GCP-style metadata
endpoint on loopback and starts the agent with ``--cloud gcp`` pointed at it (and
``--output-copy`` for a line trigger). Other nodes start their agent directly, as before.

The broker hands in the agent's path (providers never import the broker).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from providers.base import AgentLaunch

NODES_DIR = "sim-nodes"
PID_FILE = "agent.pid"
COMMAND_PID_FILE = "var/lib/burst-broker/command.pid"  # the agent's --state-dir under its root
OUTPUT_COPY_FILE = "var/log/burst-broker/command.log"  # the agent's --output-copy, under its root
SUPERVISOR = str(Path(__file__).with_name("sim_node.py"))


@dataclass(frozen=True)
class NodePreemption:
    """When one node is preempted: ``after_s`` seconds after its agent started and/or when a
    line of its command's output contains ``on_line``; the node ends ``notice_s`` seconds
    after the notice. ``sim_db`` is the simulated cloud's file, where it is terminated."""

    sim_db: Path
    after_s: float | None
    on_line: str | None
    notice_s: float

    def __post_init__(self) -> None:
        if self.after_s is None and self.on_line is None:
            raise ValueError("a preemption needs a trigger: after_s and/or on_line")


def sandbox(state_dir: Path, provider_id: str) -> Path:
    return state_dir / NODES_DIR / provider_id


def start_agents(
    state_dir: Path,
    nodes: Iterable[tuple[str, str]],
    agent: AgentLaunch,
    preemptions: Mapping[str, NodePreemption] | None = None,
) -> list[int]:
    """Start one agent process per (node id, private address), under a supervisor for the
    nodes ``preemptions`` names; the pids of the nodes' process group leaders."""
    if agent.agent_path is None:
        raise ValueError("the simulated cloud needs the agent's path to start nodes")
    preemptions = preemptions or {}
    pids = []
    for provider_id, address in nodes:
        root = sandbox(state_dir, provider_id)
        root.mkdir(parents=True, exist_ok=True)
        token_file = root / "node-token"
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(agent.node_token)
        argv = [
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
        ]
        preemption = preemptions.get(provider_id)
        if preemption is not None:
            argv = [SUPERVISOR, *_supervisor_args(root, provider_id, preemption), "--", *argv]
        log = (root / "agent.log").open("ab")
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", *argv],
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


def _supervisor_args(root: Path, provider_id: str, preemption: NodePreemption) -> list[str]:
    args = [
        "--db",
        str(preemption.sim_db),
        "--node",
        provider_id,
        "--pid-file",
        str(root / PID_FILE),
        "--command-pid-file",
        str(root / COMMAND_PID_FILE),
        f"--notice={preemption.notice_s!r}",
    ]
    if preemption.after_s is not None:
        args.append(f"--after={preemption.after_s!r}")
    if preemption.on_line is not None:
        args += [f"--on-line={preemption.on_line}", "--output-copy", str(root / OUTPUT_COPY_FILE)]
    return args


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


__all__ = ["AgentLaunch", "NodePreemption", "sandbox", "start_agents", "stop_agents"]

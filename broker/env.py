"""The environment every node of a RUNNING cluster gets (the launch-file contract).

NNODES x N_PROC = the experiment's GPUs; MASTER_ADDR is rank 0's private address;
IP_TO_RANK_MAPPING is a JSON object {ip: rank}. Artifact paths are the ISC's mount points.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from broker.errors import EnvError
from broker.lifecycle import Status
from broker.state import ClusterRecord, TransitionRecord

DEFAULT_MASTER_PORT = 29500  # torchrun's default rendezvous port

ARTIFACT_PATHS = {
    "OUTPUT_PATH": "/mnt/checkpoints",
    "CHECKPOINT_ARTIFACT_PATH": "/mnt/checkpoints",
    "CRUD_ARTIFACT_PATH": "/mnt/crud",
    "LOSSY_ARTIFACT_PATH": "/mnt/lossy",
    "LOG_ARTIFACT_PATH": "/mnt/logs",
}


def node_env(
    cluster: ClusterRecord,
    rank: int,
    *,
    master_port: int = DEFAULT_MASTER_PORT,
    history: Sequence[TransitionRecord] = (),
) -> dict[str, str]:
    """The variables for node ``rank`` of a RUNNING cluster (or of one whose nodes are up
    and whose agents are starting the command). ``history`` (its transitions) tells how
    much of ``max_hours`` earlier cycles of this run used: the cycle gets the rest."""
    # STARTING with nodes: the gang is up and its agents are starting the command.
    if cluster.status not in (Status.STARTING, Status.RUNNING) or not cluster.nodes:
        raise EnvError(f"cluster {cluster.id} is {cluster.status.value}, not RUNNING")
    nodes = sorted(cluster.nodes, key=lambda n: n.rank)
    if not 0 <= rank < len(nodes):
        raise EnvError(f"cluster {cluster.id} has ranks 0..{len(nodes) - 1}, not {rank}")
    experiment = cluster.experiment or {}
    mapping = {n.private_ip: n.rank for n in nodes}
    env = {
        "NNODES": str(len(nodes)),
        "N_PROC": str(cluster.procs_per_node),
        "NODE_RANK": str(rank),
        "MASTER_ADDR": nodes[0].private_ip,
        "MASTER_PORT": str(master_port),
        "IP_TO_RANK_MAPPING": json.dumps(mapping, separators=(",", ":")),
        "STRONG_EXPERIMENT_ID": cluster.id,
        "STRONG_EXPERIMENT_NAME": str(experiment.get("experiment_name", cluster.id)),
        "STRONG_COMPUTE_MODE": str(experiment.get("compute_mode", "burst")),
        "STRONG_CYCLE_COUNT": str(cluster.cycle),
        **ARTIFACT_PATHS,
    }
    limit = max_hours_of(cluster)
    if limit is not None:  # the time allotted to this cycle (absent: unlimited)
        used = run_clock(history, cluster.cycle).used_before
        env["STRONG_CYCLE_TIME_MS"] = str(round(max(0.0, limit * 3600 - used) * 1000))
    return env


@dataclass(frozen=True)
class RunClock:
    """How much of ``max_hours`` the experiment's run has used. A run is what one submission
    or restart started: the cycles recoveries added belong to it and share its limit (a
    preempted experiment does not get its hours again); a restart by its owner starts a new
    run with the whole limit. ``used_before``: seconds RUNNING in the run's cycles before
    ``cycle``; ``running_since``: when ``cycle`` became RUNNING (None: it is not)."""

    used_before: float
    running_since: float | None

    def used(self, now: float) -> float:
        """Seconds RUNNING in the run so far."""
        running = 0.0 if self.running_since is None else now - self.running_since
        return self.used_before + running


def run_clock(history: Sequence[TransitionRecord], cycle: int) -> RunClock:
    from broker.recovery import RECOVERABLE

    start = 0
    for i, t in enumerate(history):  # the run began at its last PENDING that was no recovery
        if t.status is Status.PENDING and t.reason not in RECOVERABLE:
            start = i
    used = 0.0
    since: float | None = None
    for i, t in enumerate(history[start:], start):
        if t.status is not Status.RUNNING:
            continue
        nxt = history[i + 1] if i + 1 < len(history) else None
        if t.cycle == cycle and nxt is None:
            since = t.at  # the current cycle, still RUNNING
        elif t.cycle != cycle and nxt is not None:
            used += nxt.at - t.at
    return RunClock(used, since)


def max_hours_of(cluster: ClusterRecord) -> float | None:
    """The experiment's run-time limit in hours (``max_hours``), None when unlimited."""
    value = (cluster.experiment or {}).get("max_hours")
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        return None
    return float(value)


def export_lines(env: dict[str, str]) -> str:
    """``export K=V`` lines, quoted for a POSIX shell."""
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())

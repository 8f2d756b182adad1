"""Running the experiment: what the node agents are told, what they report, and how the
cluster's lifecycle follows the command (docs/agent-protocol.md is the contract).

- ``register``: an agent names its node by address; its rank is the provider's node order
  (the cluster's rank-R node), so a re-registering agent gets the same rank. Until every
  node of the gang has registered the answer is "wait"; then "run" with the node's
  environment (exactly ``broker env``), the command and the image.
- ``exit``: when every rank exited 0 the cluster ends COMPLETED; when one exits non-zero
  (or was killed by a signal) it ends FAILED ``Error`` naming the rank, its code and its
  last lines; a failed image pull ends it FAILED ``FailedImagePull``. The other ranks are
  told to stop (on their next call) and the nodes are then terminated, as a gang.
- an agent whose heartbeats stop for ``heartbeat_timeout`` seconds lost its node: FAILED
  ``NodeLost`` (checked by the service's watch loop, :func:`lost_agents`).

Nothing here talks to a cloud: ending a cluster is the caller's (the service hands it to a
background thread, since terminating nodes takes a while).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from broker.errors import ConflictError, InvalidRequest, NotFoundError
from broker.lifecycle import TERMINAL, Status
from broker.state import AgentRecord, ClusterRecord, TransitionRecord

if TYPE_CHECKING:
    from broker.api import Broker
    from broker.tokens import Principal

MAX_LINE = 4096
MAX_BATCH_LINES = 2000
EXIT_REASONS = frozenset(
    {"exited", "stopped", "image_pull_failed", "spawn_failed", "inputs_failed"}
)
MAX_SYNC_ERRORS = 5


@dataclass(frozen=True)
class RunPolicy:
    """The timings agents are given, and how long a silent agent may stay silent."""

    retry_after: float = 1.0
    heartbeat_every: float = 5.0
    heartbeat_timeout: float = 60.0
    stop_grace: float = 20.0
    log_batch_lines: int = 500
    log_batch_seconds: float = 1.0
    log_cap: int = 10_000  # lines kept per rank; the oldest go first
    sync_seconds: Mapping[str, float] | None = None  # per artifact kind (None: the seed's)
    final_sync_timeout: float = 300.0
    url_expiry: float = 3600.0  # seconds a signed URL given to a node lives
    upload_part_size: int | None = None  # bytes per part of a large upload (None: the store's)

    def sync(self) -> dict[str, float]:
        from broker.artifacts import SYNC_SECONDS

        return dict(SYNC_SECONDS if self.sync_seconds is None else self.sync_seconds)


@dataclass(frozen=True)
class Ending:
    """How a cluster must end because of what its agents reported."""

    cluster_id: str
    final: Status
    reason: str | None
    detail: str | None


def command_of(cluster: ClusterRecord) -> str | None:
    value = (cluster.experiment or {}).get("command")
    return value if isinstance(value, str) and value.strip() else None


def image_of(cluster: ClusterRecord) -> str | None:
    value = (cluster.experiment or {}).get("image")
    return value if isinstance(value, str) and value else None


def datasets_of(cluster: ClusterRecord) -> list[str]:
    """The launch file's ``dataset_id_list``: each is mounted at ``/data/<id>`` in the
    command's container."""
    value = (cluster.experiment or {}).get("dataset_id_list") or []
    return [str(d) for d in value] if isinstance(value, list) else []


def needs_inputs(cluster: ClusterRecord) -> bool:
    """Whether the nodes download anything before the command: datasets, input
    artifacts, or (a restarted experiment) their latest checkpoints."""
    experiment = cluster.experiment or {}
    return bool(
        experiment.get("dataset_id_list")
        or experiment.get("input_artifact_id_list")
        or cluster.cycle > 1
    )


def _cluster_for(broker: Broker, node: Principal, cluster_id: object) -> ClusterRecord:
    if not isinstance(cluster_id, str) or cluster_id != node.cluster_id:
        raise NotFoundError(f"no cluster {cluster_id!r} for this node token")
    return broker.store.get(cluster_id)


def _rank_of(cluster: ClusterRecord, body: Mapping[str, Any]) -> int:
    rank = body.get("rank")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < len(cluster.nodes):
        raise ConflictError(f"cluster {cluster.id} has no rank {rank!r} in this cycle")
    return rank


def _state(cluster: ClusterRecord) -> str:
    """ "stop" once the cluster is being ended; "run" while it starts and runs."""
    return "stop" if cluster.status in TERMINAL or cluster.status is Status.TERMINATING else "run"


def register(
    broker: Broker, node: Principal, body: Mapping[str, Any], policy: RunPolicy
) -> dict[str, Any]:
    from broker.env import node_env

    cluster = _cluster_for(broker, node, body.get("cluster_id"))
    wait = {"state": "wait", "retry_after": policy.retry_after}
    address = body.get("address")
    rank = next((n.rank for n in cluster.nodes if n.private_ip == address), None)
    if cluster.status is Status.TERMINATING and rank is not None:
        _ends_unstarted(broker, cluster, rank)
    if cluster.status in TERMINAL or cluster.status is Status.TERMINATING:
        return {"state": "stop"}
    if cluster.status not in (Status.STARTING, Status.RUNNING) or not cluster.nodes:
        return wait  # the gang is still being launched
    if rank is None:
        raise ConflictError(f"{address!r} is not the address of a node of {cluster.id}")
    instance = body.get("instance_id")
    broker.store.register_agent(
        cluster.id,
        cluster.cycle,
        rank,
        address=str(address),
        instance_id=str(instance) if instance else None,
        now=broker.clock(),
    )
    registered = {a.rank for a in broker.store.agents(cluster.id, cluster.cycle)}
    if len(registered) < len(cluster.nodes):
        return {**wait, "rank": rank}
    return {
        "state": "run",
        "retry_after": policy.retry_after,
        "rank": rank,
        "env": node_env(cluster, rank, history=history_for_limit(broker, cluster)),
        "command": command_of(cluster) or "",
        "image": image_of(cluster),
        "datasets": datasets_of(cluster),
        "sync": policy.sync(),
        "final_sync_timeout": policy.final_sync_timeout,
        "inputs": needs_inputs(cluster),
        "heartbeat_every": policy.heartbeat_every,
        "stop_grace": policy.stop_grace,
        "log_batch_lines": policy.log_batch_lines,
        "log_batch_seconds": policy.log_batch_seconds,
    }


def _ends_unstarted(broker: Broker, cluster: ClusterRecord, rank: int) -> None:
    """An agent that registered and waited for its gang is told "stop" before its command
    started: it exits at once without an exit report (docs/agent-protocol.md), so its exit
    is recorded here, and the drain does not wait out its silence."""
    mine = [a for a in broker.store.agents(cluster.id, cluster.cycle) if a.rank == rank]
    if mine and mine[0].started_at is None and mine[0].exited_at is None:
        broker.store.update_agent(
            cluster.id, cluster.cycle, rank, exited_at=broker.clock(), exit_reason="stopped"
        )


def started(broker: Broker, node: Principal, body: Mapping[str, Any]) -> dict[str, Any]:
    cluster = _cluster_for(broker, node, body.get("cluster_id"))
    rank = _rank_of(cluster, body)
    pid = body.get("pid")
    now = broker.clock()
    broker.store.update_agent(
        cluster.id,
        cluster.cycle,
        rank,
        started_at=now,
        heartbeat_at=now,
        pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
    )
    return {"state": _state(cluster)}


def heartbeat(broker: Broker, node: Principal, body: Mapping[str, Any]) -> dict[str, Any]:
    cluster = _cluster_for(broker, node, body.get("cluster_id"))
    rank = _rank_of(cluster, body)
    broker.store.update_agent(cluster.id, cluster.cycle, rank, heartbeat_at=broker.clock())
    return {"state": _state(cluster)}


def logs(
    broker: Broker, node: Principal, body: Mapping[str, Any], policy: RunPolicy
) -> dict[str, Any]:
    cluster = _cluster_for(broker, node, body.get("cluster_id"))
    rank = _rank_of(cluster, body)
    seq, lines, dropped = body.get("seq"), body.get("lines"), body.get("dropped", 0)
    if (
        isinstance(seq, bool)
        or not isinstance(seq, int)
        or seq < 0
        or not isinstance(lines, list)
        or len(lines) > MAX_BATCH_LINES
        or not all(isinstance(line, str) for line in lines)
        or isinstance(dropped, bool)
        or not isinstance(dropped, int)
        or dropped < 0
    ):
        from broker.diagnostics import Diagnostic

        raise InvalidRequest(
            [
                Diagnostic(
                    field="lines",
                    message=f"a batch is seq >= 0, up to {MAX_BATCH_LINES} string lines and "
                    "dropped >= 0",
                )
            ]
        )
    broker.store.append_logs(
        cluster.id,
        cluster.cycle,
        rank,
        seq=seq,
        lines=[line[:MAX_LINE] for line in lines],
        dropped=dropped,
        cap=policy.log_cap,
    )
    return {"state": _state(cluster)}


def exited(
    broker: Broker, node: Principal, body: Mapping[str, Any]
) -> tuple[dict[str, Any], Ending | None]:
    """Record a rank's exit; the cluster's ending when this exit decides it."""
    cluster = _cluster_for(broker, node, body.get("cluster_id"))
    rank = _rank_of(cluster, body)
    reason = body.get("reason")
    if reason not in EXIT_REASONS:
        raise ConflictError(f"unknown exit reason {reason!r}")
    code, sig = body.get("exit_code"), body.get("signal")
    code = code if isinstance(code, int) and not isinstance(code, bool) else None
    sig = sig if isinstance(sig, int) and not isinstance(sig, bool) else None
    last = body.get("last_lines")
    tail = [str(x)[:300] for x in last[-5:]] if isinstance(last, list) else []
    broker.store.update_agent(
        cluster.id,
        cluster.cycle,
        rank,
        exited_at=broker.clock(),
        exit_code=code,
        exit_signal=sig,
        exit_reason=str(reason),
        exit_tail=tail,
    )
    # Read the status again now that the exit is written: read before, a cluster that turned
    # RUNNING meanwhile (after the provisioner read the agents) would be decided by no one.
    cluster = broker.store.get(cluster.id)
    if cluster.status is not Status.RUNNING:
        return {"state": "done"}, None  # starting (the provisioner decides) or ending
    return {"state": "done"}, outcome(cluster, broker.store.agents(cluster.id, cluster.cycle))


def inputs(
    broker: Broker, node: Principal, body: Mapping[str, Any], policy: RunPolicy
) -> dict[str, Any]:
    """The files rank R downloads before its command: signed GETs (broker.artifacts)."""
    from broker.artifacts import input_files

    cluster = _cluster_for(broker, node, body.get("cluster_id"))
    rank = _rank_of(cluster, body)
    found = input_files(broker.artifact_store, cluster, rank, policy.url_expiry)
    return {"state": _state(cluster), **found}


def artifact_upload(
    broker: Broker, node: Principal, body: Mapping[str, Any], policy: RunPolicy
) -> dict[str, Any]:
    """How rank R sends one file of a kind's directory: an upload plan for the key this
    node's cluster, rank, kind and path make (the node never names a key)."""
    from broker.artifacts import check_kind, clean_path, output_key

    cluster = _cluster_for(broker, node, body.get("cluster_id"))
    rank = _rank_of(cluster, body)
    kind, path = check_kind(body.get("kind")), clean_path(body.get("path"))
    size = body.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        from broker.diagnostics import Diagnostic

        raise InvalidRequest([Diagnostic(field="size", message="size must be an integer >= 0")])
    plan = broker.artifact_store.upload(
        output_key(cluster, kind, rank, path),
        size,
        expires=policy.url_expiry,
        part_size=policy.upload_part_size,
    )
    return {"state": _state(cluster), "plan": plan.to_json_dict()}


def artifact_complete(broker: Broker, node: Principal, body: Mapping[str, Any]) -> dict[str, Any]:
    """Finish a ``parts`` upload of rank R's file, with each part's ETag."""
    from broker.artifacts import check_kind, clean_path, output_key
    from broker.diagnostics import Diagnostic
    from providers.storage.base import UploadPlan

    cluster = _cluster_for(broker, node, body.get("cluster_id"))
    rank = _rank_of(cluster, body)
    key = output_key(cluster, check_kind(body.get("kind")), rank, clean_path(body.get("path")))
    plan, etags = body.get("plan"), body.get("etags")
    fields = plan if isinstance(plan, dict) else {}
    size, part_size, upload_id = (
        fields.get("size"),
        fields.get("part_size"),
        fields.get("upload_id"),
    )
    if (
        fields.get("key") != key
        or fields.get("kind") != "parts"
        or not isinstance(size, int)
        or not isinstance(part_size, int)
        or part_size <= 0
        or not isinstance(upload_id, str)
        or not isinstance(etags, list)
        or not all(isinstance(e, str) for e in etags)
    ):
        raise InvalidRequest(
            [
                Diagnostic(
                    field="plan",
                    message="the parts plan this node was given for this path, and its etags",
                )
            ]
        )
    broker.artifact_store.complete(
        UploadPlan("parts", key, size, part_size, (), upload_id), [str(e) for e in etags]
    )
    return {"state": _state(cluster)}


def artifact_report(broker: Broker, node: Principal, body: Mapping[str, Any]) -> dict[str, Any]:
    """Record what one sync of a kind sent (totals per rank and kind; describe shows them)."""
    from broker.artifacts import check_kind

    cluster = _cluster_for(broker, node, body.get("cluster_id"))
    rank = _rank_of(cluster, body)
    kind = check_kind(body.get("kind"))

    def count(name: str) -> int:
        value = body.get(name, 0)
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0

    errors = body.get("errors")
    broker.store.record_sync(
        cluster.id,
        cluster.cycle,
        rank,
        kind,
        files=count("files"),
        size=count("bytes"),
        failed=count("failed"),
        errors=[str(e)[:300] for e in errors[:MAX_SYNC_ERRORS]] if isinstance(errors, list) else [],
        final=body.get("final") is True,
        now=broker.clock(),
    )
    return {"state": _state(cluster)}


def outcome(cluster: ClusterRecord, agents: Sequence[AgentRecord]) -> Ending | None:
    """The cluster's ending that its agents' exits decide, if they decide one yet."""
    from broker.lifecycle import FailReason

    not_started = {  # the command never ran on this rank: its own reason
        "inputs_failed": (FailReason.FAILED_INPUTS, "inputs failed"),
        "image_pull_failed": (FailReason.FAILED_IMAGE_PULL, "image pull failed"),
    }
    for a in agents:
        last = (": " + " | ".join(a.exit_tail)) if a.exit_tail else ""
        if a.exit_reason in not_started:
            reason, what = not_started[a.exit_reason]
            return Ending(cluster.id, Status.FAILED, reason.value, f"rank {a.rank}: {what}{last}")
        if a.exit_reason == "spawn_failed" or (
            a.exit_reason == "exited" and (a.exit_code or a.exit_signal)
        ):
            how = f"signal {a.exit_signal}" if a.exit_signal else f"exit code {a.exit_code}"
            return Ending(
                cluster.id,
                Status.FAILED,
                FailReason.ERROR.value,
                f"rank {a.rank} ended with {how}{last}",
            )
    done = [a for a in agents if a.exit_reason == "exited" and a.exit_code == 0]
    if len(done) == len(cluster.nodes):
        return Ending(cluster.id, Status.COMPLETED, None, "every rank's command exited 0")
    return None


def history_for_limit(broker: Broker, cluster: ClusterRecord) -> list[TransitionRecord]:
    """The transitions a run-time limit is counted from (none needed without one)."""
    from broker.env import max_hours_of

    return broker.store.transitions(cluster.id) if max_hours_of(cluster) is not None else []


def over_time(
    cluster: ClusterRecord, history: Sequence[TransitionRecord], now: float
) -> Ending | None:
    """STOPPED "run-time limit" when the experiment's run has been RUNNING for
    ``max_hours`` (its recovered cycles together: broker.env.run_clock)."""
    from broker.env import max_hours_of, run_clock

    limit = max_hours_of(cluster)
    if limit is None:
        return None
    clock = run_clock(history, cluster.cycle)
    if clock.running_since is None or clock.used(now) < limit * 3600:
        return None
    ran = clock.used(now) / 3600
    where = f"cycle {cluster.cycle}"
    if clock.used_before:
        where = f"cycles up to {cluster.cycle}, {clock.used_before / 3600:.2f} h before this one"
    return Ending(
        cluster.id,
        Status.STOPPED,
        None,
        f"run-time limit: max_hours {limit:g} reached (ran {ran:.2f} h in {where})",
    )


def preempted(broker: Broker, node: Principal, body: Mapping[str, Any]) -> Ending | None:
    """A rank's cloud gave its preemption notice: the gang cannot go on (a node is about to
    go), so the cycle ends ``Preempted``: the agents are told to stop and their final syncs
    run in the notice window; then the experiment is recovered as its next cycle or, with no
    recovery left, FAILED (broker.recovery, via Broker.finish). None when already ending."""
    from broker.lifecycle import FailReason

    cluster = _cluster_for(broker, node, body.get("cluster_id"))
    rank = _rank_of(cluster, body)
    if cluster.status not in (Status.STARTING, Status.RUNNING):
        return None
    cloud, action = str(body.get("cloud") or "the cloud")[:20], str(body.get("action") or "")
    when = body.get("not_before")
    at = ""
    if isinstance(when, int | float) and not isinstance(when, bool):
        import time as _time

        at = f", not before {_time.strftime('%H:%M:%S', _time.gmtime(when))} UTC"
    node_of = next((n for n in cluster.nodes if n.rank == rank), None)
    where = f" ({node_of.provider_id} in {cluster.zone})" if node_of is not None else ""
    return Ending(
        cluster.id,
        Status.FAILED,
        FailReason.PREEMPTED.value,
        f"rank {rank}{where}: {cloud} preemption notice{': ' + action[:20] if action else ''}{at}",
    )


def lost_agents(
    cluster: ClusterRecord, agents: Sequence[AgentRecord], now: float, policy: RunPolicy
) -> Ending | None:
    """FAILED NodeLost when a started agent's heartbeats stopped for too long."""
    from broker.lifecycle import FailReason

    silent = [
        a
        for a in agents
        if a.exited_at is None
        and a.heartbeat_at is not None
        and now - a.heartbeat_at > policy.heartbeat_timeout
    ]
    if not silent:
        return None
    detail = ", ".join(
        f"rank {a.rank} ({a.address}) silent for {now - (a.heartbeat_at or now):.0f} s"
        for a in silent
    )
    return Ending(cluster.id, Status.FAILED, FailReason.NODE_LOST.value, detail)


__all__ = [
    "Ending",
    "RunPolicy",
    "artifact_complete",
    "artifact_report",
    "artifact_upload",
    "command_of",
    "datasets_of",
    "exited",
    "heartbeat",
    "image_of",
    "inputs",
    "logs",
    "lost_agents",
    "needs_inputs",
    "outcome",
    "over_time",
    "preempted",
    "register",
    "started",
]

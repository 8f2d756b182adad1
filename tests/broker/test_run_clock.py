"""``max_hours`` is a limit on the experiment's run: the cycles recoveries add share it (a
preempted experiment does not get its hours back), a restart by its owner starts a new run
with the whole limit. ``run_clock`` counts it; the watch loop (``over_time``), the nodes'
``STRONG_CYCLE_TIME_MS`` and the console all read it."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

from broker.env import RunClock, node_env, run_clock
from broker.lifecycle import Status
from broker.runs import over_time
from broker.state import ClusterRecord, NodeRecord, PlanFields, Store, TransitionRecord

H = 3600.0


def t(cycle: int, status: Status, at: float, reason: str | None = None) -> TransitionRecord:
    return TransitionRecord(cycle, status, at, reason, None, 10.0, 8)


def cycle(
    n: int, start: float, ran: float | None, *, how: str | None = None
) -> list[TransitionRecord]:
    """Cycle ``n`` going PENDING (``how``: None a submit/restart, else a recovery's reason),
    RUNNING at ``start`` for ``ran`` seconds (None: still RUNNING)."""
    rows = [
        t(n, Status.PENDING, start, how),
        t(n, Status.STARTING, start),
        t(n, Status.RUNNING, start),
    ]
    if ran is not None:
        rows.append(t(n, Status.TERMINATING, start + ran))
    return rows


def test_recovered_cycles_share_the_run_and_a_restart_starts_a_new_one() -> None:
    one = cycle(1, 0, None)
    assert run_clock(one, 1).used(5 * H) == 5 * H and run_clock(one, 1).used_before == 0
    recovered = cycle(1, 0, 2 * H) + cycle(2, 3 * H, None, how="Preempted")
    clock = run_clock(recovered, 2)
    assert (clock.used_before, clock.running_since) == (2 * H, 3 * H)
    assert clock.used(4 * H) == 3 * H  # 2 h in cycle 1, 1 h in cycle 2
    lost_twice = (
        recovered[:-3] + cycle(2, 3 * H, H, how="Preempted") + cycle(3, 5 * H, None, how="NodeLost")
    )
    assert run_clock(lost_twice, 3).used_before == 3 * H
    restarted = [*cycle(1, 0, 2 * H), t(1, Status.STOPPED, 2 * H), *cycle(2, 3 * H, None)]
    assert run_clock(restarted, 2).used_before == 0  # the owner's restart: the whole limit
    waiting = [*cycle(1, 0, 2 * H), t(2, Status.PENDING, 2 * H, "Preempted")]
    assert run_clock(waiting, 2) == RunClock(2 * H, None)  # recovered, not RUNNING yet


def cluster(max_hours: float, n: int = 2) -> ClusterRecord:
    """A RUNNING cluster record as the store makes it, in cycle ``n``, with ``max_hours``."""
    store = Store.open(Path(tempfile.mkdtemp()), None)
    store.create_cluster("bb-000000000001", request={}, experiment=None, backend="sim", now=0)
    store.transition("bb-000000000001", Status.QUEUED, now=0)
    plan = PlanFields("aws:r:t:spot", "aws", "r", "z", 1, 8, 8, 10.0)
    store.transition("bb-000000000001", Status.STARTING, now=0, plan=plan)
    node = NodeRecord(rank=0, provider_id="i-0", private_ip="10.0.0.1", zone="z", region="r")
    running = store.transition("bb-000000000001", Status.RUNNING, now=0, nodes=[node])
    return replace(running, cycle=n, experiment={"command": "train", "max_hours": max_hours})


def test_the_limit_counts_the_runs_cycles_and_nodes_get_what_is_left() -> None:
    record = cluster(max_hours=3)
    history = cycle(1, 0, 2 * H) + cycle(2, 3 * H, None, how="Preempted")
    env = node_env(record, 0, history=history)
    assert env["STRONG_CYCLE_TIME_MS"] == str(round(1 * H * 1000))  # 3 h less cycle 1's 2 h
    assert node_env(record, 0)["STRONG_CYCLE_TIME_MS"] == str(round(3 * H * 1000))
    assert over_time(record, history, now=3.9 * H) is None  # 2.9 h so far
    ending = over_time(record, history, now=4 * H)
    assert ending is not None and ending.final is Status.STOPPED
    assert ending.detail == (
        "run-time limit: max_hours 3 reached (ran 3.00 h in cycles up to 2, 2.00 h before this one)"
    )

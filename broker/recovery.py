"""Recovering an experiment whose gang lost a node: the policy and its bookkeeping.

A spot node's preemption notice (the agent's ``preempted`` call) or a node lost (the provider
says it is gone, or its agent went silent) ends the gang's cycle. When the experiment has a
recovery left, the whole gang is wound down (its agents stop the command and run the final
artifact sync first) and the cluster goes TERMINATING -> PENDING as its next cycle: the
service's workers provision it again through the same fallback, with the lost zone blocked
for the other shapes' sake and its own, the experiment id and artifact prefix unchanged and
the latest checkpoints restored before the command starts again. Otherwise it ends FAILED
with the reason (``Preempted`` or ``NodeLost``) and every cycle's story in ``describe``.

``max_recoveries`` is per experiment (launch file request field ``max_recoveries``, CLI
``--max-recoveries``); left out, it is 3 for a cycle on a spot shape and 0 on on-demand (an
on-demand node that vanished is a fault to look at, not a market event to ride out).
Pure: no store, no cloud; :mod:`broker.api` does the winding down.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from broker.lifecycle import FailReason, Status

if TYPE_CHECKING:
    from broker.state import ClusterRecord, TransitionRecord

DEFAULT_SPOT_RECOVERIES = 3
MAX_RECOVERIES = 20  # the largest value accepted: past that a job should be rethought
RECOVERABLE = frozenset({FailReason.PREEMPTED.value, FailReason.NODE_LOST.value})
RECOVERY_PREFIX = "recovery"  # how the PENDING transition of a recovery is worded


def is_spot(cluster: ClusterRecord) -> bool:
    """Is the cluster's current shape sold on the spot market?"""
    return (cluster.shape_id or "").lower().endswith(":spot")


def max_recoveries_of(cluster: ClusterRecord) -> int:
    """How many times this experiment may be recovered: its own ``max_recoveries``, else
    3 on a spot shape and 0 on on-demand."""
    value = (cluster.experiment or {}).get("max_recoveries")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return DEFAULT_SPOT_RECOVERIES if is_spot(cluster) else 0


def recoveries_made(history: Sequence[TransitionRecord]) -> int:
    """Recoveries so far: the transitions to PENDING that a lost node caused."""
    return sum(1 for t in history if t.status is Status.PENDING and t.reason in RECOVERABLE)


def recovery_detail(used: int, limit: int, detail: str | None) -> str:
    """The PENDING transition's detail: which recovery this is, and why."""
    return f"{RECOVERY_PREFIX} {used + 1} of {limit}: {detail or 'a node was lost'}"


def exhausted_detail(used: int, limit: int, detail: str | None) -> str:
    """The FAILED detail once no recovery is left (said only when some were allowed)."""
    why = detail or "a node was lost"
    if limit == 0:
        return why
    return f"{why}; recoveries exhausted ({used} of {limit} used)"


__all__ = [
    "DEFAULT_SPOT_RECOVERIES",
    "MAX_RECOVERIES",
    "RECOVERABLE",
    "exhausted_detail",
    "is_spot",
    "max_recoveries_of",
    "recoveries_made",
    "recovery_detail",
]

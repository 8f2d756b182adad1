"""The cluster lifecycle (after the MosaicML run lifecycle) and its accounting rules.

PENDING -> QUEUED -> STARTING -> RUNNING -> TERMINATING -> COMPLETED | STOPPED | FAILED.
A cluster that never got nodes may fail straight from PENDING, QUEUED or STARTING. A gang
that lost a node with a recovery left goes TERMINATING -> PENDING as its next cycle
(broker.recovery), so a follower never sees it end in between.
GPU time is accrued from entering STARTING to leaving TERMINATING, at the shape's rate.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    PENDING = "PENDING"  # recorded, not yet being provisioned
    QUEUED = "QUEUED"  # ranked; the provisioner is looking for capacity
    STARTING = "STARTING"  # a gang launch is under way: nodes may exist and bill
    RUNNING = "RUNNING"  # every node is running with an address
    TERMINATING = "TERMINATING"  # nodes are being terminated
    COMPLETED = "COMPLETED"  # released by its owner after running
    STOPPED = "STOPPED"  # stopped before completing; may be restarted
    FAILED = "FAILED"  # with a reason


TERMINAL = frozenset({Status.COMPLETED, Status.STOPPED, Status.FAILED})
LIVE = frozenset({Status.PENDING, Status.QUEUED, Status.STARTING, Status.RUNNING})

ALLOWED: dict[Status, frozenset[Status]] = {
    Status.PENDING: frozenset({Status.QUEUED, Status.FAILED, Status.STOPPED}),
    Status.QUEUED: frozenset({Status.STARTING, Status.FAILED, Status.STOPPED}),
    # STARTING -> QUEUED: an attempt failed and its nodes were cleaned up; try the next shape
    Status.STARTING: frozenset({Status.RUNNING, Status.QUEUED, Status.TERMINATING}),
    Status.RUNNING: frozenset({Status.TERMINATING}),
    # TERMINATING -> PENDING: a lost node's gang, wound down, goes again (broker.recovery)
    Status.TERMINATING: frozenset(
        {Status.COMPLETED, Status.STOPPED, Status.FAILED, Status.PENDING}
    ),
    Status.COMPLETED: frozenset({Status.PENDING}),  # restart
    Status.STOPPED: frozenset({Status.PENDING}),  # restart
    Status.FAILED: frozenset({Status.PENDING}),  # restart
}


class FailReason(StrEnum):
    NO_CAPACITY = "NoCapacity"
    QUOTA_EXCEEDED = "QuotaExceeded"
    UNAUTHORIZED = "Unauthorized"
    NOT_CONFIGURED = "NotConfigured"
    TIMEOUT = "Timeout"
    NODE_LOST = "NodeLost"
    INVALID_REQUEST = "InvalidRequest"
    CLEANUP_FAILED = "CleanupFailed"  # resources of a failed attempt could not be removed
    ORPHANED = "Orphaned"  # its provisioner died; settled by reconcile
    ERROR = "Error"  # the command exited non-zero on a rank
    FAILED_IMAGE_PULL = "FailedImagePull"  # a node could not pull the experiment's image
    FAILED_INPUTS = "FailedInputs"  # a node could not get its datasets or input artifacts
    PREEMPTED = "Preempted"  # the cloud took a spot node back (its notice, via the agent)


def can_move(current: Status, target: Status) -> bool:
    return target in ALLOWED[current]

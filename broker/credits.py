"""Organisation credits: a grant in USD; spend since the grant is the same accounting as
``broker describe`` (node-hours x the price recorded for each cycle, from STARTING to the end
of TERMINATING). A submission whose first hour would cost more than what is left is refused
(HTTP 402, exit 8); when what is left reaches zero, the service stops every live experiment of
the organisation at once ("credits exhausted") -- all together, not oldest first: each one
that keeps running spends past zero, and none is worth more than another to the broker."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from broker.state import Store


@dataclass(frozen=True)
class CreditStatus:
    org: str
    granted: float
    granted_at: float
    spent: float  # since granted_at
    burn_per_hour: float  # what its live clusters cost per hour now

    @property
    def remaining(self) -> float:
        return self.granted - self.spent

    @property
    def hours_left(self) -> float | None:
        """At the current burn rate (None when nothing burns)."""
        if self.burn_per_hour <= 0:
            return None
        return max(0.0, self.remaining) / self.burn_per_hour

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "org": self.org,
            "granted_usd": self.granted,
            "spent_usd": self.spent,
            "remaining_usd": self.remaining,
            "burn_per_hour": self.burn_per_hour,
            "hours_left": self.hours_left,
        }


def credit_status(store: Store, org: str, now: float) -> CreditStatus | None:
    """``org``'s credits (None: no grant, so no limit)."""
    from broker.api import BILLED, accrue

    grant = store.credits(org).get(org)
    if grant is None:
        return None
    usd, granted_at = grant
    spent = burn = 0.0
    for cluster in store.list_clusters(org=org):
        history = store.transitions(cluster.id)
        if history and history[-1].at < granted_at and cluster.status not in BILLED:
            continue  # ended before the grant: nothing of it counts
        spent += accrue(history, now, since=granted_at).cost
        if cluster.status in BILLED:
            burn += cluster.price_per_hour or 0.0
    return CreditStatus(org, usd, granted_at, spent, burn)


__all__ = ["CreditStatus", "credit_status"]

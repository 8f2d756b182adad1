"""Organisation credits: a grant in USD; spend since the grant is the same accounting as
``broker describe`` (node-hours x the price recorded for each cycle, from STARTING to the end
of TERMINATING). A submission whose first hour would cost more than what is left is refused
(HTTP 402, exit 8); when what is left reaches zero, the service stops every live experiment of
the organisation at once ("credits exhausted") -- all together, not oldest first: each one
that keeps running spends past zero, and none is worth more than another to the broker."""

from __future__ import annotations

from collections.abc import Mapping
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
    for cluster, history in store.spending_since(org, granted_at):  # ended before: nothing
        spent += accrue(history, now, since=granted_at).cost
        if cluster.status in BILLED:
            burn += cluster.price_per_hour or 0.0
    return CreditStatus(org, usd, granted_at, spent, burn)


UTIL_ORGS = 20  # organisations an unscoped ``broker util`` shows (the rest are counted)


@dataclass(frozen=True)
class OrgCredits:
    """One organisation's credits as ``broker util`` and ``GET /v1/util`` show them: its grant,
    spend and what is left, or no grant at all (``granted`` None: no limit, and no figure is
    made up for it); either way the burn rate of its live clusters."""

    org: str
    burn_per_hour: float  # what its live clusters cost per hour now (credit_status's figure)
    granted: float | None = None  # None: no grant
    spent: float | None = None  # since the grant

    @classmethod
    def of(cls, status: CreditStatus) -> OrgCredits:
        return cls(status.org, status.burn_per_hour, status.granted, status.spent)

    @property
    def has_grant(self) -> bool:
        return self.granted is not None

    @property
    def remaining(self) -> float | None:
        if self.granted is None or self.spent is None:
            return None
        return self.granted - self.spent

    @property
    def hours_left(self) -> float | None:
        """At the current burn rate; None without a grant or when nothing burns."""
        remaining = self.remaining
        if remaining is None or self.burn_per_hour <= 0:
            return None
        return max(0.0, remaining) / self.burn_per_hour

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "org": self.org,
            "has_grant": self.has_grant,
            "granted_usd": self.granted,
            "spent_usd": self.spent,
            "remaining_usd": self.remaining,
            "burn_per_hour": self.burn_per_hour,
            "hours_left": self.hours_left,
        }

    @classmethod
    def from_json_dict(cls, doc: Mapping[str, Any]) -> OrgCredits:
        """The inverse of ``to_json_dict`` (a client reading ``GET /v1/util``)."""

        def usd(key: str) -> float | None:
            value = doc[key]
            return None if value is None else float(value)

        return cls(
            str(doc["org"]), float(doc["burn_per_hour"]), usd("granted_usd"), usd("spent_usd")
        )


@dataclass(frozen=True)
class CreditsSummary:
    """The credits part of ``broker util``: one line per organisation shown, and how many
    more an unscoped broker left out (``UTIL_ORGS`` at most are shown)."""

    orgs: tuple[OrgCredits, ...]
    more: int = 0


def util_credits(
    store: Store, org: str | None, now: float, *, limit: int = UTIL_ORGS
) -> CreditsSummary:
    """``org``'s credits line, granted or not; for ``org`` None (a local, unscoped broker)
    every organisation with a grant or a live cluster: those burning first, then by name,
    the first ``limit`` of them (each costs a pass over its clusters)."""
    from broker.api import BILLED
    from broker.state import EVERYONE

    burn: dict[str, float] = {}
    for cluster in store.list_clusters(BILLED, org=EVERYONE if org is None else org):
        if cluster.org is not None:
            burn[cluster.org] = burn.get(cluster.org, 0.0) + (cluster.price_per_hour or 0.0)
    if org is not None:
        orgs = [org]
    else:
        orgs = sorted(set(store.credits()) | set(burn), key=lambda o: (o not in burn, o))
    shown = orgs[: max(0, limit)]
    lines = []
    for name in shown:
        status = credit_status(store, name, now)
        lines.append(
            OrgCredits(name, burn.get(name, 0.0)) if status is None else OrgCredits.of(status)
        )
    return CreditsSummary(tuple(lines), len(orgs) - len(shown))


__all__ = [
    "UTIL_ORGS",
    "CreditStatus",
    "CreditsSummary",
    "OrgCredits",
    "credit_status",
    "util_credits",
]

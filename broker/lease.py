"""Leases: who owns a provisioning or a wind-down, for how long, renewed while it waits.

An owner id names one broker object in one process on one host; it is never reused. A
:class:`LeaseKeeper` renews a cluster's lease from a background thread while the owner is
busy with a cloud call that may take many minutes (a launch waits up to 15), so a lease is
short (``BROKER_LEASE_SECONDS``, 120 s by default) yet never runs out under a live owner.
If the owner dies (``kill -9``, a lost host), renewals stop, the lease expires and
``broker reconcile`` on any host may settle the cluster.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
from collections.abc import Callable
from types import TracebackType

from broker.errors import StoreError
from broker.state import Store


def new_owner_id() -> str:
    """``host:pid:random``: unique per broker object, readable in ``describe``."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class LeaseKeeper:
    """Renews ``owner``'s lease on a cluster every ``ttl / 4`` seconds until closed.

    ``lost`` turns True when a renewal finds the lease taken (the cluster was stopped or
    settled by someone else); the owner learns the same from its next compare-and-set
    transition, so this is only for messages. A store error during a renewal is retried at
    the next tick: one hiccup never ends a lease early, and never terminates anything.
    """

    def __init__(
        self, store: Store, cluster_id: str, owner: str, ttl: float, clock: Callable[[], float]
    ) -> None:
        self.store = store
        self.cluster_id = cluster_id
        self.owner = owner
        self.ttl = ttl
        self.clock = clock
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lease-{cluster_id}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                if not self.store.renew_lease(
                    self.cluster_id, self.owner, until=self.clock() + self.ttl
                ):
                    self.lost = True
                    return
            except StoreError:
                continue


__all__ = ["LeaseKeeper", "new_owner_id"]

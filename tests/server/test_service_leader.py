"""The watch loop (runs, credits, reconcile) runs on one replica at a time: the holder of
the named lease ``service-watch``, renewed every pass, given up on a graceful stop and taken
over by another replica once it expires after its holder died."""

from __future__ import annotations

from pathlib import Path

from broker.api import Broker
from broker.server.service import WATCH_LEASE, Service, ServiceOptions


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def replicas(tmp_path: Path, clock: Clock, count: int = 3) -> list[Service]:
    """``count`` services over one store, as replicas on one database are."""
    url = f"sqlite:///{tmp_path / 'shared.sqlite'}"
    return [
        Service(
            Broker(state_dir=tmp_path / f"r{i}", store_url=url, backend="sim", clock=clock),
            ServiceOptions(workers=0, reconcile_every=10),
        )
        for i in range(count)
    ]


def test_one_replica_leads_and_another_takes_over_when_it_dies(tmp_path: Path) -> None:
    clock = Clock()
    a, b, c = replicas(tmp_path, clock)
    assert [s.lead() for s in (a, b, c)] == [True, False, False]
    clock.now += 10
    assert [s.lead() for s in (b, a, c)] == [False, True, False]  # the holder renews
    # a dies (no resign): nobody else leads until its lease ran out (2 passes + a lease)
    ttl = 2 * 10 + a.broker.policy.lease_seconds
    clock.now += ttl - 1
    assert [b.lead(), c.lead()] == [False, False]
    clock.now += 2
    assert [b.lead(), c.lead()] == [True, False]
    assert b.leading and not c.leading


def test_a_graceful_stop_hands_the_loop_on_at_once(tmp_path: Path) -> None:
    clock = Clock()
    a, b = replicas(tmp_path, clock, 2)
    assert a.lead() and not b.lead()
    a.resign()
    assert not a.leading
    assert b.lead()
    assert (
        b.broker.store.take_lease(WATCH_LEASE, a.broker.owner, now=clock(), until=clock() + 1)
        == b.broker.owner
    )

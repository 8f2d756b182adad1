"""The pauses of the adapters' wait-until loops."""

from __future__ import annotations

from providers.polling import Backoff
from tests.conftest import FakeClock


def test_pauses_double_up_to_the_most_and_stop_at_the_deadline() -> None:
    clock = FakeClock()
    waits = Backoff(5.0, clock.now + 20.0, clock, clock.sleep)
    while waits.pause():
        pass
    # 1 + 2 + 4 + 5 + 5 = 17, then only the 3 s left, then the deadline has passed
    assert clock.slept == [1.0, 2.0, 4.0, 5.0, 5.0, 3.0]
    assert waits.pause() is False and len(clock.slept) == 6


def test_a_short_most_is_the_first_pause_too() -> None:
    clock = FakeClock()
    waits = Backoff(0.25, clock.now + 1.0, clock, clock.sleep)
    assert waits.pause() and waits.pause()
    assert clock.slept == [0.25, 0.25]


def test_no_pause_once_the_deadline_has_passed() -> None:
    clock = FakeClock()
    assert Backoff(5.0, clock.now, clock, clock.sleep).pause() is False
    assert clock.slept == []

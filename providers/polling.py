"""The waits of an adapter's wait-until loops (a gang coming up, nodes going away).

Every loop reads the cloud, returns when it sees what it waits for, and otherwise pauses:
1 s first (or ``most`` if that is smaller), doubling up to ``most``, never past the
deadline. Once the deadline has passed, :meth:`Backoff.pause` says so instead of sleeping,
and the loop raises its own timeout error, which names what it was waiting for.
"""

from __future__ import annotations

from collections.abc import Callable


class Backoff:
    """Pauses between the status reads of one loop, bounded by ``deadline`` (clock time)."""

    def __init__(
        self,
        most: float,
        deadline: float,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
    ) -> None:
        self.most = most
        self.deadline = deadline
        self.delay = min(1.0, most)
        self._clock = clock
        self._sleep = sleep

    def pause(self) -> bool:
        """Sleep before the next read and return True, or return False (without sleeping)
        once the deadline has passed."""
        remaining = self.deadline - self._clock()
        if remaining <= 0:
            return False
        self._sleep(min(self.delay, remaining))
        self.delay = min(self.delay * 2, self.most)
        return True

"""The dead-letter-rate breaker: a stage stops consuming instead of dead-lettering a stream.

When, over a time window with at least ``minimum`` records, the share of dead-lettered records
reaches ``threshold`` (an upstream team shipped a bad schema), the guard opens: the stage pauses
and the records wait in Kafka. After ``wait`` seconds one probe batch goes through (half-open):
if its share is under the threshold the guard closes, otherwise it opens again. So a storm of bad
records drains one batch per ``wait`` instead of at full speed, and the good records behind it
flow again once the storm has passed. A restarted stage starts open when its predecessor's last
health event said open (see ``Steering.recover_guard``), so a crash mid-storm does not reset it.

Example::

    guard = DeadLetterGuard(threshold=0.5, window=10.0, minimum=200, wait=10.0)
    guard.record(records=512, dead=500)
    guard.blocked()      # True: paused until the probe
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Literal

__all__ = ["DeadLetterGuard"]

GuardState = Literal["closed", "open", "half_open"]


class DeadLetterGuard:
    """Closed, open or half-open on the share of dead-lettered records over a time window."""

    def __init__(self, *, threshold: float = 0.5, window: float = 10.0, minimum: int = 200,
                 wait: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold, self.window, self.minimum, self.wait = threshold, window, minimum, wait
        self._clock = clock
        self._batches: deque[tuple[float, int, int]] = deque()
        self.state: GuardState = "closed"
        self.opened_at = 0.0
        self.last_share = 0.0
        self.carried = False  # open because the previous process was, not by this one's counts

    def record(self, *, records: int, dead: int) -> None:
        """One processed batch: how many records it held and how many were dead-lettered."""
        if records <= 0:
            return
        now = self._clock()
        if self.state == "half_open":  # the probe decides
            self.last_share = dead / records
            if self.last_share >= self.threshold:
                self._open(now)
            else:
                self.state, self.carried = "closed", False
            return
        self._batches.append((now, records, dead))
        while self._batches and self._batches[0][0] < now - self.window:
            self._batches.popleft()
        total = sum(n for _, n, _ in self._batches)
        failed = sum(d for _, _, d in self._batches)
        self.last_share = failed / total if total else 0.0
        if total >= self.minimum and self.last_share >= self.threshold:
            self._open(now)

    def _open(self, now: float) -> None:
        self.state, self.opened_at, self.carried = "open", now, False
        self._batches.clear()

    def blocked(self) -> bool:
        """True while open; after ``wait`` it turns half-open and lets one probe batch through."""
        if self.state == "open" and self._clock() - self.opened_at >= self.wait:
            self.state = "half_open"
        return self.state == "open"

    def restore_open(self) -> None:
        """Start open, as a predecessor left it mid-storm: probe after ``wait``, do not flood."""
        self._open(self._clock())
        self.carried = True

    def reset(self) -> None:
        """Close, forgetting the window (an operator resumed the stage)."""
        self.state, self.carried = "closed", False
        self._batches.clear()

    def reason(self) -> str:
        if self.carried:
            return (f"dead-letter rate at or over {self.threshold:.0%} when the previous process "
                    f"stopped: paused, probing every {self.wait:g} s")
        return (f"dead-letter rate {self.last_share:.0%} reached {self.threshold:.0%}: "
                f"paused, probing every {self.wait:g} s")

"""The dead-letter-rate breaker, with an injected clock."""

from __future__ import annotations

import pytest

from tidegate.runtime.backpressure import LagValve
from tidegate.runtime.guard import DeadLetterGuard

pytestmark = pytest.mark.unit


def state(guard: DeadLetterGuard) -> str:
    """The state as a plain string (each call reads it anew)."""
    return str(guard.state)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_opens_on_the_share_over_the_window_not_before_the_minimum() -> None:
    clock = Clock()
    guard = DeadLetterGuard(threshold=0.5, window=10, minimum=100, wait=5, clock=clock)
    guard.record(records=50, dead=50)
    assert state(guard) == "closed", "fewer records than the minimum never trip it"
    guard.record(records=60, dead=10)
    assert state(guard) == "open" and guard.blocked()  # 60 of 110 = 55%


def test_old_batches_leave_the_window() -> None:
    clock = Clock()
    guard = DeadLetterGuard(threshold=0.5, window=10, minimum=100, wait=5, clock=clock)
    guard.record(records=90, dead=90)
    clock.now = 11.0
    guard.record(records=100, dead=10)
    assert state(guard) == "closed"


def test_a_probe_after_the_wait_closes_or_reopens() -> None:
    clock = Clock()
    guard = DeadLetterGuard(threshold=0.5, window=10, minimum=10, wait=5, clock=clock)
    guard.record(records=20, dead=20)
    clock.now = 4.9
    assert guard.blocked()
    clock.now = 5.0
    assert not guard.blocked() and state(guard) == "half_open"
    guard.record(records=20, dead=19)  # the storm goes on: open again, a new wait
    assert state(guard) == "open"
    clock.now = 9.0
    assert guard.blocked()
    clock.now = 10.0
    assert not guard.blocked()
    guard.record(records=20, dead=1)
    assert state(guard) == "closed" and not guard.blocked()
    assert "dead-letter rate" in guard.reason()


def test_reset_closes() -> None:
    guard = DeadLetterGuard(threshold=0.5, window=10, minimum=1, wait=60)
    guard.record(records=5, dead=5)
    assert guard.blocked()
    guard.reset()
    assert not guard.blocked()


def test_backpressure_pauses_above_high_and_resumes_under_low() -> None:
    valve = LagValve(high=100, low=20)
    assert [valve.update(lag) for lag in (50, 150, 60, 19, 99)] == [
        False, True, True, False, False]
    with pytest.raises(ValueError, match="low < high"):
        LagValve(high=10, low=10)

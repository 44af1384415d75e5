"""Steering without Kafka: commands, the dead-letter guard and the backpressure valve."""

from __future__ import annotations

import pytest

from tidegate.control import command
from tidegate.runtime.backpressure import LagValve
from tidegate.runtime.guard import DeadLetterGuard
from tidegate.runtime.steering import Steering

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def steering(clock: Clock, changes: list[str]) -> Steering:
    guard = DeadLetterGuard(threshold=0.5, window=10.0, minimum=100, wait=5.0, clock=clock)
    return Steering("validation", guard=guard, valve=LagValve(high=1000, low=100),
                    on_change=lambda: changes.append("changed"))


def test_a_pause_command_blocks_and_a_resume_unblocks() -> None:
    changes: list[str] = []
    s = steering(Clock(), changes)
    assert not s.blocked()
    s.apply_all([command("validation", "pause", reason="maintenance", issuer="ops")])
    assert s.blocked()
    report = s.report()
    assert report.paused and report.pause_reason is not None
    assert "maintenance" in report.pause_reason
    s.apply_all([command("validation", "resume", reason="done", issuer="ops")])
    assert not s.blocked()
    assert not s.report().paused
    assert changes == ["changed", "changed"]


def test_a_command_for_another_stage_changes_nothing() -> None:
    s = steering(Clock(), [])
    assert s.apply(command("feature", "pause", reason="x", issuer="ops")) is False
    assert not s.blocked()


def test_the_guard_opens_on_a_dead_letter_storm_and_probes_after_its_wait() -> None:
    clock, changes = Clock(), list[str]()
    s = steering(clock, changes)
    s.record_batch(records=200, dead=150)
    assert s.blocked()
    assert s.report().guard == "open"
    assert "dead-letter-guard" in s.report().mode
    clock.now = 6.0
    assert not s.blocked()  # half-open: one probe batch goes through
    assert s.report().guard == "half_open"
    s.record_batch(records=100, dead=0)
    assert s.report().guard == "closed"
    assert len(changes) == 3  # open, half-open, closed


def test_an_operator_resume_closes_the_guard() -> None:
    s = steering(Clock(), [])
    s.record_batch(records=200, dead=200)
    assert s.blocked()
    s.apply_all([command("validation", "resume", reason="fixed upstream", issuer="ops")])
    assert not s.blocked()
    assert s.report().guard == "closed"


def test_backpressure_pauses_above_high_and_resumes_under_low() -> None:
    changes: list[str] = []
    s = steering(Clock(), changes)
    s.downstream_lag(500)
    assert not s.blocked()
    s.downstream_lag(2000)
    assert s.blocked()
    reason = s.report().pause_reason
    assert reason is not None and "backpressure" in reason
    s.downstream_lag(500)
    assert s.blocked()  # between the watermarks: stays paused
    s.downstream_lag(50)
    assert not s.blocked()
    assert changes == ["changed", "changed"]

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


def _health(stage: str, guard: str, at_ms: int) -> dict[str, object]:
    return {"stage": stage, "time": at_ms, "breakers": {"dead-letters": guard},
            "pause_reason": "dead-letter rate 97% reached 50%" if guard != "closed" else None}


NOW_MS = 1_000_000_000


def test_a_guard_left_open_by_the_previous_process_starts_open_and_probes() -> None:
    clock = Clock()
    s = steering(clock, [])
    history = [_health("validation", "closed", NOW_MS - 9000),
               _health("feature", "closed", NOW_MS - 500),
               _health("validation", "open", NOW_MS - 2000)]
    assert s.recover_guard(history, now_ms=NOW_MS, max_age_ms=60_000)
    assert s.blocked() and s.report().guard == "open"
    assert "when the previous process stopped" in (s.report().pause_reason or "")
    clock.now = 6.0
    assert not s.blocked()  # the probe after the guard's wait, as for a storm of its own
    s.record_batch(records=50, dead=0)
    assert s.report().guard == "closed"
    assert s.report().pause_reason is None


@pytest.mark.parametrize("history", [
    [],  # a first start
    [_health("validation", "open", NOW_MS - 9000), _health("validation", "closed", NOW_MS - 1)],
    [_health("validation", "open", NOW_MS - 61_000)],  # too old to be the same storm
    [_health("feature", "open", NOW_MS - 1000)],  # another stage's guard
])
def test_a_closed_stale_or_foreign_guard_report_leaves_the_guard_closed(
        history: list[dict[str, object]]) -> None:
    s = steering(Clock(), [])
    assert not s.recover_guard(history, now_ms=NOW_MS, max_age_ms=60_000)
    assert not s.blocked()


def test_an_operator_resume_after_the_storm_wins_over_its_report() -> None:
    s = steering(Clock(), [])
    resume = {**command("validation", "resume", reason="fixed", issuer="ops"),
              "time": NOW_MS - 1000}
    s.apply_all([resume])
    history = [_health("validation", "open", NOW_MS - 2000)]
    assert not s.recover_guard(history, now_ms=NOW_MS, max_age_ms=60_000)
    assert not s.blocked()
    # a resume older than the report does not: the storm came after it
    s2 = steering(Clock(), [])
    s2.apply_all([{**resume, "time": NOW_MS - 3000}])
    assert s2.recover_guard(history, now_ms=NOW_MS, max_age_ms=60_000)
    # and a resume sent after the restart closes the inherited guard
    s2.apply_all([command("validation", "resume", reason="storm over", issuer="ops")])
    assert not s2.blocked()

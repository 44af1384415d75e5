"""The circuit breaker: every transition, both windows, exclusions, listeners and config checks.

Time is a fake clock the tests advance by hand; nothing sleeps.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tidegate.breaker import (
    BreakerConfig,
    BreakerOpenError,
    CircuitBreaker,
    State,
)
from tidegate.errors import ConfigError, ScoringError, TidegateError

pytestmark = pytest.mark.unit

FAST, SLOW = 0.01, 5.0


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


Transition = tuple[State, State, str]


def make(clock: FakeClock, **config: Any) -> tuple[CircuitBreaker, list[Transition]]:
    """A breaker on ``clock`` and the transitions it reports."""
    seen: list[Transition] = []
    options: dict[str, Any] = {"minimum_calls": 4, "window_size": 10, "wait_duration": 30.0,
                               "permitted_calls_in_half_open": 3, **config}
    breaker = CircuitBreaker("model:test", BreakerConfig(**options), clock=clock,
                             listeners=[lambda _b, old, new, why: seen.append((old, new, why))])
    return breaker, seen


def state(breaker: CircuitBreaker) -> State:
    """The state, read through a call so the type checker does not pin it between reads."""
    return breaker.state


def fail(breaker: CircuitBreaker, times: int = 1, duration: float = FAST) -> None:
    for _ in range(times):
        breaker.record_failure(ScoringError("model failed"), duration)


def succeed(breaker: CircuitBreaker, times: int = 1, duration: float = FAST) -> None:
    for _ in range(times):
        breaker.record_success(duration)


def boom() -> None:
    raise ScoringError("model failed")


def trip(breaker: CircuitBreaker, clock: FakeClock, *, to_half_open: bool = False) -> None:
    fail(breaker, breaker.config.minimum_calls)
    assert state(breaker) is State.OPEN
    if to_half_open:
        clock.advance(breaker.config.wait_duration)
        assert state(breaker) is State.HALF_OPEN


def test_a_new_breaker_is_closed_and_lets_calls_through() -> None:
    breaker, seen = make(FakeClock())
    assert state(breaker) is State.CLOSED
    assert breaker.allow()
    assert breaker.call_sync(lambda x: x * 2, 21) == 42
    assert breaker.snapshot()["calls"] == 1
    assert seen == []


def test_opens_when_the_failure_rate_reaches_the_threshold() -> None:
    breaker, seen = make(FakeClock(), failure_rate_threshold=0.5)
    succeed(breaker, 2)
    fail(breaker)
    assert state(breaker) is State.CLOSED  # 3 calls: under minimum_calls
    fail(breaker)
    assert state(breaker) is State.OPEN  # 2 of 4 failed: 50% >= 50%
    assert [(old, new) for old, new, _ in seen] == [(State.CLOSED, State.OPEN)]
    assert "failure rate 2/4" in seen[0][2]


def test_stays_closed_under_the_failure_rate_threshold() -> None:
    breaker, _ = make(FakeClock(), failure_rate_threshold=0.5)
    succeed(breaker, 3)
    fail(breaker)
    assert state(breaker) is State.CLOSED
    assert breaker.snapshot()["failure_rate"] == 0.25


def test_does_not_open_before_minimum_calls() -> None:
    breaker, seen = make(FakeClock(), minimum_calls=5, failure_rate_threshold=0.2)
    fail(breaker, 4)
    assert state(breaker) is State.CLOSED
    assert seen == []
    fail(breaker)
    assert state(breaker) is State.OPEN


def test_opens_on_the_slow_call_rate() -> None:
    breaker, seen = make(FakeClock(), slow_call_duration=1.0, slow_call_rate_threshold=0.5)
    succeed(breaker, 2, duration=FAST)
    succeed(breaker, 1, duration=1.0)  # exactly the limit is not slower than it
    assert state(breaker) is State.CLOSED
    succeed(breaker, 2, duration=SLOW)
    assert state(breaker) is State.CLOSED  # 2 slow of 5
    succeed(breaker, 1, duration=SLOW)
    assert state(breaker) is State.OPEN  # 3 slow of 6
    assert "slow-call rate 3/6" in seen[0][2]


def test_a_slow_call_through_call_sync_is_measured_with_the_clock() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, minimum_calls=1, slow_call_duration=1.0,
                      slow_call_rate_threshold=1.0)

    def slow_model() -> str:
        clock.advance(2.5)
        return "scores"

    assert breaker.call_sync(slow_model) == "scores"
    assert state(breaker) is State.OPEN


def test_an_open_breaker_refuses_calls_without_calling() -> None:
    clock = FakeClock()
    breaker, _ = make(clock)
    trip(breaker, clock)
    clock.advance(10.0)
    calls: list[int] = []
    assert not breaker.allow()
    with pytest.raises(BreakerOpenError) as refused:
        breaker.call_sync(calls.append, 1)
    assert calls == []
    assert isinstance(refused.value, TidegateError)
    assert refused.value.code == "BREAKER_OPEN"
    assert refused.value.retry_after == pytest.approx(20.0)
    assert refused.value.state is State.OPEN
    assert "model:test" in str(refused.value)
    assert breaker.snapshot()["refused"] == 2


def test_open_turns_half_open_after_wait_duration() -> None:
    clock = FakeClock()
    breaker, seen = make(clock, wait_duration=30.0)
    trip(breaker, clock)
    clock.advance(29.999)
    assert state(breaker) is State.OPEN
    clock.advance(0.001)
    assert state(breaker) is State.HALF_OPEN
    assert seen[-1][:2] == (State.OPEN, State.HALF_OPEN)


def test_half_open_closes_after_successful_trials() -> None:
    clock = FakeClock()
    breaker, seen = make(clock, permitted_calls_in_half_open=3)
    trip(breaker, clock, to_half_open=True)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_success(FAST)
        assert state(breaker) is State.HALF_OPEN
    assert breaker.allow()
    breaker.record_success(FAST)
    assert state(breaker) is State.CLOSED
    assert seen[-1][:2] == (State.HALF_OPEN, State.CLOSED)
    assert breaker.snapshot()["calls"] == 0  # a closed breaker starts a fresh window


def test_half_open_refuses_calls_beyond_its_trial_budget() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, permitted_calls_in_half_open=2)
    trip(breaker, clock, to_half_open=True)
    assert breaker.allow()
    assert breaker.allow()
    assert not breaker.allow()
    with pytest.raises(BreakerOpenError) as refused:
        breaker.call_sync(lambda: None)
    assert refused.value.state is State.HALF_OPEN
    assert refused.value.retry_after is None


def test_half_open_reopens_on_a_failed_trial() -> None:
    clock = FakeClock()
    breaker, seen = make(clock, permitted_calls_in_half_open=2, failure_rate_threshold=0.5)
    trip(breaker, clock, to_half_open=True)
    with pytest.raises(ScoringError):
        breaker.call_sync(boom)
    # one failure of two trials is already 50%: no need to wait for the second
    assert state(breaker) is State.OPEN
    assert seen[-1][:2] == (State.HALF_OPEN, State.OPEN)
    assert "half-open trials" in seen[-1][2]
    clock.advance(29.0)
    assert not breaker.allow()  # the wait starts over


def test_half_open_closes_when_trial_failures_stay_under_the_threshold() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, permitted_calls_in_half_open=4, failure_rate_threshold=0.5)
    trip(breaker, clock, to_half_open=True)
    fail(breaker)
    succeed(breaker, 2)
    assert state(breaker) is State.HALF_OPEN
    succeed(breaker)
    assert state(breaker) is State.CLOSED  # 1 of 4 trials failed: 25% < 50%


def test_half_open_reopens_on_slow_trials() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, permitted_calls_in_half_open=2, slow_call_duration=1.0,
                      slow_call_rate_threshold=1.0)
    trip(breaker, clock, to_half_open=True)
    succeed(breaker, duration=SLOW)
    assert state(breaker) is State.HALF_OPEN
    succeed(breaker, duration=SLOW)
    assert state(breaker) is State.OPEN


def test_count_window_keeps_only_the_last_n_calls() -> None:
    breaker, _ = make(FakeClock(), window_size=4, minimum_calls=2, failure_rate_threshold=0.6)
    fail(breaker)
    succeed(breaker, 4)
    snap = breaker.snapshot()
    assert (snap["calls"], snap["failures"]) == (4, 0)  # the failure left the window
    fail(breaker, 2)
    assert state(breaker) is State.CLOSED  # 2 of the last 4
    fail(breaker)
    assert state(breaker) is State.OPEN  # 3 of the last 4


def test_time_window_forgets_calls_older_than_its_size() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, window="time", window_size=10.0, minimum_calls=3,
                      failure_rate_threshold=0.5)
    fail(breaker, 2)
    clock.advance(5.0)
    assert breaker.snapshot()["calls"] == 2
    clock.advance(6.0)
    assert breaker.snapshot()["calls"] == 0
    succeed(breaker)
    assert state(breaker) is State.CLOSED  # with the old failures it would be 2 of 3


def test_time_window_counts_every_call_of_the_last_seconds() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, window="time", window_size=10.0, minimum_calls=3,
                      failure_rate_threshold=0.5)
    fail(breaker)
    clock.advance(4.0)
    succeed(breaker)
    clock.advance(4.0)
    fail(breaker)
    assert state(breaker) is State.OPEN  # 2 of 3 within 8 s


def test_excluded_exceptions_pass_through_and_count_as_nothing() -> None:
    breaker, seen = make(FakeClock(), minimum_calls=2, excluded=(ValueError,))

    def invalid() -> None:
        raise ValueError("not a model failure")

    for _ in range(5):
        with pytest.raises(ValueError):
            breaker.call_sync(invalid)
    breaker.record_failure(ValueError("also excluded"), FAST)
    assert state(breaker) is State.CLOSED
    assert breaker.snapshot()["calls"] == 0
    assert seen == []


def test_an_excluded_error_gives_its_half_open_trial_slot_back() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, permitted_calls_in_half_open=1, excluded=(ValueError,))
    trip(breaker, clock, to_half_open=True)

    def invalid() -> None:
        raise ValueError("bad input")

    with pytest.raises(ValueError):
        breaker.call_sync(invalid)
    assert state(breaker) is State.HALF_OPEN
    assert breaker.call_sync(lambda: "ok") == "ok"
    assert state(breaker) is State.CLOSED


def test_every_listener_hears_every_transition_even_when_one_fails() -> None:
    clock = FakeClock()
    breaker, seen = make(clock, permitted_calls_in_half_open=1)
    heard: list[tuple[CircuitBreaker, State, State, str]] = []

    def broken(_b: CircuitBreaker, _old: State, _new: State, _why: str) -> None:
        raise RuntimeError("health topic unavailable")

    breaker.add_listener(broken)
    breaker.add_listener(lambda b, old, new, why: heard.append((b, old, new, why)))
    trip(breaker, clock, to_half_open=True)
    succeed(breaker)
    expected = [(State.CLOSED, State.OPEN), (State.OPEN, State.HALF_OPEN),
                (State.HALF_OPEN, State.CLOSED)]
    assert [(old, new) for old, new, _ in seen] == expected
    assert [(old, new) for _, old, new, _ in heard] == expected
    assert all(b is breaker and why for b, _, _, why in heard)


def test_async_call_counts_failures_and_measures_duration() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, minimum_calls=2, slow_call_duration=1.0)

    async def score(rows: int) -> list[float]:
        clock.advance(0.5)
        return [0.1] * rows

    async def failing() -> None:
        raise ScoringError("model failed")

    async def scenario() -> None:
        assert await breaker.call(score, 3) == [0.1, 0.1, 0.1]
        with pytest.raises(ScoringError):
            await breaker.call(failing)

    asyncio.run(scenario())
    snap = breaker.snapshot()
    assert state(breaker) is State.OPEN  # 1 of 2 failed
    assert snap["state"] == "open"


def test_a_cancelled_call_counts_as_neither_success_nor_failure() -> None:
    breaker, _ = make(FakeClock(), minimum_calls=1)

    async def cancelled() -> None:
        raise asyncio.CancelledError

    async def scenario() -> None:
        with pytest.raises(asyncio.CancelledError):
            await breaker.call(cancelled)

    asyncio.run(scenario())
    assert state(breaker) is State.CLOSED
    assert breaker.snapshot()["calls"] == 0


def test_a_call_begun_before_a_transition_does_not_count_after_it() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, permitted_calls_in_half_open=1)
    gate = asyncio.Event()

    async def slow_answer() -> str:
        await gate.wait()
        return "late"

    async def scenario() -> None:
        task = asyncio.create_task(breaker.call(slow_answer))
        await asyncio.sleep(0)  # let the call take its permit while the breaker is closed
        trip(breaker, clock, to_half_open=True)
        gate.set()
        assert await task == "late"

    asyncio.run(scenario())
    assert state(breaker) is State.HALF_OPEN  # the stale success was no trial
    assert breaker.snapshot()["calls"] == 0


def test_snapshot_is_plain_data() -> None:
    clock = FakeClock(now=50.0)
    breaker, _ = make(clock, minimum_calls=10)
    fail(breaker)
    succeed(breaker, 3, duration=SLOW)
    clock.advance(7.0)
    assert breaker.snapshot() == {
        "name": "model:test", "state": "closed", "since": 50.0, "for_seconds": 7.0,
        "calls": 4, "failures": 1, "slow_calls": 3, "failure_rate": 0.25,
        "slow_call_rate": 0.75, "refused": 0,
    }


def test_the_default_config_is_valid() -> None:
    config = BreakerConfig()
    assert config.window == "count"
    assert config.minimum_calls <= config.window_size


@pytest.mark.parametrize("bad", [
    {"failure_rate_threshold": 0.0},
    {"failure_rate_threshold": 1.5},
    {"slow_call_rate_threshold": -0.1},
    {"slow_call_duration": 0},
    {"wait_duration": -1.0},
    {"wait_duration": float("nan")},
    {"window_size": 0},
    {"window_size": 10.5},
    {"window_size": 5, "minimum_calls": 6},
    {"minimum_calls": 0},
    {"minimum_calls": 2.5},
    {"minimum_calls": True},
    {"permitted_calls_in_half_open": 0},
    {"window": "sliding"},
    {"excluded": (ValueError, "KeyError")},
    {"failure_rate_threshold": "half"},
])
def test_a_bad_config_raises_one_line_config_error(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as error:
        BreakerConfig(**bad)
    assert "\n" not in str(error.value)
    assert str(error.value).startswith("invalid breaker config: ")


def test_a_time_window_may_be_smaller_than_minimum_calls() -> None:
    config = BreakerConfig(window="time", window_size=2.5, minimum_calls=50)
    assert config.window_size == 2.5


def test_config_is_frozen_and_keyword_only() -> None:
    config = BreakerConfig()
    with pytest.raises(AttributeError):
        config.minimum_calls = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        BreakerConfig(0.5)  # type: ignore[call-arg]

"""A circuit breaker for dependency call sites (model scoring, feature state), on rates.

pybreaker's shape (CLOSED, OPEN, HALF_OPEN, an exclusion list, state-change listeners) with
resilience4j's rules: the breaker opens when, with at least ``minimum_calls`` in a sliding window
(the last N calls, or the calls of the last T seconds), the failure rate or the slow-call rate
reaches its threshold. After ``wait_duration`` it lets ``permitted_calls_in_half_open`` trial calls
through; it closes when their rates stay under the thresholds and opens again otherwise. One call
is one window entry, whether it scores one row or a batch of 512.

Excluded exceptions (a validation error is not a model failure) pass through and count as neither
success nor failure. A breaker serves one event loop or thread; it takes no locks.

Example::

    breaker = CircuitBreaker("model:fraud-primary", BreakerConfig(minimum_calls=20))
    breaker.add_listener(lambda b, old, new, reason: publish_health(b.snapshot()))
    try:
        scores = await breaker.call(score_batch, matrix)
    except BreakerOpenError:
        scores = fallback.score(matrix)
"""

from __future__ import annotations

import enum
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Literal, ParamSpec, TypedDict, TypeVar, get_args

from tidegate.errors import ConfigError, TidegateError

__all__ = ["BreakerConfig", "BreakerOpenError", "BreakerSnapshot", "CircuitBreaker", "Listener",
           "State", "WindowKind"]

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")
WindowKind = Literal["count", "time"]
_TIME_BUCKETS = 20  # a time window is kept in this many buckets, whatever the call rate


class State(enum.StrEnum):
    """Where a breaker is; the value is what health events carry."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class BreakerOpenError(TidegateError):
    """A breaker refused the call (open, or its half-open trials are taken); use the fallback."""

    code = "BREAKER_OPEN"

    def __init__(self, name: str, state: State, retry_after: float | None) -> None:
        detail = (f"open; half-open in {retry_after:.1f} s" if retry_after is not None
                  else "half-open and its trial calls are taken")
        super().__init__(f"breaker {name} is {detail}")
        self.name, self.state, self.retry_after = name, state, retry_after


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerConfig:
    """When a breaker opens and how it probes; rates are shares in (0, 1], durations seconds."""

    failure_rate_threshold: float = 0.5
    slow_call_rate_threshold: float = 1.0
    slow_call_duration: float = 1.0
    window: WindowKind = "count"
    window_size: float = 100  # calls for a count window, seconds for a time window
    minimum_calls: int = 10
    wait_duration: float = 30.0
    permitted_calls_in_half_open: int = 5
    excluded: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if problem := self._problem():
            raise ConfigError(f"invalid breaker config: {problem}")

    def _problem(self) -> str:
        for name in ("failure_rate_threshold", "slow_call_rate_threshold"):
            if not (_real(value := getattr(self, name)) and 0.0 < value <= 1.0):
                return f"{name} must lie in (0, 1], got {value!r}"
        for name in ("slow_call_duration", "wait_duration", "window_size"):
            if not (_real(value := getattr(self, name)) and 0.0 < value < math.inf):
                return f"{name} must be a positive number, got {value!r}"
        for name in ("minimum_calls", "permitted_calls_in_half_open"):
            if not (_real(value := getattr(self, name)) and value == int(value) >= 1):
                return f"{name} must be a whole number >= 1, got {value!r}"
        if self.window not in get_args(WindowKind):
            return f"window must be 'count' or 'time', got {self.window!r}"
        size = self.window_size
        if self.window == "count" and not self.minimum_calls <= size == int(size):
            return (f"a count window holds a whole number of calls >= minimum_calls "
                    f"({self.minimum_calls}), got window_size {size!r}")
        excluded: tuple[object, ...] = self.excluded  # typed, yet a caller may pass anything
        for exc in excluded:
            if not (isinstance(exc, type) and issubclass(exc, BaseException)):
                return f"excluded must hold exception types, got {exc!r}"
        return ""


def _real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)


Listener = Callable[["CircuitBreaker", State, State, str], None]


class BreakerSnapshot(TypedDict):
    """Plain data for health events and the status page; rates are over the window (or trials)."""

    name: str
    state: str
    since: float
    for_seconds: float
    calls: int
    failures: int
    slow_calls: int
    failure_rate: float
    slow_call_rate: float
    refused: int  # calls refused since the breaker was made


class _Window:
    """Calls, failures and slow calls of the last N calls, or of the last T seconds in buckets."""

    def __init__(self, config: BreakerConfig) -> None:
        self._by_time = config.window == "time"
        self._width = config.window_size / _TIME_BUCKETS if self._by_time else 0.0
        self._entries: deque[list[int]] = deque(
            maxlen=_TIME_BUCKETS if self._by_time else int(config.window_size))

    def add(self, now: float, failed: bool, slow: bool) -> None:
        if self._by_time:
            bucket = math.floor(now / self._width)
            self._expire(bucket)
            if not self._entries or self._entries[-1][0] != bucket:
                self._entries.append([bucket, 0, 0, 0])
            entry = self._entries[-1]
            entry[1:] = [entry[1] + 1, entry[2] + failed, entry[3] + slow]
        else:
            self._entries.append([0, 1, int(failed), int(slow)])

    def totals(self, now: float) -> tuple[int, int, int]:
        if self._by_time:
            self._expire(math.floor(now / self._width))
        return (sum(e[1] for e in self._entries), sum(e[2] for e in self._entries),
                sum(e[3] for e in self._entries))

    def _expire(self, bucket: int) -> None:
        while self._entries and self._entries[0][0] <= bucket - _TIME_BUCKETS:
            self._entries.popleft()


class CircuitBreaker:
    """Guards one dependency call site; ``allow`` before a call, ``record_*`` after it."""

    def __init__(self, name: str, config: BreakerConfig | None = None, *,
                 listeners: Iterable[Listener] = (),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.config = config or BreakerConfig()
        self._clock = clock
        self._listeners = list(listeners)
        self._window = _Window(self.config)
        self._state = State.CLOSED
        self._since = clock()
        self._generation = 0  # bumps on every transition, so late results of old calls drop
        self._trials = [0, 0, 0, 0]  # half-open: permits given, calls, failures, slow calls
        self._refused = 0

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(breaker, old, new, reason)`` on every state change."""
        self._listeners.append(listener)

    @property
    def state(self) -> State:
        """The current state; an open breaker whose wait is over turns half-open here."""
        if self._state is State.OPEN and self._clock() - self._since >= self.config.wait_duration:
            self._transition(State.HALF_OPEN, f"open for {self.config.wait_duration:g} s")
        return self._state

    def allow(self) -> bool:
        """Whether a call may go ahead now; a True in half-open takes one trial slot."""
        state = self.state
        if state is State.CLOSED:
            return True
        if state is State.HALF_OPEN and self._trials[0] < self.config.permitted_calls_in_half_open:
            self._trials[0] += 1
            return True
        self._refused += 1
        return False

    def record_success(self, duration: float) -> None:
        """Count a call that answered, taking ``duration`` seconds."""
        self._record(False, duration, self._generation)

    def record_failure(self, exc: BaseException, duration: float) -> None:
        """Count a failed call; an excluded exception counts as neither success nor failure."""
        self._settle(exc, duration, self._generation)

    async def call(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` through the breaker; BreakerOpenError when refused."""
        generation, began = self._permit(), self._clock()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self._settle(exc, self._clock() - began, generation)
            raise
        self._record(False, self._clock() - began, generation)
        return result

    def call_sync(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn(*args, **kwargs)`` through the breaker; BreakerOpenError when refused."""
        generation, began = self._permit(), self._clock()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._settle(exc, self._clock() - began, generation)
            raise
        self._record(False, self._clock() - began, generation)
        return result

    def snapshot(self) -> BreakerSnapshot:
        """State, window counts and rates as plain data; half-open counts are the trials."""
        state, now = self.state, self._clock()
        calls, failures, slow = (self._trials[1:] if state is State.HALF_OPEN
                                 else self._window.totals(now))
        return BreakerSnapshot(
            name=self.name, state=state.value, since=self._since, for_seconds=now - self._since,
            calls=calls, failures=failures, slow_calls=slow,
            failure_rate=failures / calls if calls else 0.0,
            slow_call_rate=slow / calls if calls else 0.0, refused=self._refused)

    def _permit(self) -> int:
        if self.allow():
            return self._generation
        opens_in = self._since + self.config.wait_duration - self._clock()
        raise BreakerOpenError(self.name, self._state,
                               max(0.0, opens_in) if self._state is State.OPEN else None)

    def _settle(self, exc: BaseException, duration: float, generation: int) -> None:
        # a cancelled call or an excluded error says nothing about the dependency's health
        if not isinstance(exc, Exception) or isinstance(exc, self.config.excluded):
            self._release(generation)
        else:
            self._record(True, duration, generation)

    def _release(self, generation: int) -> None:
        if generation == self._generation and self._state is State.HALF_OPEN:
            self._trials[0] = max(0, self._trials[0] - 1)

    def _record(self, failed: bool, duration: float, generation: int) -> None:
        if generation != self._generation or self._state is State.OPEN:
            return  # the call began before the last transition; its verdict is stale
        slow = duration > self.config.slow_call_duration
        if self._state is State.CLOSED:
            self._window.add(self._clock(), failed, slow)
            calls, failures, slows = self._window.totals(self._clock())
            if calls >= self.config.minimum_calls and (why := self._trip(calls, failures, slows)):
                self._transition(State.OPEN, why)
            return
        self._trials[1] += 1
        self._trials[2] += failed
        self._trials[3] += slow
        # decide as soon as the outcome is certain: over all trials the rate can only be this high
        budget = self.config.permitted_calls_in_half_open
        if reason := self._trip(budget, self._trials[2], self._trials[3]):
            self._transition(State.OPEN, f"half-open trials: {reason}")
        elif self._trials[1] >= budget:
            self._transition(State.CLOSED, f"{budget} half-open trial calls under the thresholds")

    def _trip(self, calls: int, failures: int, slow: int) -> str:
        cfg = self.config
        if failures / calls >= cfg.failure_rate_threshold:
            return f"failure rate {failures}/{calls} >= {cfg.failure_rate_threshold:.0%}"
        if slow / calls >= cfg.slow_call_rate_threshold:
            return (f"slow-call rate {slow}/{calls} (> {cfg.slow_call_duration:g} s) >= "
                    f"{cfg.slow_call_rate_threshold:.0%}")
        return ""

    def _transition(self, new: State, reason: str) -> None:
        old, self._state, self._since = self._state, new, self._clock()
        self._generation += 1
        self._window = _Window(self.config)
        self._trials = [0, 0, 0, 0]
        log.log(logging.WARNING if new is State.OPEN else logging.INFO,
                "breaker %s: %s -> %s (%s)", self.name, old.value, new.value, reason)
        for listener in list(self._listeners):
            try:
                listener(self, old, new, reason)
            except Exception:  # a failing health publisher must not break the call site
                log.exception("breaker %s: state-change listener failed", self.name)

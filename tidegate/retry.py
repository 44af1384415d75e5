"""Retries for transient errors: small composable policies, exponential backoff with full jitter.

In tenacity's spirit (tenacity is not a dependency): stop policies compose with ``|`` (stop when
either says so) and ``&`` (when both do); waits are callables of the retry state. The sleep, the
clock and the random source are injected, so tests are deterministic and never really sleep.
:func:`classify` says whether an error is poison (the record is bad), transient (a dependency
hiccup: retry) or fatal (a human must act); docs/errors.md is the written table.

Example::

    result = await retry_async(
        lambda: registry_client.fetch(schema_id),
        stop=stop_after_attempt(5) | stop_before_delay(10.0),   # inside a 10 s deadline
        wait=wait_exponential_jitter(0.1, 2.0),
        retry_on=(SchemaRegistryUnavailableError, TimeoutError),
    )

:func:`retry_sync` is the same loop for blocking code (librdkafka's synchronous calls)::

    offsets = retry_sync(lambda: consumer.committed(parts, 10), stop=stop_after_delay(30.0),
                         wait=wait_fixed(0.5), retry_on=KafkaException)
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from confluent_kafka import KafkaError, KafkaException

from tidegate.breaker import BreakerOpenError
from tidegate.errors import (
    BrokerError,
    CodecError,
    ConfigError,
    DeliveryError,
    RegistryError,
    SchemaRegistryUnavailableError,
    ScoringError,
    ToolMissingError,
    TopicMismatchError,
)

__all__ = [
    "ErrorKind", "RetryOn", "RetryState", "Stop", "Wait", "classify", "retry_async",
    "retry_if_transient", "retry_sync", "stop_after_attempt", "stop_after_delay",
    "stop_before_delay", "wait_exponential", "wait_exponential_jitter", "wait_fixed",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
ErrorKind = Literal["poison", "transient", "fatal"]


@dataclass(slots=True)
class RetryState:
    """Where a retry loop is: attempts made, seconds since the first began, the last error."""

    attempt: int
    elapsed: float
    error: BaseException | None = None
    upcoming_sleep: float = 0.0


class Stop:
    """A stop policy: ``policy(state)`` is True when no further attempt should be made."""

    def __init__(self, decide: Callable[[RetryState], bool], name: str) -> None:
        self._decide, self._name = decide, name

    def __call__(self, state: RetryState) -> bool:
        return self._decide(state)

    def __or__(self, other: Stop) -> Stop:
        return Stop(lambda s: self(s) or other(s), f"{self} | {other}")

    def __and__(self, other: Stop) -> Stop:
        return Stop(lambda s: self(s) and other(s), f"({self} & {other})")

    def __repr__(self) -> str:
        return self._name


Wait = Callable[[RetryState], float]
RetryOn = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]


def stop_after_attempt(attempts: int) -> Stop:
    """Stop once ``attempts`` calls have been made (1 means no retry)."""
    if attempts < 1:
        raise ConfigError(f"stop_after_attempt needs at least 1 attempt, got {attempts}")
    return Stop(lambda s: s.attempt >= attempts, f"stop_after_attempt({attempts})")


def stop_after_delay(seconds: float) -> Stop:
    """Stop once ``seconds`` have passed since the first attempt began."""
    return Stop(lambda s: s.elapsed >= seconds, f"stop_after_delay({seconds:g})")


def stop_before_delay(seconds: float) -> Stop:
    """Stop when the next sleep would end at or past ``seconds``: no retry starts too late."""
    return Stop(lambda s: s.elapsed + s.upcoming_sleep >= seconds,
                f"stop_before_delay({seconds:g})")


def wait_fixed(seconds: float) -> Wait:
    """The same pause before every retry."""
    return lambda _state: seconds


def wait_exponential(initial: float = 0.1, max: float = 5.0, *, base: float = 2.0) -> Wait:
    """``initial * base ** (attempt - 1)``, capped at ``max``; no jitter."""
    if not (0.0 < initial <= max and base >= 1.0):
        raise ConfigError(f"backoff needs 0 < initial <= max and base >= 1, got initial "
                          f"{initial}, max {max}, base {base}")

    def wait(state: RetryState) -> float:
        try:
            return min(max, initial * base ** (state.attempt - 1))
        except OverflowError:
            return max

    return wait


def wait_exponential_jitter(initial: float = 0.1, max: float = 5.0, *, base: float = 2.0,
                            rand: Callable[[], float] = random.random) -> Wait:
    """Full jitter: uniform in [0, min(max, initial * base ** (attempt - 1))].

    Not tenacity's additive jitter but its ``wait_random_exponential`` (AWS's "full jitter"):
    retries of many workers spread over the whole interval instead of arriving in waves.

    >>> wait = wait_exponential_jitter(1.0, 8.0, rand=lambda: 0.5)
    >>> [wait(RetryState(attempt=n, elapsed=0.0)) for n in (1, 2, 3, 4, 5)]
    [0.5, 1.0, 2.0, 4.0, 4.0]
    """
    ceiling = wait_exponential(initial, max, base=base)
    return lambda state: ceiling(state) * rand()


# librdkafka marks few errors retriable() outside its transactional API (a delivery report's
# _MSG_TIMED_OUT is not), so these codes count as transient too: the broker is away, not wrong.
_KAFKA_TRANSIENT = frozenset(
    getattr(KafkaError, name) for name in (
        "_TRANSPORT", "_ALL_BROKERS_DOWN", "_TIMED_OUT", "_MSG_TIMED_OUT", "_TIMED_OUT_QUEUE",
        "_QUEUE_FULL", "_RESOLVE", "_WAIT_COORD", "_PREV_IN_PROGRESS", "REQUEST_TIMED_OUT",
        "NETWORK_EXCEPTION", "BROKER_NOT_AVAILABLE", "LEADER_NOT_AVAILABLE",
        "NOT_LEADER_FOR_PARTITION", "NOT_ENOUGH_REPLICAS", "NOT_ENOUGH_REPLICAS_AFTER_APPEND",
        "COORDINATOR_LOAD_IN_PROGRESS", "COORDINATOR_NOT_AVAILABLE", "NOT_COORDINATOR",
        "REBALANCE_IN_PROGRESS", "KAFKA_STORAGE_ERROR", "THROTTLING_QUOTA_EXCEEDED",
    ) if hasattr(KafkaError, name)
)

_TABLE: tuple[tuple[tuple[type[BaseException], ...], ErrorKind], ...] = (
    ((CodecError,), "poison"),
    ((ConfigError, ToolMissingError, RegistryError, BrokerError, TopicMismatchError), "fatal"),
    ((SchemaRegistryUnavailableError, ScoringError, BreakerOpenError, TimeoutError,
      ConnectionError), "transient"),
)


def classify(exc: BaseException) -> ErrorKind:
    """Poison, transient or fatal; anything not in the table is transient.

    >>> classify(CodecError("bad bytes")), classify(TimeoutError()), classify(ConfigError("x"))
    ('poison', 'transient', 'fatal')
    """
    if not isinstance(exc, Exception):
        return "fatal"  # cancellation, KeyboardInterrupt, SystemExit: never retried or routed
    for types, kind in _TABLE:
        if isinstance(exc, types):
            return kind
    if isinstance(exc, KafkaException):
        error = exc.args[0] if exc.args else None
        if not isinstance(error, KafkaError):
            return "transient"
        if error.fatal():
            return "fatal"
        return "transient" if error.retriable() or error.code() in _KAFKA_TRANSIENT else "fatal"
    if isinstance(exc, DeliveryError):
        return "fatal" if exc.fatal else "transient"
    return "transient"


def retry_if_transient(exc: BaseException) -> bool:
    """The default ``retry_on``: transient errors, but not an open breaker's refusal.

    A refusal is transient, yet retrying it only burns the deadline: its answer is the fallback.
    """
    return classify(exc) == "transient" and not isinstance(exc, BreakerOpenError)


async def retry_async(
    fn: Callable[[], Awaitable[T]],
    *,
    stop: Stop,
    wait: Wait,
    retry_on: RetryOn = retry_if_transient,
    on_retry: Callable[[RetryState], None] | None = None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Await ``fn()`` until it answers, an error is not retried, or ``stop`` says so.

    The last error is re-raised as it was. By default transient errors are retried (see
    :func:`retry_if_transient`); ``retry_on`` takes exception types or a predicate. Bound each
    attempt yourself (``asyncio.timeout``): a call that never returns is never retried.
    ``on_retry(state)`` runs before each sleep (log it, count it: dead letters carry attempts).
    """
    should_retry = _predicate(retry_on)
    began, attempt = clock(), 0
    while True:
        attempt += 1
        try:
            return await fn()
        except Exception as exc:
            state = _after_failure(exc, attempt, began, should_retry, stop, wait, on_retry, clock)
            if state is None:
                raise
        await sleep(state.upcoming_sleep)


def retry_sync(
    fn: Callable[[], T],
    *,
    stop: Stop,
    wait: Wait,
    retry_on: RetryOn = retry_if_transient,
    on_retry: Callable[[RetryState], None] | None = None,
    sleep: Callable[[float], object] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Call ``fn()`` until it answers, an error is not retried, or ``stop`` says so.

    :func:`retry_async` for blocking code, with the same policies and the same delays; it blocks
    the thread while it sleeps, so call it from a worker thread, never on an event loop.
    """
    should_retry = _predicate(retry_on)
    began, attempt = clock(), 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as exc:
            state = _after_failure(exc, attempt, began, should_retry, stop, wait, on_retry, clock)
            if state is None:
                raise
        sleep(state.upcoming_sleep)


def _after_failure(exc: Exception, attempt: int, began: float,
                   should_retry: Callable[[BaseException], bool], stop: Stop, wait: Wait,
                   on_retry: Callable[[RetryState], None] | None,
                   clock: Callable[[], float]) -> RetryState | None:
    """The state whose ``upcoming_sleep`` precedes the next attempt, or None: re-raise ``exc``."""
    if not should_retry(exc):
        return None
    state = RetryState(attempt=attempt, elapsed=clock() - began, error=exc)
    state.upcoming_sleep = max(0.0, wait(state))
    if stop(state):
        return None
    log.debug("attempt %d failed (%s: %s); retrying in %.2f s",
              attempt, type(exc).__name__, exc, state.upcoming_sleep)
    if on_retry is not None:
        on_retry(state)
    return state


def _predicate(retry_on: RetryOn) -> Callable[[BaseException], bool]:
    if isinstance(retry_on, type | tuple):
        types = retry_on
        return lambda exc: isinstance(exc, types)
    return retry_on

"""Retry policies, backoff with full jitter, retry_async, retry_sync and the classification table.

A fake sleep advances a fake clock, so deadlines are exact and nothing really sleeps.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from confluent_kafka import KafkaError, KafkaException

from tidegate.breaker import BreakerOpenError, State
from tidegate.errors import (
    BadMagicError,
    BrokerStartError,
    CodecError,
    ConfigError,
    DeliveryError,
    EncodeError,
    FeatureMismatchError,
    IncompatibleSchemaError,
    InvalidJsonError,
    InvalidSchemaError,
    ModelArtifactError,
    ModelArtifactTamperedError,
    ModelNotFoundError,
    RegistryNotFoundError,
    RulesFileError,
    SchemaRegistryRejectedError,
    SchemaRegistryUnavailableError,
    ScoringError,
    TidegateError,
    ToolMissingError,
    TopicMismatchError,
    TruncatedAvroError,
)
from tidegate.kafka.producer import delivery_error
from tidegate.retry import (
    ErrorKind,
    RetryOn,
    RetryState,
    Stop,
    Wait,
    classify,
    retry_async,
    retry_if_transient,
    retry_sync,
    stop_after_attempt,
    stop_after_delay,
    stop_before_delay,
    wait_exponential,
    wait_exponential_jitter,
    wait_fixed,
)

pytestmark = pytest.mark.unit

T = TypeVar("T")


class FakeTime:
    """A clock and a sleep (blocking or async) that moves it; remembers every pause."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def pause(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.pause(seconds)


class Flaky:
    """Fails with the given errors in turn, then answers; counts calls and when they came."""

    def __init__(self, time: FakeTime, errors: list[BaseException], answer: str = "ok",
                 duration: float = 0.0) -> None:
        self.time, self.errors, self.answer, self.duration = time, errors, answer, duration
        self.calls: list[float] = []

    def call(self) -> str:
        self.calls.append(self.time.now)
        self.time.now += self.duration
        if len(self.calls) <= len(self.errors):
            raise self.errors[len(self.calls) - 1]
        return self.answer

    async def __call__(self) -> str:
        return self.call()


def run(fn: Callable[[], Awaitable[T]], time: FakeTime, *, stop: Stop, wait: Wait,
        retry_on: RetryOn = retry_if_transient,
        on_retry: Callable[[RetryState], None] | None = None) -> T:
    return asyncio.run(retry_async(fn, stop=stop, wait=wait, retry_on=retry_on,
                                   on_retry=on_retry, sleep=time.sleep, clock=time.clock))


def run_sync(fn: Flaky, *, stop: Stop, wait: Wait, retry_on: RetryOn = retry_if_transient,
             on_retry: Callable[[RetryState], None] | None = None) -> str:
    return retry_sync(fn.call, stop=stop, wait=wait, retry_on=retry_on, on_retry=on_retry,
                      sleep=fn.time.pause, clock=fn.time.clock)


def timeouts(n: int) -> list[BaseException]:
    return [TimeoutError(f"attempt {i + 1}") for i in range(n)]


def state(attempt: int, elapsed: float = 0.0) -> RetryState:
    return RetryState(attempt=attempt, elapsed=elapsed)


def test_answers_after_transient_failures_and_reports_each_retry() -> None:
    time = FakeTime()
    fn = Flaky(time, timeouts(2))
    retries: list[tuple[int, str]] = []
    result = run(fn, time, stop=stop_after_attempt(5), wait=wait_fixed(1.0),
                 on_retry=lambda s: retries.append((s.attempt, str(s.error))))
    assert result == "ok"
    assert fn.calls == [0.0, 1.0, 2.0]
    assert retries == [(1, "attempt 1"), (2, "attempt 2")]


def test_stops_after_attempts_and_reraises_the_last_error() -> None:
    time = FakeTime()
    errors = timeouts(10)
    fn = Flaky(time, errors)
    with pytest.raises(TimeoutError) as raised:
        run(fn, time, stop=stop_after_attempt(3), wait=wait_fixed(0.5))
    assert raised.value is errors[2]
    assert len(fn.calls) == 3
    assert time.sleeps == [0.5, 0.5]


def test_stop_after_attempt_one_means_no_retry() -> None:
    time = FakeTime()
    fn = Flaky(time, timeouts(1))
    with pytest.raises(TimeoutError):
        run(fn, time, stop=stop_after_attempt(1), wait=wait_fixed(1.0))
    assert len(fn.calls) == 1
    assert time.sleeps == []


def test_stops_after_delay_measured_on_the_injected_clock() -> None:
    time = FakeTime()
    fn = Flaky(time, timeouts(100))
    with pytest.raises(TimeoutError):
        run(fn, time, stop=stop_after_delay(3.5), wait=wait_fixed(1.0))
    # attempts at 0, 1, 2, 3 end under 3.5 s; the one at 4 ends past it
    assert fn.calls == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_stop_after_delay_counts_the_time_spent_in_attempts() -> None:
    time = FakeTime()
    fn = Flaky(time, timeouts(100), duration=2.0)
    with pytest.raises(TimeoutError):
        run(fn, time, stop=stop_after_delay(5.0), wait=wait_fixed(0.5))
    assert fn.calls == [0.0, 2.5, 5.0]  # the third attempt ends at 7 s, past the 5 s
    assert time.now == 7.0


def test_stop_before_delay_starts_no_retry_past_the_deadline() -> None:
    time = FakeTime()
    fn = Flaky(time, timeouts(100))
    with pytest.raises(TimeoutError):
        run(fn, time, stop=stop_before_delay(3.5), wait=wait_fixed(1.0))
    # after the attempt at 3 s the next would begin at 4 s, past 3.5 s: stop now
    assert fn.calls == [0.0, 1.0, 2.0, 3.0]


def test_stop_policies_compose() -> None:
    time = FakeTime()
    fn = Flaky(time, timeouts(100))
    with pytest.raises(TimeoutError):
        run(fn, time, stop=stop_after_attempt(10) | stop_after_delay(2.0), wait=wait_fixed(1.0))
    assert len(fn.calls) == 3  # the delay came first

    both = stop_after_attempt(3) & stop_after_delay(10.0)
    assert not both(state(3, elapsed=1.0))
    assert not both(state(1, elapsed=20.0))
    assert both(state(3, elapsed=10.0))
    either = stop_after_attempt(3) | stop_after_delay(10.0)
    assert either(state(3)) and either(state(1, elapsed=10.0)) and not either(state(2, 9.0))
    assert repr(either) == "stop_after_attempt(3) | stop_after_delay(10)"


def test_backoff_doubles_up_to_its_cap() -> None:
    time = FakeTime()
    fn = Flaky(time, timeouts(7))
    run(fn, time, stop=stop_after_attempt(8), wait=wait_exponential(0.1, 1.0))
    assert time.sleeps == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])


def test_full_jitter_scales_the_exponential_ceiling_by_the_injected_random() -> None:
    draws = iter([0.5, 0.25, 1.0, 0.0, 0.5, 0.999])
    wait = wait_exponential_jitter(1.0, 8.0, rand=lambda: next(draws))
    assert [wait(state(n)) for n in range(1, 7)] == pytest.approx(
        [0.5, 0.5, 4.0, 0.0, 4.0, 7.992])


def test_jittered_waits_stay_within_zero_and_the_growing_ceiling() -> None:
    time = FakeTime()
    fn = Flaky(time, timeouts(30))
    rng = random.Random(7)
    run(fn, time, stop=stop_after_attempt(31),
        wait=wait_exponential_jitter(0.1, 5.0, rand=rng.random))
    ceilings = [min(5.0, 0.1 * 2 ** n) for n in range(30)]
    assert all(0.0 <= pause <= cap for pause, cap in zip(time.sleeps, ceilings, strict=True))
    assert len(set(time.sleeps)) == 30  # jittered, not in lockstep
    assert max(time.sleeps[-10:]) > 2.5  # late retries use the whole capped interval


def test_backoff_survives_huge_attempt_numbers() -> None:
    assert wait_exponential(0.1, 5.0, base=10.0)(state(10_000)) == 5.0


def test_only_retry_on_exceptions_are_retried() -> None:
    time = FakeTime()
    fn = Flaky(time, [ValueError("not retried")])
    with pytest.raises(ValueError):
        run(fn, time, stop=stop_after_attempt(5), wait=wait_fixed(1.0), retry_on=(TimeoutError,))
    assert len(fn.calls) == 1

    fn = Flaky(time, [ConnectionError("refused"), KeyError("k")])
    with pytest.raises(KeyError):
        run(fn, time, stop=stop_after_attempt(5), wait=wait_fixed(1.0),
            retry_on=ConnectionError)
    assert len(fn.calls) == 2


def test_retry_on_accepts_a_predicate() -> None:
    time = FakeTime()
    fn = Flaky(time, [OSError("again"), OSError("again"), OSError("stop")])
    with pytest.raises(OSError, match="stop"):
        run(fn, time, stop=stop_after_attempt(5), wait=wait_fixed(1.0),
            retry_on=lambda exc: str(exc) == "again")
    assert len(fn.calls) == 3


@pytest.mark.parametrize(("error", "retried"), [
    (SchemaRegistryUnavailableError("registry down"), True),
    (ScoringError("model failed"), True),
    (TimeoutError(), True),
    (InvalidJsonError("{"), False),
    (FeatureMismatchError("features"), False),
    (BreakerOpenError("model:x", State.OPEN, 3.0), False),
])
def test_by_default_only_transient_errors_are_retried(error: Exception, retried: bool) -> None:
    time = FakeTime()
    fn = Flaky(time, [error])
    if retried:
        assert run(fn, time, stop=stop_after_attempt(2), wait=wait_fixed(1.0)) == "ok"
    else:
        with pytest.raises(type(error)):
            run(fn, time, stop=stop_after_attempt(2), wait=wait_fixed(1.0))
    assert len(fn.calls) == (2 if retried else 1)


def test_cancellation_is_never_retried() -> None:
    time = FakeTime()
    fn = Flaky(time, [asyncio.CancelledError()])
    with pytest.raises(asyncio.CancelledError):
        run(fn, time, stop=stop_after_attempt(5), wait=wait_fixed(1.0),
            retry_on=lambda _exc: True)
    assert len(fn.calls) == 1


@pytest.mark.parametrize("make", [
    lambda: stop_after_attempt(0),
    lambda: wait_exponential(0.0, 1.0),
    lambda: wait_exponential(2.0, 1.0),
    lambda: wait_exponential_jitter(0.1, 1.0, base=0.5),
])
def test_a_bad_policy_raises_config_error(make: Callable[[], object]) -> None:
    with pytest.raises(ConfigError):
        make()


def kafka(code: int, *, retriable: bool = False, fatal: bool = False) -> KafkaException:
    return KafkaException(KafkaError(code, "broker said no", fatal=fatal, retriable=retriable))


def delivery(code: int, *, fatal: bool = False) -> DeliveryError:
    return delivery_error(KafkaError(code, "delivery failed", fatal=fatal))


CLASSIFIED: list[tuple[BaseException, ErrorKind]] = [
    (CodecError("bad"), "poison"),
    (InvalidJsonError("{"), "poison"),
    (BadMagicError("?"), "poison"),
    (TruncatedAvroError("short"), "poison"),
    (IncompatibleSchemaError("resolve"), "poison"),
    (EncodeError("does not fit"), "poison"),
    (SchemaRegistryUnavailableError("down"), "transient"),
    (ScoringError("model failed"), "transient"),
    (BreakerOpenError("model:x", State.OPEN, 1.0), "transient"),
    (TimeoutError(), "transient"),
    (ConnectionRefusedError(), "transient"),
    (ConfigError("bad setting"), "fatal"),
    (RulesFileError("rules.toml"), "fatal"),
    (FeatureMismatchError("features"), "fatal"),
    (InvalidSchemaError("avsc"), "fatal"),
    (SchemaRegistryRejectedError("incompatible"), "fatal"),
    (ToolMissingError("java"), "fatal"),
    (RegistryNotFoundError("no registry"), "fatal"),
    (ModelNotFoundError("no production version"), "fatal"),
    (ModelArtifactError("corrupt"), "fatal"),
    (ModelArtifactTamperedError("checksum mismatch"), "fatal"),
    (BrokerStartError("not ready"), "fatal"),
    (TopicMismatchError("partitions"), "fatal"),
    (kafka(KafkaError.UNKNOWN, retriable=True), "transient"),
    (kafka(KafkaError._MSG_TIMED_OUT), "transient"),
    (kafka(KafkaError._TRANSPORT), "transient"),
    (kafka(KafkaError._ALL_BROKERS_DOWN), "transient"),
    (kafka(KafkaError.NOT_ENOUGH_REPLICAS), "transient"),
    (kafka(KafkaError.TOPIC_AUTHORIZATION_FAILED), "fatal"),
    (kafka(KafkaError._MSG_TIMED_OUT, fatal=True), "fatal"),
    (KafkaException("no KafkaError inside"), "transient"),
    (delivery(KafkaError._MSG_TIMED_OUT), "transient"),
    (delivery(KafkaError._FENCED, fatal=True), "fatal"),
    (TidegateError("an unlisted leaf"), "transient"),
    (RuntimeError("unknown"), "transient"),
    (asyncio.CancelledError(), "fatal"),
    (KeyboardInterrupt(), "fatal"),
]


@pytest.mark.parametrize(("error", "kind"), CLASSIFIED, ids=lambda v: type(v).__name__
                         if isinstance(v, BaseException) else str(v))
def test_classification_table(error: BaseException, kind: ErrorKind) -> None:
    assert classify(error) == kind


def test_classification_follows_subclasses() -> None:
    class CustomCodecError(CodecError):
        code = "CUSTOM"

    class CustomRulesError(RulesFileError):
        code = "CUSTOM_RULES"

    assert classify(CustomCodecError("x")) == "poison"
    assert classify(CustomRulesError("x")) == "fatal"


def kafka_retriable(exc: BaseException) -> bool:
    return isinstance(exc, KafkaException) and bool(exc.args[0].retriable())


def test_sync_answers_after_transient_failures() -> None:
    time = FakeTime()
    fn = Flaky(time, timeouts(2), duration=0.25)
    retries: list[tuple[int, float, str]] = []
    result = run_sync(fn, stop=stop_after_attempt(5), wait=wait_fixed(1.0),
                      on_retry=lambda s: retries.append((s.attempt, s.elapsed, str(s.error))))
    assert result == "ok"
    assert fn.calls == [0.0, 1.25, 2.5]
    assert retries == [(1, 0.25, "attempt 1"), (2, 1.5, "attempt 2")]
    assert time.sleeps == [1.0, 1.0]


def test_sync_gives_up_at_the_deadline_with_the_last_error() -> None:
    time = FakeTime()
    errors = timeouts(100)
    fn = Flaky(time, errors, duration=0.5)
    with pytest.raises(TimeoutError) as raised:
        run_sync(fn, stop=stop_after_delay(4.0), wait=wait_fixed(1.0))
    # the third attempt ends at 3.5 s, under 4 s, so a fourth runs; it ends at 5 s: give up
    assert fn.calls == [0.0, 1.5, 3.0, 4.5]
    assert raised.value is errors[3]
    assert time.sleeps == [1.0, 1.0, 1.0] and time.now == 5.0


def test_sync_starts_no_retry_that_would_begin_past_the_deadline() -> None:
    time = FakeTime()
    errors = timeouts(100)
    fn = Flaky(time, errors)
    with pytest.raises(TimeoutError) as raised:
        run_sync(fn, stop=stop_after_attempt(10) | stop_before_delay(3.5), wait=wait_fixed(1.0))
    assert fn.calls == [0.0, 1.0, 2.0, 3.0]
    assert raised.value is errors[3]
    assert time.sleeps == [1.0, 1.0, 1.0]  # none after the last attempt


@pytest.mark.parametrize(("error", "retry_on"), [
    (ValueError("not retried"), (TimeoutError,)),
    (InvalidJsonError("{"), retry_if_transient),
    (BreakerOpenError("model:x", State.OPEN, 3.0), retry_if_transient),
    (kafka(KafkaError.TOPIC_AUTHORIZATION_FAILED), kafka_retriable),
    (KeyboardInterrupt(), lambda _exc: True),
])
def test_sync_passes_errors_that_are_not_retried_through_at_once(
        error: BaseException, retry_on: RetryOn) -> None:
    time = FakeTime()
    fn = Flaky(time, [error])
    retries: list[RetryState] = []
    with pytest.raises(type(error)) as raised:
        run_sync(fn, stop=stop_after_attempt(5), wait=wait_fixed(1.0), retry_on=retry_on,
                 on_retry=retries.append)
    assert raised.value is error
    assert len(fn.calls) == 1
    assert time.sleeps == [] and retries == []


def test_sync_retries_only_what_the_predicate_accepts() -> None:
    time = FakeTime()
    refused = kafka(KafkaError.COORDINATOR_NOT_AVAILABLE, retriable=True)
    denied = kafka(KafkaError.TOPIC_AUTHORIZATION_FAILED)
    fn = Flaky(time, [refused, refused, denied])
    with pytest.raises(KafkaException) as raised:
        run_sync(fn, stop=stop_after_attempt(10), wait=wait_fixed(0.1), retry_on=kafka_retriable)
    assert raised.value is denied
    assert len(fn.calls) == 3
    assert time.sleeps == [0.1, 0.1]


def test_sync_delays_grow_and_are_jittered_within_bounds() -> None:
    time = FakeTime()
    fn = Flaky(time, timeouts(20))
    rng = random.Random(11)
    assert run_sync(fn, stop=stop_after_attempt(21),
                    wait=wait_exponential_jitter(0.1, 5.0, rand=rng.random)) == "ok"
    ceilings = [min(5.0, 0.1 * 2 ** n) for n in range(20)]
    assert all(0.0 <= pause <= cap for pause, cap in zip(time.sleeps, ceilings, strict=True))
    assert len(set(time.sleeps)) == 20  # jittered, not in lockstep
    assert max(time.sleeps[:3]) <= 0.4 < max(time.sleeps[-5:])  # and growing


def test_sync_and_async_wait_the_same() -> None:
    def pauses(runner: Callable[[Flaky, Wait], object]) -> list[float]:
        fn = Flaky(FakeTime(), timeouts(8))
        runner(fn, wait_exponential_jitter(0.1, 2.0, rand=random.Random(3).random))
        return fn.time.sleeps

    blocking = pauses(lambda fn, wait: run_sync(fn, stop=stop_after_attempt(9), wait=wait))
    awaited = pauses(lambda fn, wait: run(fn, fn.time, stop=stop_after_attempt(9), wait=wait))
    assert blocking == awaited and len(blocking) == 8


def test_sync_never_sleeps_after_the_last_attempt() -> None:
    time = FakeTime()
    fn = Flaky(time, timeouts(10))
    with pytest.raises(TimeoutError):
        run_sync(fn, stop=stop_after_attempt(3), wait=wait_exponential(0.1, 1.0))
    assert time.sleeps == pytest.approx([0.1, 0.2])
    assert time.now == pytest.approx(0.3)

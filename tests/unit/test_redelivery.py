"""Retry topics without a broker: due times, retry headers, routing, exhausted dead letters."""

from __future__ import annotations

import json

import pytest

from tidegate.deadletter import Code, SourceRecord, context_of
from tidegate.errors import ModelUnavailableError
from tidegate.redelivery import (
    ATTEMPT_HEADER,
    DUE_HEADER,
    ERROR_HEADER,
    Attempts,
    Failure,
    RetryPolicy,
    due_ms_of,
    exhausted,
)
from tidegate.topics import MAX_RETRIES, STAGES, by_key, retry_topic

pytestmark = pytest.mark.unit

SOURCE = SourceRecord(topic="t.events", partition=2, offset=41, timestamp=1_000, key=b"acct-1",
                      value=b'{"event_id": "e1"}', headers=[("origin", b"shop")])


def test_routing_by_attempt() -> None:
    policy = RetryPolicy((1.0, 10.0, 60.0))
    assert [policy.route(n) for n in (1, 2, 3, 4)] == [1, 2, 3, None]
    assert RetryPolicy((0.5,)).route(1) == 1 and RetryPolicy((0.5,)).route(2) is None
    assert RetryPolicy().route(1) is None and not RetryPolicy().on


def test_due_time_is_the_failure_plus_the_topics_delay() -> None:
    policy = RetryPolicy((0.5, 10.0))
    assert policy.due_ms(1, failed_at_ms=1_000) == 1_500
    assert policy.due_ms(2, failed_at_ms=1_000) == 11_000


def test_a_record_without_retry_headers_is_on_its_first_attempt() -> None:
    assert Attempts.of([("traceparent", b"00-ab")]) == Attempts(1, ())
    assert Attempts.of(None) == Attempts()
    assert due_ms_of([]) == 0  # due now


def test_headers_carry_the_attempt_the_due_time_and_every_failure() -> None:
    first = Attempts().failed(ModelUnavailableError("throttled"), now_ms=5_000)
    second = first.failed(TimeoutError("slow"), now_ms=7_000)
    headers = second.headers(due_ms=8_000)
    assert headers[:2] == [(ATTEMPT_HEADER, b"3"), (DUE_HEADER, b"8000")]
    assert json.loads(dict(headers)[f"{ERROR_HEADER}1"] or b"") == {
        "at": 5_000, "class": "ModelUnavailableError", "message": "throttled"}
    assert Attempts.of(headers) == second  # read back as written
    assert Attempts.of(dict(headers)) == second  # Faust hands headers as a mapping
    assert due_ms_of(headers) == 8_000
    assert [f.attempt for f in second.failures] == [1, 2]


def test_a_long_error_message_is_bounded_and_a_damaged_header_kept() -> None:
    later = Attempts().failed(RuntimeError("x" * 5_000), now_ms=1)
    assert len(later.failures[0].message) == 300
    damaged = Attempts.of([(ATTEMPT_HEADER, b"2"), (f"{ERROR_HEADER}1", b"not json")])
    assert damaged.number == 2
    assert damaged.failures == (Failure(1, 0, "?", "not json"),)


def test_exhausted_dead_letter_keeps_the_original_and_lists_every_attempt() -> None:
    history = Attempts()
    for n, at in enumerate((1_000, 2_000, 3_000), start=1):
        history = history.failed(ModelUnavailableError(f"throttled {n}"), now_ms=at)
    letter = exhausted(SOURCE, history, stage="inference", event_id="e1", trace_id="tr")
    assert (letter.key, letter.value, letter.code) == (SOURCE.key, SOURCE.value,
                                                       Code.RETRIES_EXHAUSTED)
    assert letter.headers[0] == ("origin", b"shop")  # the original headers first, untouched
    context = context_of(letter.headers)
    assert context["error.code"] == "RETRIES_EXHAUSTED"
    assert context["attempt"] == "3"
    assert context["error.class"] == "ModelUnavailableError"
    assert context["source.topic"] == "t.events"  # where a replay sends it
    assert "throttled 3" in context["error.message"]
    assert [json.loads(context[f"attempt.{n}"])["at"] for n in (1, 2, 3)] == [1_000, 2_000,
                                                                            3_000]
    assert [d["attempt"] for d in json.loads(context["error.details"])] == [1, 2, 3]


def test_the_catalog_has_a_retry_topic_per_attempt_for_inference() -> None:
    retry = STAGES["inference"].retry
    assert [spec.key for spec in retry] == [f"inference.retry.{n}"
                                            for n in range(1, MAX_RETRIES + 1)]
    assert all(by_key(spec.key) == spec for spec in retry)
    # a chunk keeps its input partition on the way round
    assert {spec.partitions for spec in retry} == {STAGES["inference"].source.partitions}
    assert retry_topic("inference", 2).retry_of == "inference"
    assert all(not STAGES[stage].retry for stage in STAGES if stage != "inference")


def test_an_exhausted_dead_letter_replays_as_the_original_event() -> None:
    from tidegate.cli.replay import decide, replay_headers

    history = Attempts().failed(ModelUnavailableError("throttled"), now_ms=1)
    letter = exhausted(SOURCE, history, stage="inference", event_id="e1")
    assert decide(letter.headers, max_replays=3) == "replay"
    resent = replay_headers(letter.headers, position="dlq.inference/0/7", now_ms=2)
    assert resent[0] == ("origin", b"shop")
    assert not any(name.startswith(("tidegate.dlq.", "tidegate.retry.")) for name, _ in resent)

"""Dead letters: original bytes and headers untouched, error context in prefixed headers."""

from __future__ import annotations

import dataclasses
import json
import time
from types import SimpleNamespace

import confluent_kafka
import pytest

from tidegate.deadletter import (
    CONTEXT_PREFIX,
    DeadLetter,
    Headers,
    SourceRecord,
    context_of,
    header_value,
    source_record,
)
from tidegate.kafka.reader import ReaderEvent

pytestmark = pytest.mark.unit

ORIGINAL: Headers = [("traceparent", b"00-abc"), ("blank", None), ("dup", b"1"), ("dup", b"2")]


def record(headers: Headers | None = None, *, key: bytes | None = b"\x00key\xff") -> SourceRecord:
    return SourceRecord(topic="p.events", partition=4, offset=123_456, timestamp=1_700_000_000_123,
                        key=key, value=b"\xc3\x01raw value \xff",
                        headers=list(ORIGINAL if headers is None else headers))


def test_dead_letter_keeps_key_value_and_headers_and_adds_context() -> None:
    source = record()
    before = int(time.time() * 1000)
    letter = DeadLetter.of(source, stage="validation", code="OUT_OF_RANGE",
                           error_class="ValidationError", message="amount: below 0",
                           event_id="e-1", trace_id="t" * 32, attempt=3,
                           details=[{"field": "amount", "code": "OUT_OF_RANGE"}])
    after = int(time.time() * 1000)

    assert letter.key == source.key
    assert letter.value == source.value
    assert letter.code == "OUT_OF_RANGE"
    assert letter.event_id == "e-1"
    assert letter.headers[:len(ORIGINAL)] == ORIGINAL
    added = letter.headers[len(ORIGINAL):]
    assert all(name.startswith(CONTEXT_PREFIX) and isinstance(value, bytes)
               for name, value in added)
    context = context_of(letter.headers)
    assert len(context) == len(added)
    failed_at = int(context.pop("failed.at"))
    assert before <= failed_at <= after
    assert context == {
        "stage": "validation",
        "error.code": "OUT_OF_RANGE",
        "error.class": "ValidationError",
        "error.message": "amount: below 0",
        "source.topic": "p.events",
        "source.partition": "4",
        "source.offset": "123456",
        "source.timestamp": "1700000000123",
        "attempt": "3",
        "event.id": "e-1",
        "trace.id": "t" * 32,
        "error.details": json.dumps([{"field": "amount", "code": "OUT_OF_RANGE"}]),
    }
    assert json.loads(context_of(letter.headers)["error.details"]) == [
        {"field": "amount", "code": "OUT_OF_RANGE"}]


def test_optional_context_is_left_out_and_the_source_is_not_changed() -> None:
    source = record(key=None)
    letter = DeadLetter.of(source, stage="ingest", code="BAD_MAGIC", error_class="BadMagicError",
                           message="first byte 0xff")
    context = context_of(letter.headers)
    assert letter.key is None
    assert letter.event_id is None
    assert context["attempt"] == "1"
    assert {"event.id", "trace.id", "error.details"}.isdisjoint(context)
    assert source.headers == ORIGINAL  # a new list, the source's is untouched


def test_message_is_bounded() -> None:
    letter = DeadLetter.of(record(), stage="feature", code="X", error_class="E",
                           message="é" * 5_000)
    message = context_of(letter.headers)["error.message"]
    assert message == "é" * 1_000


def test_details_serialise_values_json_cannot_carry() -> None:
    letter = DeadLetter.of(record(), stage="validation", code="TOO_LONG", error_class="E",
                           message="m", details=[{"value": b"\x01", "set": {1}}])
    details = json.loads(context_of(letter.headers)["error.details"])
    assert details == [{"value": str(b"\x01"), "set": str({1})}]


def test_long_details_stay_valid_json() -> None:
    details = [{"field": f"f{i}", "message": "x" * 200} for i in range(100)]
    letter = DeadLetter.of(record(), stage="validation", code="REQUIRED", error_class="E",
                           message="m", details=details)
    text = context_of(letter.headers)["error.details"]
    assert len(text.encode()) <= 8_000
    assert isinstance(json.loads(text), list)


def test_old_context_headers_are_replaced_not_duplicated() -> None:
    first = DeadLetter.of(record(), stage="ingest", code="INVALID_JSON", error_class="A",
                          message="first", event_id="e-old", details=[{"a": 1}])
    replayed = dataclasses.replace(record(), headers=[*first.headers, ("later", b"x")])
    second = DeadLetter.of(replayed, stage="validation", code="REQUIRED", error_class="B",
                           message="second", attempt=2)

    names = [name for name, _ in second.headers]
    context_names = [name for name in names if name.startswith(CONTEXT_PREFIX)]
    assert len(context_names) == len(set(context_names))
    assert second.headers[:len(ORIGINAL) + 1] == [*ORIGINAL, ("later", b"x")]
    context = context_of(second.headers)
    assert context["stage"] == "validation"
    assert context["error.code"] == "REQUIRED"
    assert context["error.message"] == "second"
    assert context["attempt"] == "2"
    assert "event.id" not in context and "error.details" not in context
    assert header_value(second.headers, CONTEXT_PREFIX + "error.code") == "REQUIRED"


def test_header_value_is_the_last_non_null_value_decoded() -> None:
    headers: Headers = [("a", b"1"), ("b", None), ("a", b"2"), ("a", None), ("c", b"\xff")]
    assert header_value(headers, "a") == "2"
    assert header_value(headers, "b") is None
    assert header_value(headers, "missing") is None
    assert header_value(headers, "c") == "\ufffd"
    assert header_value({"x": "text", "y": b"bytes"}, "x") == "text"
    assert header_value({"x": "text", "y": b"bytes"}, "y") == "bytes"
    assert header_value([("s", "str value")], "s") == "str value"
    assert header_value(None, "a") is None
    assert header_value([], "a") is None


def test_context_of_strips_the_prefix_and_ignores_other_headers() -> None:
    headers: Headers = [("plain", b"v"), (CONTEXT_PREFIX + "stage", b"ingest"),
                        (CONTEXT_PREFIX + "empty", None)]
    assert context_of(headers) == {"stage": "ingest"}
    assert context_of({CONTEXT_PREFIX + "error.code": "X", "other": "y"}) == {"error.code": "X"}
    assert context_of(None) == {}


def test_records_are_frozen() -> None:
    letter = DeadLetter.of(record(), stage="ingest", code="X", error_class="E", message="m")
    with pytest.raises(dataclasses.FrozenInstanceError):
        letter.code = "Y"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        record().offset = 1  # type: ignore[misc]


def test_every_dead_letter_code_and_every_codec_code_is_documented() -> None:
    from pathlib import Path

    from tidegate import errors
    from tidegate.deadletter import Code

    documented = Path(__file__).resolve().parents[2].joinpath("docs", "errors.md").read_text()
    codec_codes = [cls.code for cls in vars(errors).values()
                   if isinstance(cls, type) and issubclass(cls, errors.CodecError)
                   and cls is not errors.CodecError]  # the root is never raised itself
    names = [value for name, value in vars(Code).items() if name.isupper()]
    assert len(names) == 17
    missing = [code for code in [*names, *codec_codes] if f"`{code}`" not in documented]
    assert missing == []


def test_a_reader_event_gives_the_same_source_record_as_a_faust_shaped_event() -> None:
    message = confluent_kafka.Message(topic="events", partition=4, offset=91, key=b"acct-7",
                                      value=b"\x00\x01", headers=[("traceparent", b"00-1")],
                                      timestamp=(1, 1_796_400_000_123))
    event = ReaderEvent(message)
    faust_shaped = SimpleNamespace(message=SimpleNamespace(
        topic="events", partition=4, offset=91, timestamp=1_796_400_000.123, key=b"acct-7",
        value=b"\x00\x01", headers=[("traceparent", b"00-1")]))
    assert source_record(event) == source_record(faust_shaped) == SourceRecord(
        topic="events", partition=4, offset=91, timestamp=1_796_400_000_123, key=b"acct-7",
        value=b"\x00\x01", headers=[("traceparent", b"00-1")])

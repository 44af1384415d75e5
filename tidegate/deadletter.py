"""Dead letters: original key, value bytes and headers, untouched, plus error context in headers.

Replay needs nothing but a dead letter: the context headers say where it came from, why it
failed and how often it was tried.

Example::

    letter = DeadLetter.of(source, stage="ingest", code="INVALID_JSON", error=exc)
    producer.produce(dlq_topic, key=letter.key, value=letter.value, headers=letter.headers)
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CONTEXT_PREFIX",
    "Code",
    "Context",
    "DeadLetter",
    "Headers",
    "SourceRecord",
    "context_of",
    "header_value",
    "source_record",
]

Headers = list[tuple[str, bytes | None]]

CONTEXT_PREFIX = "tidegate.dlq."


class Code:
    """The dead-letter codes stages assign. Decode failures carry the ``code`` of their
    ``CodecError`` leaf (``tidegate.errors``); docs/errors.md lists every code."""

    MISSING_EVENT_ID = "MISSING_EVENT_ID"
    BAD_EVENT_ID = "BAD_EVENT_ID"
    BAD_EVENT_TIME = "BAD_EVENT_TIME"
    EVENT_TIME_FUTURE = "EVENT_TIME_FUTURE"
    DUPLICATE_EVENT_ID = "DUPLICATE_EVENT_ID"
    UNENCODABLE = "UNENCODABLE"
    REQUIRED = "REQUIRED"
    WRONG_TYPE = "WRONG_TYPE"
    NOT_FINITE = "NOT_FINITE"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    NOT_ALLOWED = "NOT_ALLOWED"
    TOO_LONG = "TOO_LONG"
    MISSING_SHARE = "MISSING_SHARE"
    BAD_BATCH = "BAD_BATCH"
    FEATURE_SHAPE = "FEATURE_SHAPE"
    RETRIES_EXHAUSTED = "RETRIES_EXHAUSTED"
    INTERNAL_ERROR = "INTERNAL_ERROR"


class Context:
    """The names of the error-context headers, without ``CONTEXT_PREFIX``."""

    STAGE = "stage"
    ERROR_CODE = "error.code"
    ERROR_CLASS = "error.class"
    ERROR_MESSAGE = "error.message"
    ERROR_DETAILS = "error.details"
    SOURCE_TOPIC = "source.topic"
    SOURCE_PARTITION = "source.partition"
    SOURCE_OFFSET = "source.offset"
    SOURCE_TIMESTAMP = "source.timestamp"
    FAILED_AT = "failed.at"
    ATTEMPT = "attempt"
    EVENT_ID = "event.id"
    TRACE_ID = "trace.id"

_MESSAGE_LIMIT = 1000
_DETAILS_LIMIT = 8000


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """Where an input event came from on the input topic, with its original bytes."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes
    headers: Headers


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record ready for its stage's dead-letter topic."""

    key: bytes | None
    value: bytes
    headers: Headers
    code: str
    event_id: str | None

    @classmethod
    def of(
        cls, source: SourceRecord, *, stage: str, code: str, error_class: str, message: str,
        event_id: str | None = None, trace_id: str | None = None, attempt: int = 1,
        details: Sequence[Mapping[str, object]] = (),
    ) -> DeadLetter:
        """A dead letter for ``source``; the original headers come first and stay as they were."""
        context: dict[str, str] = {
            Context.STAGE: stage,
            Context.ERROR_CODE: code,
            Context.ERROR_CLASS: error_class,
            Context.ERROR_MESSAGE: message[:_MESSAGE_LIMIT],
            Context.SOURCE_TOPIC: source.topic,
            Context.SOURCE_PARTITION: str(source.partition),
            Context.SOURCE_OFFSET: str(source.offset),
            Context.SOURCE_TIMESTAMP: str(source.timestamp),
            Context.FAILED_AT: str(int(time.time() * 1000)),
            Context.ATTEMPT: str(attempt),
        }
        if event_id:
            context[Context.EVENT_ID] = event_id
        if trace_id:
            context[Context.TRACE_ID] = trace_id
        if details:
            context[Context.ERROR_DETAILS] = _bounded_json(list(details))
        headers = [
            *(h for h in source.headers if not h[0].startswith(CONTEXT_PREFIX)),
            *((CONTEXT_PREFIX + name, value.encode()) for name, value in context.items()),
        ]
        return cls(key=source.key, value=source.value, headers=headers, code=code,
                   event_id=event_id)


HeaderInput = (
    Sequence[tuple[str, str | bytes | None]] | Mapping[str, str | bytes | None] | None
)


def _pairs(headers: HeaderInput) -> list[tuple[str, bytes | None]]:
    items = headers.items() if isinstance(headers, Mapping) else headers or ()
    return [(key, value.encode() if isinstance(value, str) else value) for key, value in items]


def _bounded_json(details: list[Mapping[str, object]]) -> str:
    """JSON of as many details as fit the limit, then a count of those left out."""
    keep = len(details)
    while True:
        shown: list[Mapping[str, object]] = details[:keep]
        if keep < len(details):
            shown = [*shown, {"omitted": len(details) - keep}]
        text = json.dumps(shown, default=str)
        if len(text) <= _DETAILS_LIMIT or keep == 0:
            return text
        keep //= 2


def header_value(headers: HeaderInput, name: str) -> str | None:
    """The last value of header ``name`` decoded as UTF-8, or None."""
    found = None
    for key, value in _pairs(headers):
        if key == name and value is not None:
            found = value
    return found.decode("utf-8", "replace") if found is not None else None


def context_of(headers: HeaderInput) -> dict[str, str]:
    """The error context a dead letter carries, without the prefix."""
    return {
        key.removeprefix(CONTEXT_PREFIX): value.decode("utf-8", "replace")
        for key, value in _pairs(headers)
        if key.startswith(CONTEXT_PREFIX) and value is not None
    }


def source_record(event: Any) -> SourceRecord:
    """The input record behind a Faust event (or a reader's), with its raw key, value and
    headers."""
    message = event.message
    direct = getattr(message, "source_record", None)  # a librdkafka reader's event builds it
    if direct is not None:
        record: SourceRecord = direct()
        return record
    headers = message.headers
    if isinstance(headers, dict):
        headers = list(headers.items())
    return SourceRecord(
        topic=message.topic, partition=message.partition, offset=message.offset,
        timestamp=int(message.timestamp * 1000) if message.timestamp else 0,
        key=message.key, value=message.value or b"", headers=list(headers or []),
    )

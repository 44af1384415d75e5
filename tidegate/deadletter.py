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
    "DeadLetter",
    "Headers",
    "SourceRecord",
    "context_of",
    "header_value",
    "source_record",
]

Headers = list[tuple[str, bytes | None]]

CONTEXT_PREFIX = "tidegate.dlq."
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
            "stage": stage,
            "error.code": code,
            "error.class": error_class,
            "error.message": message[:_MESSAGE_LIMIT],
            "source.topic": source.topic,
            "source.partition": str(source.partition),
            "source.offset": str(source.offset),
            "source.timestamp": str(source.timestamp),
            "failed.at": str(int(time.time() * 1000)),
            "attempt": str(attempt),
        }
        if event_id:
            context["event.id"] = event_id
        if trace_id:
            context["trace.id"] = trace_id
        if details:
            context["error.details"] = _bounded_json(list(details))
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
    """The input record behind a Faust event, with its raw key, value and headers."""
    message = event.message
    headers = message.headers
    if isinstance(headers, dict):
        headers = list(headers.items())
    return SourceRecord(
        topic=message.topic, partition=message.partition, offset=message.offset,
        timestamp=int(message.timestamp * 1000) if message.timestamp else 0,
        key=message.key, value=message.value or b"", headers=list(headers or []),
    )

"""What a stage handler returns, and the state it may stage until delivery.

Example::

    async def handler(events: Sequence[Any]) -> list[Outgoing]:
        return [Outgoing(topic="tidegate.validated", value=batch, partition=3)]
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tidegate.deadletter import SourceRecord
from tidegate.delivery import Message

__all__ = ["Deliver", "Handler", "Outgoing", "Staged", "messages", "source_record"]


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to produce."""

    topic: str
    value: bytes
    key: bytes | None = None
    partition: int | None = None
    headers: Sequence[tuple[str, bytes | None]] | None = None


Handler = Callable[[Sequence[Any]], Awaitable[list[Outgoing]]]
Deliver = Callable[[Sequence[Outgoing]], Awaitable[None]]


class Staged(Protocol):
    """State a handler changes that must count only once the batch's outputs are delivered.

    ``keep`` after a handler call returned, ``drop`` after it raised (the per-message retry
    calls the handler again), ``commit`` after delivery. Ingest's de-duplication window and the
    feature stage's state store are staged, so a retried batch neither reports its own events as
    duplicates nor counts them twice.
    """

    def keep(self) -> None: ...

    def drop(self) -> None: ...

    def commit(self) -> None: ...


def messages(outgoing: Sequence[Outgoing]) -> list[Message]:
    """The producer's tuples for ``outgoing``."""
    return [(item.topic, item.key, item.value, item.partition,
             list(item.headers) if item.headers else None) for item in outgoing]


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

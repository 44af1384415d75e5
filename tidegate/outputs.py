"""What a stage handler returns, the helpers that build it, and the state it may stage.

A handler is a one-way function from one input batch to its :class:`Outputs`: the messages to
produce, the dead letters, and the batch's counts. The runtime delivers them, counts them and
commits; the handler never calls back into it.

Example::

    async def handler(events: Sequence[Any]) -> Outputs:
        batches, dead = unpack_messages(codec, events, stage="validation")
        batch = Batch.concat(batches)
        return Outputs(forward(codec, batch, topic="tidegate.validated", stage="validation"),
                       dead=dead, records_in=len(batch), records_out=len(batch))
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from tidegate.batches import Batch, pack, pack_whole
from tidegate.codec import Codec
from tidegate.deadletter import DeadLetter

# The producer's tuple: topic, key, value, partition, headers.
Message = tuple[str, bytes | None, bytes, int | None, list[tuple[str, str | bytes | None]] | None]

__all__ = [
    "Handler", "Message", "Outgoing", "Outputs", "Pending", "Staged", "forward", "messages",
    "prediction_messages",
]


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to produce."""

    topic: str
    value: bytes
    key: bytes | None = None
    partition: int | None = None
    headers: Sequence[tuple[str, bytes | None]] | None = None


@dataclass(slots=True)
class Outputs:
    """What a handler made of one input batch."""

    messages: list[Outgoing] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    records_in: int = 0
    records_out: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    # the input events' W3C trace contexts: the batch span links to them (a reference to the
    # batch's own list, not a copy; the runtime reads only as many as it links)
    traceparents: Sequence[str] = ()


Handler = Callable[[Sequence[Any]], Awaitable[Outputs]]


def forward(codec: Codec, batch: Batch, *, topic: str, stage: str, by_account: bool = True
            ) -> list[Outgoing]:
    """The internal batch messages that carry ``batch`` to the next stage: one per partition
    its events are routed to (``by_account``), else the whole batch in one message (or a few,
    when large) to a partition the producer picks."""
    if not by_account:
        return [Outgoing(topic=topic, value=value)
                for value in pack_whole(codec, batch, stage=stage)]
    return [Outgoing(topic=topic, partition=partition, value=value)
            for partition, value in pack(codec, batch, stage=stage)]


def prediction_messages(columns: Mapping[str, Sequence[Any]], traceparents: Iterable[str], *,
                        encode: Callable[[Mapping[str, Sequence[Any]], int], list[bytes]],
                        topic: str, headers: Sequence[tuple[str, bytes | None]] = (),
                        ) -> list[Outgoing]:
    """One message per prediction (``columns``: the records by field), keyed by event id, with
    the event's trace context and ``headers`` (a retried record's attempt).

    ``encode`` frames them all in one call (``Codec.columns_encoder``).
    """
    event_ids = columns["event_id"]
    return [Outgoing(topic=topic, key=event_id.encode(), value=value,
                     headers=[("traceparent", traceparent.encode()), *headers])
            for event_id, value, traceparent in zip(event_ids, encode(columns, len(event_ids)),
                                                    traceparents, strict=True)]


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


K = TypeVar("K")
V = TypeVar("V")


class Pending(Generic[K, V]):
    """The writes of a :class:`Staged` object that do not count yet: those of the running
    handler call, and those kept for the batch until it is delivered.

    Example::

        pending.call[key] = value      # while the handler runs
        pending.keep()                 # the call returned
        applied = pending.take()       # the batch was delivered: apply these
    """

    def __init__(self) -> None:
        self.call: dict[K, V] = {}
        self.batch: dict[K, V] = {}

    def __contains__(self, key: object) -> bool:
        return key in self.call or key in self.batch

    def __getitem__(self, key: K) -> V:
        return self.call[key] if key in self.call else self.batch[key]

    def keep(self) -> None:
        self.batch.update(self.call)
        self.call.clear()

    def drop(self) -> None:
        self.call.clear()

    def take(self) -> dict[K, V]:
        self.keep()
        taken, self.batch = self.batch, {}
        return taken

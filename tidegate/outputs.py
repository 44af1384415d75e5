"""What a stage handler returns, and the state it may stage until delivery.

Example::

    async def handler(events: Sequence[Any]) -> list[Outgoing]:
        return [Outgoing(topic="tidegate.validated", value=batch, partition=3)]
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

# The producer's tuple: topic, key, value, partition, headers.
Message = tuple[str, bytes | None, bytes, int | None, list[tuple[str, str | bytes | None]] | None]

__all__ = [
    "Deliver", "Handler", "Message", "Outgoing", "Pending", "Staged", "messages",
]


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

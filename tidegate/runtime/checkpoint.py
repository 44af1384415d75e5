"""Where a batch ends: its outputs delivered, then its input offsets committed.

One object per processing guarantee, behind one call, ``commit(outgoing, events)``:

- :class:`AtLeastOnce` produces the outputs, awaits every broker ack (retrying with backoff
  inside the delivery deadline), then commits the input offsets. A crash in between repeats
  the batch; its event ids make the repeats removable. With deferred state (the feature
  stage's account store) it holds the offsets instead, and once per interval (``settle``)
  writes the state the held batches changed, awaits its acks, then commits them.
- :class:`ExactlyOnce` commits the outputs and the input offsets in one Kafka transaction.

Output that cannot be delivered ends the process without committing (:func:`exit_undeliverable`,
the one place that does), so the supervisor restarts the stage and the input is read again.

Example::

    checkpoint = AtLeastOnce(outbox.send, reader, deadline=30.0)
    await checkpoint.commit(outgoing, events)
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, NoReturn, Protocol

from confluent_kafka import TopicPartition

from tidegate.kafka.transactions import TransactionalOutbox
from tidegate.outputs import Outgoing, messages
from tidegate.retry import RetryState, retry_async, stop_before_delay, wait_exponential_jitter

__all__ = ["EXIT_DELIVERY", "AtLeastOnce", "Checkpoint", "Deferred", "ExactlyOnce", "Offsets",
           "Send", "deliver", "exit_undeliverable"]

log = logging.getLogger(__name__)

EXIT_DELIVERY = 75  # EX_TEMPFAIL: outputs could not be delivered; restart and read again


class Offsets(Protocol):
    """A consumer whose offsets a checkpoint commits: the input's ``BatchReader``, or the
    retry topics' ``DelayedReader``."""

    def next_offsets(self, events: Sequence[Any]) -> list[TopicPartition]: ...

    def delivered(self, offsets: Sequence[TopicPartition]) -> None: ...

    def commit(self, events: Sequence[Any]) -> None: ...

    def commit_offsets(self, offsets: Sequence[TopicPartition], *, at_once: bool = False
                       ) -> None: ...

    def group_metadata(self) -> Any: ...


class Deferred(Protocol):
    """State whose writes wait for the checkpoint: ``ChangelogStore(defer=True)``."""

    def unwritten(self) -> list[Outgoing]: ...


class Checkpoint(Protocol):
    """Delivers a batch's outputs and commits its input, or ends the process trying."""

    async def commit(self, outgoing: Sequence[Outgoing], events: Sequence[Any]) -> None: ...

    async def settle(self, *, now: bool = False) -> None:
        """After the batch's staged state counted: finish what waits for it (deferred state)."""


def exit_undeliverable(reason: str) -> NoReturn:
    """End the process without committing: the restarted stage reads the input again."""
    log.critical("%s; exiting to be restarted without committing", reason)
    logging.shutdown()
    os._exit(EXIT_DELIVERY)


Send = Callable[[Sequence[Outgoing]], Awaitable[None]]


async def deliver(send: Send, outgoing: Sequence[Outgoing], *, deadline: float) -> None:
    """Produce every message and await the broker's acks; retry inside ``deadline``, else exit.

    Every error is retried (a broker restart shows as several kinds), with full-jitter
    exponential backoff from 0.1 s up to 5 s.
    """
    def warn(state: RetryState) -> None:
        log.warning("delivery failed (%s); retrying in %.1f s", state.error, state.upcoming_sleep)

    try:
        await retry_async(lambda: send(outgoing), retry_on=Exception, on_retry=warn,
                          stop=stop_before_delay(deadline),
                          wait=wait_exponential_jitter(0.1, 5.0))
    except Exception as exc:  # noqa: BLE001 -- undeliverable: restart and read again
        exit_undeliverable(f"outputs undeliverable for {deadline:.0f} s ({exc})")


class AtLeastOnce:
    """Deliver, await the acks, then commit the input offsets (``reader`` None: Faust acks).

    With ``deferred`` state, a batch's offsets are held until ``settle`` has written the state
    (at most every ``interval`` seconds, or ``now``): state first, then the offsets, so a
    committed offset never runs ahead of the state its events made.
    """

    def __init__(self, send: Send, reader: Offsets | None, *, deadline: float,
                 deferred: Deferred | None = None, interval: float = 0.5) -> None:
        self.send, self.reader, self.deadline = send, reader, deadline
        self.deferred, self.interval = deferred, interval
        self._held: dict[tuple[str, int], int] = {}
        self._next = 0.0

    async def commit(self, outgoing: Sequence[Outgoing], events: Sequence[Any]) -> None:
        await deliver(self.send, outgoing, deadline=self.deadline)
        if self.reader is None:
            return
        if self.deferred is None:
            self.reader.commit(events)  # records the positions too
            return
        offsets = self.reader.next_offsets(events)
        self.reader.delivered(offsets)
        self._held.update(((tp.topic, tp.partition), tp.offset) for tp in offsets)

    async def settle(self, *, now: bool = False) -> None:
        """Write the deferred state and commit the held offsets, when due (or ``now``)."""
        if self.deferred is None or self.reader is None:
            return
        if not now and time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self.interval
        writes = self.deferred.unwritten()
        if writes:
            await deliver(self.send, writes, deadline=self.deadline)
        held, self._held = self._held, {}
        if held:
            self.reader.commit_offsets([TopicPartition(topic, partition, offset)
                                        for (topic, partition), offset in held.items()],
                                       at_once=True)

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop the held offsets of revoked input partitions (their state is dropped too: the
        next owner repeats those batches from the state last written)."""
        gone = set(partitions)
        self._held = {key: offset for key, offset in self._held.items() if key[1] not in gone}


class ExactlyOnce:
    """The batch's outputs and its input offsets in one transaction."""

    def __init__(self, outbox: TransactionalOutbox, reader: Offsets) -> None:
        self.outbox, self.reader = outbox, reader

    async def commit(self, outgoing: Sequence[Outgoing], events: Sequence[Any]) -> None:
        offsets = self.reader.next_offsets(events)
        try:
            await self.outbox.commit(messages(outgoing), offsets=offsets,
                                     group_metadata=self.reader.group_metadata())
        except Exception as exc:  # noqa: BLE001 -- nothing committed: restart and read again
            exit_undeliverable(f"transaction not committed ({exc})")
        self.reader.delivered(offsets)

    async def settle(self, *, now: bool = False) -> None:
        """Nothing waits: state rides in each batch's transaction."""

"""Where a batch ends: its outputs delivered, then its input offsets committed.

One object per processing guarantee, behind one call, ``commit(outgoing, events)``:

- :class:`AtLeastOnce` produces the outputs, awaits every broker ack (retrying with backoff
  inside the delivery deadline), then commits the input offsets. A crash in between repeats
  the batch; its event ids make the repeats removable.
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
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn, Protocol

from confluent_kafka import TopicPartition

from tidegate.kafka.transactions import TransactionalOutbox
from tidegate.outputs import Outgoing, messages
from tidegate.retry import RetryState, retry_async, stop_before_delay, wait_exponential_jitter

__all__ = ["EXIT_DELIVERY", "AtLeastOnce", "Checkpoint", "ExactlyOnce", "Offsets", "Send",
           "deliver", "exit_undeliverable"]

log = logging.getLogger(__name__)

EXIT_DELIVERY = 75  # EX_TEMPFAIL: outputs could not be delivered; restart and read again


class Offsets(Protocol):
    """A consumer whose offsets a checkpoint commits: the input's ``BatchReader``, or the
    retry topics' ``DelayedReader``."""

    def next_offsets(self, events: Sequence[Any]) -> list[TopicPartition]: ...

    def delivered(self, offsets: Sequence[TopicPartition]) -> None: ...

    def commit(self, events: Sequence[Any]) -> None: ...

    def group_metadata(self) -> Any: ...


class Checkpoint(Protocol):
    """Delivers a batch's outputs and commits its input, or ends the process trying."""

    async def commit(self, outgoing: Sequence[Outgoing], events: Sequence[Any]) -> None: ...


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
    """Deliver, await the acks, then commit the input offsets (``reader`` None: Faust acks)."""

    def __init__(self, send: Send, reader: Offsets | None, *, deadline: float) -> None:
        self.send, self.reader, self.deadline = send, reader, deadline

    async def commit(self, outgoing: Sequence[Outgoing], events: Sequence[Any]) -> None:
        await deliver(self.send, outgoing, deadline=self.deadline)
        if self.reader is not None:
            self.reader.commit(events)  # records the positions too


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

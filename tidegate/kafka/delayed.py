"""Read retry topics, each record no earlier than its due time, without blocking anything.

A stage reads its retry topics with a second consumer beside its input's ``BatchReader``, and
asks it for due records once per turn of its batch loop: the call never waits. A record whose
due time (``tidegate.retry.due``) has not come stops its partition there: the reader seeks the
partition back to that record and pauses it until the time comes, so the records behind it
(due later still: one topic, one delay) wait in Kafka, and the stage's input keeps flowing.

Offsets are committed as the input's are: only for records whose outcome was delivered, at
most every ``commit_interval`` seconds, at once on a handover and on close.

Example::

    retries = DelayedReader(config, topics=["tidegate.inference.retry.1"],
                            group="tidegate.inference-retry")
    due = await retries.next_due(8)        # [] when nothing is due; never waits
    ... deliver the outcome ...
    retries.commit(due)
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition

from tidegate.kafka.clients import CONSUMER_DEFAULTS
from tidegate.kafka.reader import PendingCommits, ReaderEvent, report_commit
from tidegate.redelivery import due_ms_of
from tidegate.settings import ClientConfig

__all__ = ["DelayedReader"]

log = logging.getLogger(__name__)

Key = tuple[str, int]


class DelayedReader:
    """A librdkafka consumer of retry topics that hands out records once they are due."""

    def __init__(self, config: ClientConfig, *, topics: Sequence[str], group: str,
                 clock: Callable[[], float] = time.time, commit_interval: float = 0.5,
                 prefetch_kbytes: int = 4096) -> None:
        self._consumer = Consumer({
            **CONSUMER_DEFAULTS, "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            "isolation.level": "read_committed",
            "queued.max.messages.kbytes": prefetch_kbytes,
            "session.timeout.ms": 10_000, "heartbeat.interval.ms": 2_000,
            "on_commit": report_commit,
            **config, "group.id": group,
        })
        self.topics = tuple(topics)
        self._clock = clock
        self._owned: set[Key] = set()
        self._waiting: dict[Key, float] = {}  # paused until this time (s since the epoch)
        self._paused = False  # by the stage (a command, backpressure): nothing is handed out
        self._pending = PendingCommits(self._consumer, interval=commit_interval)
        self._polling = threading.Lock()  # as BatchReader's: close waits for a running poll
        self._consumer.subscribe(list(self.topics), on_assign=self._assigned,
                                 on_revoke=self._revoked, on_lost=self._lost)

    def _assigned(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self._owned.update((tp.topic, tp.partition) for tp in partitions)
        if self._paused and partitions:
            consumer.incremental_assign(partitions)
            consumer.pause(partitions)

    def _revoked(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self._pending.hand_over(partitions)
        self._lost(consumer, partitions)

    def _lost(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            key = (tp.topic, tp.partition)
            self._owned.discard(key)
            self._waiting.pop(key, None)
        self._pending.forget(partitions)

    async def next_due(self, size: int) -> list[ReaderEvent]:
        """Up to ``size`` records that are due now, in order per partition; never waits."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._take, size)

    def _take(self, size: int) -> list[ReaderEvent]:
        with self._polling:
            return self._take_due(size)

    def _take_due(self, size: int) -> list[ReaderEvent]:
        now = self._clock()
        self._wake(now)
        messages = self._consumer.consume(size, 0)
        if not messages:
            self._pending.due()
        due: list[ReaderEvent] = []
        held: set[Key] = set()
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    raise RuntimeError(f"reading {message.topic()}: {error.str()}")
                continue
            key = (str(message.topic()), int(message.partition() or 0))
            if key in held or key in self._waiting:
                continue  # behind a record that is not due: read again after the seek
            at = due_ms_of(message.headers()) / 1000
            if at > now:
                self._hold(key, int(message.offset() or 0), at)
                held.add(key)
                continue
            due.append(ReaderEvent(message))
        return due

    def _hold(self, key: Key, offset: int, until: float) -> None:
        """Park a partition at ``offset`` until ``until``: paused, and read from there again."""
        tp = TopicPartition(key[0], key[1], offset)
        self._consumer.pause([tp])
        self._consumer.seek(tp)  # drops what was fetched past it
        self._waiting[key] = until

    def _wake(self, now: float) -> None:
        ready = [key for key, until in self._waiting.items() if until <= now]
        for key in ready:
            del self._waiting[key]
        if ready and not self._paused:
            self._consumer.resume([TopicPartition(t, p) for t, p in ready])

    def waiting(self) -> dict[Key, float]:
        """The partitions parked until a record's due time, and until when."""
        return dict(self._waiting)

    def next_offsets(self, events: Sequence[ReaderEvent]) -> list[TopicPartition]:
        """One past each partition's last record of ``events``."""
        ends: dict[Key, int] = {}
        for event in events:
            key = (event.topic, event.partition)
            ends[key] = max(ends.get(key, -1), event.offset)
        return [TopicPartition(t, p, o + 1) for (t, p), o in ends.items()]

    def delivered(self, offsets: Sequence[TopicPartition]) -> None:
        """Nothing to record: the stage's lag is its input's."""

    def commit(self, events: Sequence[ReaderEvent]) -> None:
        """Commit past every record of a delivered batch (at most every ``commit_interval``)."""
        self.commit_offsets(self.next_offsets(events))

    def commit_offsets(self, offsets: Sequence[TopicPartition], *, at_once: bool = False
                       ) -> None:
        """Commit these delivered offsets: at the next interval, or ``at_once``."""
        self._pending.add([tp for tp in offsets if (tp.topic, tp.partition) in self._owned])
        if at_once:
            self._pending.now()
        else:
            self._pending.due()

    def group_metadata(self) -> Any:
        """The consumer group's metadata, for committing offsets inside a transaction."""
        return self._consumer.consumer_group_metadata()

    def pause(self) -> None:
        """Hand out nothing (the stage is paused); keeps the group membership. Commits what
        was delivered at once, as ``BatchReader.pause`` does."""
        if not self._paused:
            assigned = self._consumer.assignment()
            if assigned:
                self._consumer.pause(assigned)
            self._pending.now()
            self._paused = True

    def resume(self) -> None:
        """Read again, except the partitions still waiting for a due time."""
        if self._paused:
            self._paused = False
            ready = [tp for tp in self._consumer.assignment()
                     if (tp.topic, tp.partition) not in self._waiting]
            if ready:
                self._consumer.resume(ready)

    def close(self) -> Any:
        with self._polling:
            self._pending.flush()
            return self._consumer.close()

"""Read a public topic in micro-batches with librdkafka, committing only delivered batches.

Faust hands its agents one message at a time through a per-message await; on the public input
topic (one event per message) that costs more than everything ingest does with the event (see
the benchmark). ``BatchReader`` takes up to ``size`` messages in one call instead, and commits a
batch's offsets only after the caller has delivered its outputs, so the at-least-once contract
is the same as the Faust path's.

Example::

    reader = BatchReader(config, topic="tidegate.events", group="tidegate.ingest-input")
    batch = await reader.next_batch(512, 0.05)
    ... deliver outputs ...
    reader.commit(batch)
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from tidegate.deadletter import SourceRecord
from tidegate.kafka.clients import CONSUMER_DEFAULTS
from tidegate.settings import ClientConfig, Settings
from tidegate.topics import TopicSpec

__all__ = [
    "QUEUED_MIN_MESSAGES", "BatchReader", "PendingCommits", "ReaderEvent", "batch_messages",
    "read_linger", "report_commit",
]

log = logging.getLogger(__name__)


class ReaderEvent:
    """A record shaped like a Faust event (``event.message.value`` and so on), so handlers
    serve both paths. Its parts are read from the librdkafka message when asked: building two
    dataclasses per record cost the public topics' readers about a tenth of their time."""

    __slots__ = ("_message",)

    def __init__(self, message: Any) -> None:
        self._message = message

    @property
    def message(self) -> ReaderEvent:
        return self

    @property
    def topic(self) -> str:
        return str(self._message.topic())

    @property
    def partition(self) -> int:
        return int(self._message.partition() or 0)

    @property
    def offset(self) -> int:
        return int(self._message.offset() or 0)

    @property
    def timestamp(self) -> float:
        stamp = self._message.timestamp()[1]
        return float(stamp / 1000 if stamp > 0 else 0.0)

    @property
    def key(self) -> bytes | None:
        key: bytes | None = self._message.key()
        return key

    @property
    def value(self) -> bytes | None:
        value: bytes | None = self._message.value()
        return value

    @property
    def headers(self) -> list[tuple[str, bytes | None]]:
        return list(self._message.headers() or ())

    def source_record(self) -> SourceRecord:
        """The record as a dead letter keeps it, read straight from the librdkafka message (a
        third of the cost of going through the properties above, which ingest paid per event)."""
        message = self._message
        stamp = message.timestamp()[1]
        return SourceRecord(topic=message.topic(), partition=message.partition() or 0,
                            offset=message.offset() or 0, timestamp=stamp if stamp > 0 else 0,
                            key=message.key(), value=message.value() or b"",
                            headers=list(message.headers() or ()))


def batch_messages(settings: Settings, source: TopicSpec) -> int:
    """Messages per read: ``batch_size`` events, or on an internal topic, whose messages are
    batches of up to 2,000 events (512 KiB), one 250th of it: 8 messages, 4 MiB by default."""
    return max(1, settings.batch_size // 250) if source.internal else settings.batch_size


def read_linger(settings: Settings, source: TopicSpec) -> float:
    """How long a read waits for its batch to fill after the first record: ``batch_linger`` on a
    public topic (one event per message); ``hop_linger`` on an internal one split by account,
    whose messages are batches already: a stage writes one per partition, each its own produce
    request, so they arrive a moment apart, and a read that took only what had arrived split
    one upstream batch into several (each with its own handling, produce requests and
    acknowledgement). None on an internal topic of whole batches: each message is one."""
    if not source.internal:
        return settings.batch_linger
    return settings.hop_linger if source.by_account else 0.0


Partitions = Callable[[list[int]], None]
QUEUED_MIN_MESSAGES = 10_000  # librdkafka's default, 100,000, costs about 60 MiB more


def report_commit(error: Any, partitions: list[TopicPartition]) -> None:
    """Log an offset commit the broker refused: its records are read again after a restart."""
    if error is not None:
        log.warning("offset commit failed (%s): %s", error, ", ".join(
            f"{tp.topic}[{tp.partition}]@{tp.offset}" for tp in partitions))


class PendingCommits:
    """Offsets a reader delivered and has not committed yet, by (topic, partition).

    Committed asynchronously at most every ``interval`` seconds (``due``); synchronously for
    partitions handed to another member (``hand_over``) and when the consumer closes
    (``flush``), so the next owner starts where this one got to. Both readers of a stage, the
    input's and the retry topics', keep their offsets here.

    An asynchronous commit may still be on its way when the consumer closes, and librdkafka
    does not promise to finish it: so ``flush`` and ``hand_over`` commit again, and wait for,
    the offsets last sent asynchronously as well as those never sent.
    """

    def __init__(self, consumer: Any, *, interval: float) -> None:
        self._consumer = consumer
        self._interval = interval
        self._offsets: dict[tuple[str, int], int] = {}
        self._sent: dict[tuple[str, int], int] = {}  # last committed asynchronously
        self._next = 0.0

    def add(self, offsets: Sequence[TopicPartition]) -> None:
        self._offsets.update(((tp.topic, tp.partition), tp.offset) for tp in offsets)

    def due(self) -> None:
        if self._offsets and time.monotonic() >= self._next:
            self.now()

    def now(self) -> None:
        """Commit what was delivered at once, asynchronously, whatever the interval."""
        if self._offsets:
            self._next = time.monotonic() + self._interval
            self._sent.update(self._offsets)
            self._consumer.commit(offsets=self._take(None), asynchronous=True)

    def hand_over(self, partitions: Sequence[TopicPartition]) -> None:
        """Commit now what was delivered from ``partitions``, which are leaving this member."""
        handover = self._take_final({(tp.topic, tp.partition) for tp in partitions})
        if handover:
            self._commit_now(handover)

    def forget(self, partitions: Sequence[TopicPartition]) -> None:
        """Drop the offsets of ``partitions`` (lost: another member may own them already)."""
        self._take_final({(tp.topic, tp.partition) for tp in partitions})

    def flush(self) -> None:
        final = self._take_final(None)
        if final:
            self._commit_now(final)

    def _take(self, keys: set[tuple[str, int]] | None) -> list[TopicPartition]:
        picked = [key for key in self._offsets if keys is None or key in keys]
        return [TopicPartition(t, p, self._offsets.pop((t, p))) for t, p in picked]

    def _take_final(self, keys: set[tuple[str, int]] | None) -> list[TopicPartition]:
        """The newest offset of each partition (``keys``, or all), sent or not, now dropped."""
        sent = {key: self._sent.pop(key) for key in list(self._sent)
                if keys is None or key in keys}
        sent.update(((tp.topic, tp.partition), tp.offset) for tp in self._take(keys))
        return [TopicPartition(t, p, offset) for (t, p), offset in sent.items()]

    def _commit_now(self, offsets: list[TopicPartition]) -> None:
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:  # the next owner repeats these records: at-least-once
            topics = sorted({tp.topic for tp in offsets})
            log.warning("could not commit %s before handing it over: %s", ", ".join(topics),
                        exc)


class BatchReader:
    """A librdkafka consumer in its own group that yields micro-batches of events.

    ``on_assign`` and ``on_revoke`` receive partition numbers; they run inside ``next_batch``
    (librdkafka calls them from its poll), before records of a newly assigned partition are
    returned, which is where a stage restores per-partition state. ``hold`` is asked about each
    newly assigned partition; one it holds stays paused (``resume`` leaves it): a drill's
    frozen partition (``tidegate.models.faults.PartitionFreeze``).
    """

    def __init__(self, config: ClientConfig, *, topic: str, group: str,
                 on_assign: Partitions | None = None, on_revoke: Partitions | None = None,
                 hold: Callable[[int], bool] | None = None,
                 prefetch_kbytes: int = 16384, commit_interval: float = 0.5) -> None:
        self._consumer = Consumer({
            **CONSUMER_DEFAULTS, "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            # transactional producers upstream: see only committed batches
            "isolation.level": "read_committed",
            # bound the prefetch queue: librdkafka's defaults are 64 MiB and 100,000 messages
            # (about 70 MiB of bookkeeping for small records on the input topic)
            "queued.max.messages.kbytes": prefetch_kbytes,
            "queued.min.messages": QUEUED_MIN_MESSAGES,
            # a killed worker's partitions move to its replacement after 10 s, not 45
            "session.timeout.ms": 10_000, "heartbeat.interval.ms": 2_000,
            "on_commit": report_commit,
            **config, "group.id": group,
        })
        self._on_assign, self._on_revoke = on_assign, on_revoke
        self._hold = hold
        self._held: set[int] = set()
        self.topic = topic
        self._positions: dict[int, int] = {}
        # the assigned partitions, kept from the rebalance callbacks: asking librdkafka
        # (``assignment()``) is a round trip to its group thread, once per batch
        self._owned: set[int] = set()
        self._paused = False
        self._pending = PendingCommits(self._consumer, interval=commit_interval)
        # held by the executor thread while it polls: a stage stopped mid-read (its task
        # cancelled) closes the consumer only once that poll has returned
        self._polling = threading.Lock()
        self._consumer.subscribe([topic], on_assign=self._assigned, on_revoke=self._revoked,
                                 on_lost=self._lost)

    def _assigned(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self._owned.update(tp.partition for tp in partitions)
        if self._on_assign is not None and partitions:
            self._on_assign([tp.partition for tp in partitions])
        hold = self._hold
        held = [tp for tp in partitions if hold is not None and hold(tp.partition)]
        if held:
            # assigned here (incrementally: the group is cooperative-sticky) rather than by
            # confluent-kafka after the callback, so the pause precedes any fetch
            consumer.incremental_assign(partitions)
            consumer.pause(held)
            self._held.update(tp.partition for tp in held)

    def _revoked(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        self._pending.hand_over(partitions)  # the next owner starts where this one got to
        self._lost(_consumer, partitions)

    def _lost(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._owned.discard(tp.partition)
            self._held.discard(tp.partition)
            self._positions.pop(tp.partition, None)
        self._pending.forget(partitions)
        if self._on_revoke is not None and partitions:
            self._on_revoke([tp.partition for tp in partitions])

    async def next_batch(self, size: int, within: float, linger: float = 0.0
                         ) -> list[ReaderEvent]:
        """Up to ``size`` records: waits at most ``within`` seconds for the first, then at most
        ``linger`` seconds for the batch to fill.

        (librdkafka's ``consume(size, timeout)`` waits out the whole timeout unless ``size``
        records arrive, so a single call made every hop of a lightly loaded pipeline wait the
        full ``within``. With no linger at all, a stage loops on tiny batches and the broker
        spends more per event on the requests than the stages on the events.)
        """
        loop = asyncio.get_running_loop()
        messages = await loop.run_in_executor(None, self._take, size, within, linger)
        if self._held:  # fetched before the pause: a held partition's records wait in Kafka
            messages = [m for m in messages if m.partition() not in self._held]
        if not messages:
            self._pending.due()  # idle: what was delivered gets committed all the same
        events = []
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    raise RuntimeError(f"reading {self.topic}: {error.str()}")
                continue
            events.append(ReaderEvent(message))
        return events

    def _take(self, size: int, within: float, linger: float) -> list[Any]:
        with self._polling:
            first = self._consumer.poll(within)
            if first is None:
                return []
            return [first, *self._consumer.consume(size - 1, linger)] if size > 1 else [first]

    def next_offsets(self, events: Sequence[ReaderEvent]) -> list[TopicPartition]:
        """The offsets to commit once ``events`` are delivered: one past each partition's last."""
        ends: dict[int, int] = {}
        for event in events:
            message = event.message
            ends[message.partition] = max(ends.get(message.partition, -1), message.offset)
        return [TopicPartition(self.topic, p, o + 1) for p, o in ends.items()]

    def delivered(self, offsets: Sequence[TopicPartition]) -> None:
        """Record how far the stage got, for ``lag``."""
        for tp in offsets:
            self._positions[tp.partition] = tp.offset - 1

    def commit(self, events: Sequence[ReaderEvent]) -> None:
        """Commit past every event of a delivered batch: asynchronously, at most once per
        ``commit_interval`` (and at once for partitions being revoked, and on close).

        A commit per batch made offset commits about a sixth of the broker's work; a crash now
        repeats at most the last interval's events, which at-least-once allows.
        """
        self.commit_offsets(self.next_offsets(events))

    def commit_offsets(self, offsets: Sequence[TopicPartition], *, at_once: bool = False
                       ) -> None:
        """Commit these delivered offsets: at the next interval, or ``at_once``."""
        if offsets:
            # a partition revoked while the batch was read now belongs to another reader:
            # committing its offset could move that reader's position backwards
            offsets = [tp for tp in offsets if tp.partition in self._owned]
            self.delivered(offsets)
            self._pending.add(offsets)
        if at_once:
            self._pending.now()
        else:
            self._pending.due()

    def group_metadata(self) -> Any:
        """The consumer group's metadata, for committing offsets inside a transaction."""
        return self._consumer.consumer_group_metadata()

    def pause(self) -> None:
        """Stop fetching from every assigned partition, newly assigned ones included.

        Pausing commits what was delivered at once rather than at the next interval: a paused
        stage (a poison storm's guard, an operator) may be killed before it reads again, and
        its successor would then repeat the batches of the last interval, the storm's among
        them, enough to trip the guard again after the operator resumed it.
        """
        assigned = self._consumer.assignment()
        if assigned:
            self._consumer.pause(assigned)
        if not self._paused:
            self._pending.now()
        self._paused = True

    def resume(self) -> None:
        """Fetch again from every assigned partition; nothing to do unless paused."""
        if self._paused:
            assigned = [tp for tp in self._consumer.assignment() if tp.partition not in self._held]
            if assigned:
                self._consumer.resume(assigned)
            self._paused = False

    def lag(self) -> int:
        """Records waiting on the assigned partitions, from the last fetch's high watermarks."""
        total = 0
        for tp in self._consumer.assignment():
            _, high = self._consumer.get_watermark_offsets(tp, cached=True)
            done = self._positions.get(tp.partition)
            if high >= 0 and done is not None:
                total += max(0, high - done - 1)
        return total

    def close(self) -> Any:
        """Commit what was delivered, waiting for the broker, then leave the group."""
        with self._polling:
            self._pending.flush()
            return self._consumer.close()

"""``BatchReader`` on the real broker: batch timing, backlog batches, deferred commits, hand-over.

Every test runs its scenario in one event loop (``next_batch`` reads in the loop's executor),
on its own topic and consumer group, and bounds every wait with a deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from tests.conftest import Cluster
from tidegate.kafka.reader import BatchReader, ReaderEvent
from tidegate.settings import ClientConfig

pytestmark = pytest.mark.integration

DEADLINE = 60.0  # seconds any one wait in a scenario may take before the test fails
Record = tuple[int, int]  # (partition, offset)


# --- helpers -------------------------------------------------------------------------------


def _config(kafka: Cluster) -> ClientConfig:
    return {"bootstrap.servers": kafka.bootstrap}


def _topic(kafka: Cluster, name: str, *, partitions: int = 1, records: int = 0
           ) -> tuple[ClientConfig, str, str]:
    """The client config, a new topic ``name`` (``records`` on partition 0) and a group name."""
    config = _config(kafka)
    _create_topic(config, name, partitions)
    if records:
        _produce(config, name, records)
    return config, name, name + "-group"


def _create_topic(config: ClientConfig, name: str, partitions: int) -> None:
    """Create ``name`` and wait until its partitions show in the metadata."""
    admin = AdminClient(config)
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)],
                        operation_timeout=30)[name].result()
    deadline = time.monotonic() + DEADLINE
    while True:
        topic = admin.list_topics(name, timeout=10).topics.get(name)
        if topic is not None and topic.error is None and len(topic.partitions) == partitions:
            return
        assert time.monotonic() < deadline, f"topic {name} never showed {partitions} partitions"
        time.sleep(0.1)


def _produce(config: ClientConfig, topic: str, count: int, *, partition: int = 0,
             start: int = 0) -> None:
    """``count`` small records on one partition, all acknowledged before returning."""
    failures: list[str] = []

    def acknowledged(error: object, _message: object) -> None:
        if error is not None:
            failures.append(str(error))

    producer = Producer({**config, "linger.ms": 5})
    for n in range(start, start + count):
        producer.produce(topic, value=b"v%d" % n, partition=partition, on_delivery=acknowledged)
        producer.poll(0)
    assert producer.flush(30) == 0, f"{topic}: records still unacknowledged after 30 s"
    assert not failures, f"{topic}: produce failed: {failures[:3]}"


def _committed(config: ClientConfig, group: str, topic: str,
               partitions: Iterable[int]) -> dict[int, int]:
    """The group's committed offsets (negative: none), read by a consumer outside the group."""
    outsider = Consumer({**config, "group.id": group, "enable.auto.commit": False})
    try:
        offsets = outsider.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
    finally:
        outsider.close()
    return {tp.partition: tp.offset for tp in offsets}


def _wait_committed(config: ClientConfig, group: str, topic: str, want: dict[int, int],
                    timeout: float = 10.0) -> None:
    """Poll the committed offsets until they equal ``want`` (commits are asynchronous)."""
    deadline = time.monotonic() + timeout
    while True:
        seen = _committed(config, group, topic, want)
        if seen == want:
            return
        assert time.monotonic() < deadline, f"committed offsets {seen}, expected {want}"
        time.sleep(0.2)


def _records(events: Iterable[ReaderEvent]) -> list[Record]:
    return [(e.message.partition, e.message.offset) for e in events]


def _ends(events: Iterable[ReaderEvent]) -> dict[int, int]:
    """Per partition, the offset to commit after ``events``: one past the last."""
    ends: dict[int, int] = {}
    for partition, offset in _records(events):
        ends[partition] = max(ends.get(partition, 0), offset + 1)
    return ends


async def _first_batch(reader: BatchReader, size: int, linger: float = 0.5
                       ) -> list[ReaderEvent]:
    """The first non-empty batch (the first calls may be spent joining the group)."""
    deadline = time.monotonic() + DEADLINE
    while True:
        batch = await reader.next_batch(size, 1.0, linger)
        if batch:
            return batch
        assert time.monotonic() < deadline, f"no record from {reader.topic} in {DEADLINE} s"


async def _read(reader: BatchReader, count: int, size: int,
                on_batch: Callable[[list[ReaderEvent]], None] | None = None
                ) -> list[ReaderEvent]:
    """Batches until ``count`` records arrived (``on_batch`` sees each non-empty batch)."""
    events: list[ReaderEvent] = []
    deadline = time.monotonic() + DEADLINE
    while len(events) < count:
        assert time.monotonic() < deadline, (
            f"{len(events)} of {count} records from {reader.topic} in {DEADLINE} s")
        batch = await reader.next_batch(size, 0.5, 0.1)
        if batch:
            events.extend(batch)
            if on_batch is not None:
                on_batch(batch)
    return events


async def _timed(call: Awaitable[list[ReaderEvent]]) -> tuple[list[ReaderEvent], float]:
    began = time.monotonic()
    batch = await call
    return batch, time.monotonic() - began


# --- next_batch: how long it waits ---------------------------------------------------------


def test_next_batch_waits_within_for_the_first_record_then_only_linger(
        kafka: Cluster, prefix: str) -> None:
    config, topic, group = _topic(kafka, prefix + "timing", records=1)

    async def scenario() -> tuple[list[ReaderEvent], float, list[ReaderEvent], float]:
        reader = BatchReader(config, topic=topic, group=group)
        try:
            await _first_batch(reader, 500)  # joined, and the fetcher has caught up
            _produce(config, topic, 1, start=1)
            waiting = await _timed(reader.next_batch(500, 2.0, 0.05))
            empty = await _timed(reader.next_batch(500, 2.0, 0.05))
            return *waiting, *empty
        finally:
            reader.close()

    waiting, waited, empty, idled = asyncio.run(scenario())
    assert _records(waiting) == [(0, 1)]
    assert waiting[0].message.value == b"v1"
    # the old behaviour waited the whole ``within`` (2 s) even with the record at hand
    assert waited < 1.0, f"one waiting record took {waited:.2f} s (within 2.0, linger 0.05)"
    assert empty == []
    assert idled >= 2.0 * 0.8, f"an empty topic returned after {idled:.2f} s, within is 2.0"
    assert idled < 20.0


def test_backlog_fills_a_whole_batch_at_once(kafka: Cluster, prefix: str) -> None:
    config, topic, group = _topic(kafka, prefix + "backlog", records=2000)

    async def scenario() -> list[list[ReaderEvent]]:
        reader = BatchReader(config, topic=topic, group=group)
        try:
            batches = [await _first_batch(reader, 500)]
            batches.append(await reader.next_batch(500, 5.0, 0.5))
            return batches
        finally:
            reader.close()

    first, second = asyncio.run(scenario())
    assert len(first) == 500, f"first read of a 2,000-record backlog gave {len(first)} records"
    assert len(second) == 500, f"second read of the backlog gave {len(second)} records"
    assert _records(first + second) == [(0, n) for n in range(1000)]


# --- commits -------------------------------------------------------------------------------


def test_commits_are_deferred_by_the_interval_and_flushed_on_close(
        kafka: Cluster, prefix: str) -> None:
    config, topic, group = _topic(kafka, prefix + "deferred", records=30)

    async def scenario() -> None:
        reader = BatchReader(config, topic=topic, group=group, commit_interval=30)
        try:
            first = await _first_batch(reader, 10)
            assert len(first) == 10
            reader.commit(first)  # the very first commit goes out at once
            _wait_committed(config, group, topic, {0: 10})
            second = await reader.next_batch(10, 5.0, 0.5)
            assert _records(second) == [(0, n) for n in range(10, 20)]
            reader.commit(second)  # within the interval: deferred
            for _ in range(3):  # idle reads commit only what is due
                await reader.next_batch(10, 0.1, 0.0)
            await asyncio.sleep(1.0)
            assert _committed(config, group, topic, [0]) == {0: 10}, (
                "a commit inside commit_interval went out at once")
        finally:
            reader.close()  # commits the deferred batch, synchronously
        assert _committed(config, group, topic, [0]) == {0: 20}, (
            "close() did not commit the delivered batch")

    asyncio.run(scenario())


def test_pausing_commits_the_delivered_batches_at_once(kafka: Cluster, prefix: str) -> None:
    config, topic, group = _topic(kafka, prefix + "paused", records=30)

    async def scenario() -> None:
        reader = BatchReader(config, topic=topic, group=group, commit_interval=30)
        try:
            first = await _first_batch(reader, 10)
            reader.commit(first)  # at once: the first
            _wait_committed(config, group, topic, {0: 10})
            second = await reader.next_batch(10, 5.0, 0.5)
            reader.commit(second)  # deferred by the interval ...
            await asyncio.sleep(1.0)
            assert _committed(config, group, topic, [0]) == {0: 10}
            reader.pause()  # ... until the stage pauses
            _wait_committed(config, group, topic, {0: 20})
            reader.pause()  # still paused: nothing new to commit, nothing sent
            assert await reader.next_batch(10, 0.5, 0.0) == []
        finally:
            reader.close()

    asyncio.run(scenario())


def test_interval_zero_commits_every_delivered_batch(kafka: Cluster, prefix: str) -> None:
    config, topic, group = _topic(kafka, prefix + "eager", records=30)

    async def scenario() -> None:
        reader = BatchReader(config, topic=topic, group=group, commit_interval=0)
        try:
            batch = await _first_batch(reader, 10)
            for end in (10, 20, 30):
                assert _ends(batch) == {0: end}
                reader.commit(batch)
                _wait_committed(config, group, topic, {0: end})
                if end < 30:
                    batch = await reader.next_batch(10, 5.0, 0.5)
        finally:
            reader.close()

    asyncio.run(scenario())


# --- hand-over on revoke -------------------------------------------------------------------


class Assignment:
    """A reader's partitions, as its ``on_assign``/``on_revoke`` callbacks report them."""

    def __init__(self) -> None:
        self.current: set[int] = set()
        self.revoked: list[int] = []

    def assign(self, partitions: list[int]) -> None:
        self.current.update(partitions)

    def revoke(self, partitions: list[int]) -> None:
        self.current.difference_update(partitions)
        self.revoked.extend(partitions)


async def _both(a: BatchReader, b: BatchReader, until: Callable[[], bool], what: str,
                into: tuple[list[ReaderEvent], list[ReaderEvent]]) -> None:
    """Both readers keep reading (their rebalance callbacks run inside ``next_batch``)."""
    deadline = time.monotonic() + DEADLINE
    while not until():
        assert time.monotonic() < deadline, f"{what}: not within {DEADLINE} s"
        got_a, got_b = await asyncio.gather(a.next_batch(50, 0.2, 0.05),
                                            b.next_batch(50, 0.2, 0.05))
        into[0].extend(got_a)
        into[1].extend(got_b)


def _commit_all(reader: BatchReader, committed: list[ReaderEvent]
                ) -> Callable[[Sequence[ReaderEvent]], None]:
    def deliver(batch: Sequence[ReaderEvent]) -> None:
        reader.commit(batch)
        committed.extend(batch)
    return deliver


def test_revoked_partitions_are_handed_over_at_the_delivered_offsets(
        kafka: Cluster, prefix: str) -> None:
    config, topic, group = _topic(kafka, prefix + "handover", partitions=2)
    per_partition = 50
    for partition in (0, 1):
        _produce(config, topic, per_partition, partition=partition)

    async def scenario() -> tuple[list[ReaderEvent], list[ReaderEvent], list[ReaderEvent],
                                  set[int], dict[int, int]]:
        seen_a, seen_b = Assignment(), Assignment()
        a = BatchReader(config, topic=topic, group=group, commit_interval=30,
                        on_assign=seen_a.assign, on_revoke=seen_a.revoke)
        b: BatchReader | None = None
        committed_a: list[ReaderEvent] = []
        received_a: list[ReaderEvent] = []
        received_b: list[ReaderEvent] = []
        try:
            # A alone: reads and delivers everything there is; only its first commit goes out
            received_a += await _read(a, 2 * per_partition, 10,
                                      on_batch=_commit_all(a, committed_a))
            assert seen_a.current == {0, 1}
            delivered = _ends(committed_a)
            assert delivered == {0: per_partition, 1: per_partition}
            assert _committed(config, group, topic, [0, 1]) != delivered, (
                "commit_interval=30 should have deferred all but the first commit")

            b = BatchReader(config, topic=topic, group=group, commit_interval=30,
                            on_assign=seen_b.assign, on_revoke=seen_b.revoke)
            await _both(a, b, lambda: bool(seen_b.current) and bool(seen_a.revoked)
                        and seen_a.current | seen_b.current == {0, 1},
                        "B joining the group and taking over a partition of A",
                        (received_a, received_b))
            moved = set(seen_b.current)
            assert not seen_a.current & moved, f"A {seen_a.current} and B {moved} overlap"
            at_handover = _committed(config, group, topic, moved)

            # new records after the hand-over: each reader gets its partitions' share
            for partition in (0, 1):
                _produce(config, topic, per_partition, partition=partition,
                         start=per_partition)
            await _both(a, b, lambda: len({*_records(received_a), *_records(received_b)})
                        >= 4 * per_partition,
                        "every record reaching A or B", (received_a, received_b))
            return committed_a, received_a, received_b, moved, at_handover
        finally:
            a.close()
            if b is not None:
                b.close()

    committed_a, received_a, received_b, moved, at_handover = asyncio.run(scenario())
    assert moved, "B was assigned nothing"
    assert at_handover == {p: per_partition for p in moved}, (
        f"A did not commit what it had delivered on revoked partitions {sorted(moved)}: "
        f"committed {at_handover}")
    repeated = set(_records(received_b)) & set(_records(committed_a))
    assert not repeated, f"B received records A had committed: {sorted(repeated)[:10]}"
    for partition in moved:
        offsets = [o for p, o in _records(received_b) if p == partition]
        assert offsets and min(offsets) == per_partition, (
            f"B started partition {partition} at {min(offsets, default=None)}, "
            f"A had delivered up to {per_partition}")
    everything = {(p, o) for p in (0, 1) for o in range(2 * per_partition)}
    assert {*_records(received_a), *_records(received_b)} == everything


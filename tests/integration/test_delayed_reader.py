"""``DelayedReader`` on the real broker: records no earlier than due, without holding up others.

The reader's clock is the test's, so nothing waits for a real due time; every loop is bounded
by a deadline.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from tests.conftest import Cluster
from tests.integration.test_reader import _create_topic
from tidegate.kafka.delayed import DelayedReader
from tidegate.kafka.reader import ReaderEvent
from tidegate.redelivery import DUE_HEADER

pytestmark = pytest.mark.integration

DEADLINE = 60.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _produce(bootstrap: str, topic: str, records: list[tuple[int, int]]) -> None:
    """(partition, due in seconds) per record; the value says which record it is."""
    producer = Producer({"bootstrap.servers": bootstrap})
    for n, (partition, due) in enumerate(records):
        producer.produce(topic, value=f"r{n}".encode(), partition=partition,
                         headers=[(DUE_HEADER, str(due * 1000).encode())])
    assert producer.flush(30) == 0


async def _read_until(reader: DelayedReader, want: int) -> list[ReaderEvent]:
    got: list[ReaderEvent] = []
    deadline = time.monotonic() + DEADLINE
    while len(got) < want:
        assert time.monotonic() < deadline, f"only {len(got)} of {want} records came"
        got += await reader.next_due(10)
        await asyncio.sleep(0.05)  # the test's pace, not the reader's
    return got


async def _settle(reader: DelayedReader) -> list[ReaderEvent]:
    """What the reader hands out over a few more turns (nothing, if it holds correctly)."""
    extra: list[ReaderEvent] = []
    for _ in range(20):
        extra += await reader.next_due(10)
        await asyncio.sleep(0.05)
    return extra


def test_a_record_not_due_holds_its_partition_only_and_comes_back_when_due(
        kafka: Cluster) -> None:
    topic = f"delayed-{uuid.uuid4().hex[:8]}"
    _create_topic({"bootstrap.servers": kafka.bootstrap}, topic, 2)
    # partition 0: two due, one due at t=2000 s, one due again (behind the held one);
    # partition 1: all due
    _produce(kafka.bootstrap, topic, [(0, 0), (0, 0), (0, 2000), (0, 0), (1, 0), (1, 500)])
    clock = Clock(1000.0)
    group = topic + "-group"
    reader = DelayedReader({"bootstrap.servers": kafka.bootstrap}, topics=[topic], group=group,
                           clock=clock, commit_interval=0.0)

    async def scenario() -> tuple[list[bytes | None], list[bytes | None], list[bytes | None]]:
        try:
            first = await _read_until(reader, 4)
            held = await _settle(reader)
            assert (topic, 0) in reader.waiting()
            reader.commit(first)
            clock.now = 2000.0
            later = await _read_until(reader, 2)
            reader.commit(later)
            return ([e.value for e in first], [e.value for e in held],
                    [e.value for e in later])
        finally:
            reader.close()

    first, held, later = asyncio.run(scenario())
    assert sorted(v or b"" for v in first) == [b"r0", b"r1", b"r4", b"r5"]
    assert held == [], "a record came before its due time or behind one that was not due"
    assert later == [b"r2", b"r3"], "the held records came back out of order or not at all"
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": group})
    try:
        committed = consumer.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)],
                                       timeout=10)
    finally:
        consumer.close()
    assert [tp.offset for tp in committed] == [4, 2]

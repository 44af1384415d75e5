"""Backpressure: a stage pauses while the stage after it lags too far behind.

The lag of the next stage is its consumer group's distance to the end of this stage's output
topic (high watermark minus committed offset, summed over partitions), read by ``LagProbe``.
Above ``high`` the stage pauses its input; under ``low`` it resumes. Between them nothing
changes, so the stage does not flap.

Example::

    valve = LagValve(high=100, low=20)
    valve.update(150)    # True: pause
    valve.update(50)     # True: still paused (hysteresis)
    valve.update(10)     # False: resume

``LagProbe.offsets`` is the same reading per partition (committed and end offsets), which
``tidegate up`` uses to notice one partition that stopped moving.
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import OFFSET_END, Consumer, KafkaException, TopicPartition

from tidegate.kafka.clients import CONSUMER_DEFAULTS
from tidegate.settings import ClientConfig

__all__ = ["LagProbe", "LagValve", "PartitionOffsets"]


class LagValve:
    """Closed (paused) above ``high``, open again under ``low``."""

    def __init__(self, *, high: int, low: int) -> None:
        if not 0 <= low < high:
            raise ValueError("backpressure needs 0 <= low < high")
        self.high, self.low = high, low
        self.paused = False
        self.lag = 0

    def update(self, lag: int) -> bool:
        """Take the newest lag; return whether the stage should be paused."""
        self.lag = lag
        if lag > self.high:
            self.paused = True
        elif lag < self.low:
            self.paused = False
        return self.paused


@dataclass(frozen=True)
class PartitionOffsets:
    """One partition as a group sees it: its committed offset (-1: none yet) and end offset.

    >>> PartitionOffsets(committed=-1, end=40).lag, PartitionOffsets(committed=30, end=40).lag
    (40, 10)
    """

    committed: int
    end: int

    @property
    def lag(self) -> int:
        return max(0, self.end - max(self.committed, 0))


class LagProbe:
    """Reads a consumer group's lag on one topic (blocking: call it from a worker thread).

    A probe is two requests, sent together: the group's committed offsets (OffsetFetch) and
    the end offsets of every partition (one ListOffsets per leader). Both go through a consumer
    that carries the group's id but never joins the group. Not the admin client: its
    ListConsumerGroupOffsets aborts the whole process on an internal assertion when a request
    to the group coordinator times out across a broker restart (confluentinc/librdkafka#4605,
    open), which took ``tidegate up`` and every stage with it. The partitions are looked up
    once and again after a failed probe.
    """

    def __init__(self, config: ClientConfig, *, group: str, topic: str,
                 timeout: float = 5.0) -> None:
        self.group, self.topic = group, topic
        self._consumer = Consumer({**CONSUMER_DEFAULTS, **config, "group.id": group})
        self._timeout = timeout
        self._partitions: list[int] | None = None

    def _topic_partitions(self) -> list[int]:
        if self._partitions is None:
            metadata = self._consumer.list_topics(self.topic, timeout=self._timeout)
            found = metadata.topics[self.topic]
            if found.error is not None:
                raise KafkaException(found.error)
            self._partitions = sorted(found.partitions)
        return self._partitions

    def lag(self) -> int | None:
        """Records the group has yet to process, or None when it cannot be read right now."""
        offsets = self.offsets()
        return None if offsets is None else sum(o.lag for o in offsets.values())

    def offsets(self) -> dict[int, PartitionOffsets] | None:
        """Committed and end offset of every partition, or None when they cannot be read now."""
        try:
            partitions = self._topic_partitions()
            committed = self._consumer.committed(
                [TopicPartition(self.topic, p) for p in partitions], timeout=self._timeout)
            # a timestamp of OFFSET_END (-1) asks ListOffsets for the latest offset
            ends = self._consumer.offsets_for_times(
                [TopicPartition(self.topic, p, OFFSET_END) for p in partitions],
                timeout=self._timeout)
            for tp in (*committed, *ends):
                if tp.error is not None:
                    raise KafkaException(tp.error)
            done = {tp.partition: tp.offset for tp in committed}
            # a partition the group never committed reads as OFFSET_INVALID (-1001)
            return {tp.partition: PartitionOffsets(committed=max(done.get(tp.partition, -1), -1),
                                                   end=tp.offset)
                    for tp in ends}
        except (KafkaException, KeyError):
            self._partitions = None  # the topic may have changed: look it up again
            return None

    def close(self) -> None:
        self._consumer.close()

"""Backpressure: a stage pauses while the stage after it lags too far behind.

The lag of the next stage is its consumer group's distance to the end of this stage's output
topic (high watermark minus committed offset, summed over partitions), read with the admin API.
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

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

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
    the end offsets of every partition (one ListOffsets). The partitions are looked up once and
    again after a failed probe.
    """

    def __init__(self, config: ClientConfig, *, group: str, topic: str,
                 timeout: float = 5.0) -> None:
        self.group, self.topic = group, topic
        self._admin = AdminClient({"log_level": 3, **config})
        self._timeout = timeout
        self._partitions: list[int] | None = None

    def _topic_partitions(self) -> list[int]:
        if self._partitions is None:
            metadata = self._admin.list_topics(self.topic, timeout=self._timeout)
            self._partitions = sorted(metadata.topics[self.topic].partitions)
        return self._partitions

    def lag(self) -> int | None:
        """Records the group has yet to process, or None when it cannot be read right now."""
        offsets = self.offsets()
        return None if offsets is None else sum(o.lag for o in offsets.values())

    def offsets(self) -> dict[int, PartitionOffsets] | None:
        """Committed and end offset of every partition, or None when they cannot be read now."""
        try:
            partitions = [TopicPartition(self.topic, p) for p in self._topic_partitions()]
            committed = self._admin.list_consumer_group_offsets(
                [ConsumerGroupTopicPartitions(self.group, partitions)],
                request_timeout=self._timeout)[self.group]
            latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
            ends = self._admin.list_offsets({tp: latest for tp in partitions},
                                            request_timeout=self._timeout)
            done = {tp.partition: tp.offset for tp in committed.result().topic_partitions or []}
            # a partition the group never committed reads as OFFSET_INVALID (-1001)
            return {tp.partition: PartitionOffsets(committed=max(done.get(tp.partition, -1), -1),
                                                   end=end.result().offset)
                    for tp, end in ends.items()}
        except (KafkaException, KeyError):
            self._partitions = None  # the topic may have changed: look it up again
            return None

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
"""

from __future__ import annotations

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from tidegate.kafka.clients import CONSUMER_DEFAULTS
from tidegate.settings import ClientConfig

__all__ = ["LagProbe", "LagValve"]


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


class LagProbe:
    """Reads a consumer group's lag on one topic (blocking: call it from a worker thread)."""

    def __init__(self, config: ClientConfig, *, group: str, topic: str) -> None:
        self.group, self.topic = group, topic
        self._admin = AdminClient({"log_level": 3, **config})
        self._consumer = Consumer({**CONSUMER_DEFAULTS, **config,
                                   "group.id": f"{group}.lag-probe"})

    def lag(self) -> int | None:
        """Records the group has yet to process, or None when it cannot be read right now."""
        try:
            partitions = self._consumer.list_topics(self.topic, timeout=5).topics[
                self.topic].partitions
            request = [ConsumerGroupTopicPartitions(
                self.group, [TopicPartition(self.topic, p) for p in partitions])]
            result = self._admin.list_consumer_group_offsets(request)[self.group].result()
            total = 0
            for tp in result.topic_partitions or []:
                _, high = self._consumer.get_watermark_offsets(
                    TopicPartition(self.topic, tp.partition), timeout=5)
                committed = tp.offset if tp.offset >= 0 else 0
                total += max(0, high - committed)
            return total
        except (KafkaException, KeyError):
            return None

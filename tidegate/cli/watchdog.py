"""Stall detection: a stage that stops sending health, or has input lag and makes no progress.

``StallDetector`` is the pure rule; ``HealthWatch`` follows the health topic in a thread and
feeds it. ``tidegate up`` asks for stalled stages and has the supervisor restart them.

Example::

    detector = StallDetector(stall_after=30.0)
    detector.on_health(event, now=time.monotonic())
    detector.stalled(now=time.monotonic())        # ['feature'] when feature went quiet
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_END, Consumer, TopicPartition

from tidegate.codec import Codec
from tidegate.errors import CodecError
from tidegate.kafka.clients import CONSUMER_DEFAULTS
from tidegate.settings import ClientConfig

__all__ = ["HealthWatch", "StallDetector"]

log = logging.getLogger(__name__)


@dataclass
class _Seen:
    health: float
    progress: float


class StallDetector:
    """Which stages sent no health, or made no progress with input waiting, for too long."""

    def __init__(self, *, stall_after: float) -> None:
        self.stall_after = stall_after
        self._stages: dict[str, _Seen] = {}

    def on_health(self, event: Mapping[str, Any], *, now: float) -> None:
        stage = str(event["stage"])
        seen = self._stages.setdefault(stage, _Seen(health=now, progress=now))
        seen.health = now
        idle = int(event.get("lag", 0)) > 0 and int(event.get("records_in", 0)) == 0
        if not idle or bool(event.get("paused")):  # a paused stage is waiting on purpose
            seen.progress = now

    def stalled(self, *, now: float) -> list[str]:
        return sorted(stage for stage, seen in self._stages.items()
                      if now - min(seen.health, seen.progress) > self.stall_after)

    def expect(self, stages: list[str], *, now: float) -> None:
        """Watch ``stages`` from ``now``: one that never reports is stalled after the limit."""
        for stage in stages:
            self._stages.setdefault(stage, _Seen(health=now, progress=now))

    def forget(self, stage: str, *, now: float) -> None:
        """Start the clock again for ``stage`` (after it was restarted)."""
        self._stages[stage] = _Seen(health=now, progress=now)


class HealthWatch(threading.Thread):
    """Follows the health topic from its end and feeds a StallDetector."""

    def __init__(self, config: ClientConfig, topic: str, detector: StallDetector) -> None:
        super().__init__(daemon=True, name="health-watch")
        self.detector = detector
        self.lock = threading.Lock()
        self._stopping = threading.Event()
        self._consumer = Consumer({**CONSUMER_DEFAULTS, **config,
                                   "group.id": f"{topic}.watchdog"})
        # assigned, not subscribed: no group join to wait for before the first event
        partitions = self._consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self._consumer.assign([TopicPartition(topic, p, OFFSET_END) for p in partitions])
        self._codec = Codec()

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                for message in self._consumer.consume(num_messages=100, timeout=0.5):
                    if message.error() is not None:
                        continue
                    try:
                        event = self._codec.decode(message.value() or b"")
                    except CodecError:
                        continue
                    with self.lock:
                        self.detector.on_health(event, now=time.monotonic())
        finally:
            self._consumer.close()

    def stalled(self) -> list[str]:
        with self.lock:
            return self.detector.stalled(now=time.monotonic())

    def forget(self, stage: str) -> None:
        with self.lock:
            self.detector.forget(stage, now=time.monotonic())

    def stop(self) -> None:
        self._stopping.set()

"""Stall detection: a stage that stops sending health, or has input lag and makes no progress.

``StallDetector`` is the pure rule; ``HealthWatch`` follows the health topic in a thread and
feeds it. ``tidegate up`` asks for stalled stages and has the supervisor restart them. Given
input probes (``LagProbe``) and a ``PartitionStallDetector``, the same thread also reads every
probed stage's committed and end offsets every ``probe_every`` seconds, for stalled partitions;
``AlertSender`` publishes what it finds on the alerts topic, as monitoring publishes its own.

Example::

    detector = StallDetector(stall_after=30.0)
    detector.on_health(event, now=time.monotonic())
    detector.stalled(now=time.monotonic())        # ['feature'] when feature went quiet
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from tidegate.cli.partitions import PartitionStall, PartitionStallDetector
from tidegate.codec import Codec, Encoder
from tidegate.errors import CodecError, TidegateError
from tidegate.kafka.clients import CONSUMER_DEFAULTS, PRODUCER_DEFAULTS
from tidegate.monitoring.alerting import Alert
from tidegate.runtime.backpressure import LagProbe
from tidegate.settings import ClientConfig

__all__ = ["AlertSender", "HealthWatch", "StallDetector"]

log = logging.getLogger(__name__)


@dataclass
class _Seen:
    health: float
    progress: float
    reported: bool = False  # since it was expected or restarted
    instance: str | None = None  # the process that reported last


class StallDetector:
    """Which stages sent no health, or made no progress with input waiting, for too long.

    A stage that has not reported since it was started gets ``start_grace`` seconds if that
    is longer: a process booting (imports, models, its group join) is not a stalled one, and
    with a short ``stall_after`` it would otherwise be restarted before it ever reported.
    """

    def __init__(self, *, stall_after: float, start_grace: float = 0.0) -> None:
        self.stall_after = stall_after
        self.start_grace = start_grace
        self._stages: dict[str, _Seen] = {}
        self._replaced: dict[str, str] = {}  # stage -> the instance its last restart replaced

    def on_health(self, event: Mapping[str, Any], *, now: float) -> None:
        stage, instance = str(event["stage"]), str(event.get("instance", ""))
        if self._replaced.get(stage) == instance:
            return  # the old process, draining after SIGTERM: says nothing of the new one
        seen = self._stages.setdefault(stage, _Seen(health=now, progress=now))
        seen.health, seen.reported, seen.instance = now, True, instance
        idle = int(event.get("lag", 0)) > 0 and int(event.get("records_in", 0)) == 0
        if not idle or bool(event.get("paused")):  # a paused stage is waiting on purpose
            seen.progress = now

    def stalled(self, *, now: float) -> list[str]:
        booting = max(self.stall_after, self.start_grace)
        return sorted(stage for stage, seen in self._stages.items()
                      if now - min(seen.health, seen.progress)
                      > (self.stall_after if seen.reported else booting))

    def silent_for(self, stage: str, *, now: float) -> float:
        """Seconds since ``stage`` last reported (or was expected, or restarted)."""
        seen = self._stages.get(stage)
        return now - seen.health if seen is not None else 0.0

    def expect(self, stages: list[str], *, now: float) -> None:
        """Watch ``stages`` from ``now``: one that never reports is stalled after the limit."""
        for stage in stages:
            self._stages.setdefault(stage, _Seen(health=now, progress=now))

    def forget(self, stage: str, *, now: float) -> None:
        """Start the clock again for ``stage`` (after it was restarted)."""
        replaced = self._stages.get(stage)
        if replaced is not None and replaced.instance is not None:
            self._replaced[stage] = replaced.instance
        self._stages[stage] = _Seen(health=now, progress=now)


class HealthWatch(threading.Thread):
    """Follows the health topic from its end and feeds a StallDetector; probes input offsets
    for a PartitionStallDetector when given ``probes`` (stage name and its input's probe)."""

    def __init__(self, config: ClientConfig, topic: str, detector: StallDetector, *,
                 partitions: PartitionStallDetector | None = None,
                 probes: Sequence[tuple[str, LagProbe]] = (), probe_every: float = 5.0) -> None:
        super().__init__(daemon=True, name="health-watch")
        self.detector = detector
        self.partitions = partitions
        self._probes = list(probes) if partitions is not None else []
        self._probe_every = probe_every
        self._next_probe = 0.0
        self.lock = threading.Lock()
        self._stopping = threading.Event()
        self._consumer = Consumer({**CONSUMER_DEFAULTS, **config,
                                   "group.id": f"{topic}.watchdog"})
        # assigned, not subscribed: no group join to wait for before the first event
        health = self._consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self._consumer.assign([TopicPartition(topic, p, OFFSET_END) for p in health])
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
                        if self.partitions is not None:
                            self.partitions.on_health(event, now=time.monotonic())
                if self._probes and time.monotonic() >= self._next_probe:
                    self._next_probe = time.monotonic() + self._probe_every
                    self._probe()
        finally:
            self._consumer.close()
            for _, probe in self._probes:
                probe.close()

    def _probe(self) -> None:
        """One OffsetFetch and one ListOffsets per probed stage; a failed probe is no news."""
        assert self.partitions is not None
        for stage, probe in self._probes:
            offsets = probe.offsets()  # blocking, outside the lock: up's loop keeps running
            if offsets is None:
                log.info("could not read the input offsets of %s", stage)
                continue
            with self.lock:
                self.partitions.observe(stage, probe.topic, offsets, now=time.monotonic())

    def stalled(self) -> list[str]:
        with self.lock:
            return self.detector.stalled(now=time.monotonic())

    def silent_for(self, stage: str) -> float:
        with self.lock:
            return self.detector.silent_for(stage, now=time.monotonic())

    def stalled_partitions(self) -> list[PartitionStall]:
        if self.partitions is None:
            return []
        with self.lock:
            return self.partitions.stalled(now=time.monotonic())

    def alert(self, stall: PartitionStall) -> bool:
        """Note ``stall`` as reported; whether it is news (see ``PartitionStallDetector``)."""
        assert self.partitions is not None
        with self.lock:
            return self.partitions.alert(stall)

    def recovered_partitions(self) -> list[PartitionStall]:
        if self.partitions is None:
            return []
        with self.lock:
            return self.partitions.recovered()

    def forget(self, stage: str) -> None:
        """``stage`` is being restarted: both rules start its clock again."""
        with self.lock:
            self.detector.forget(stage, now=time.monotonic())
            if self.partitions is not None:
                self.partitions.forget(stage)

    def stop(self) -> None:
        self._stopping.set()


class AlertSender:
    """Publishes alert records on the alerts topic, one message each, keyed by the alert key.

    The producer and the encoder are made on the first alert, so a watchdog that never alerts
    costs nothing; a failure to publish is logged (the alert's log line and the restart stand).
    """

    def __init__(self, config: ClientConfig, topic: str, *,
                 registry_url: str | None = None) -> None:
        self.topic = topic
        self._config, self._registry_url = config, registry_url
        self._producer: Producer | None = None
        self._encode: Encoder | None = None

    def send(self, alert: Alert) -> None:
        try:
            if self._producer is None or self._encode is None:
                self._encode = Codec(registry_url=self._registry_url).encoder(
                    "tidegate.Alert", topic=self.topic)
                self._producer = Producer({**self._config, **PRODUCER_DEFAULTS})
            self._producer.produce(self.topic, key=alert.key.encode(),
                                   value=self._encode(alert.to_record()),
                                   on_delivery=_delivered)
            self._producer.poll(0)
        except (TidegateError, KafkaException, BufferError) as exc:
            log.error("could not publish alert %s: %s", alert.key, exc)

    def close(self) -> None:
        if self._producer is not None and self._producer.flush(10) > 0:
            log.error("alerts not acknowledged by the broker on %s", self.topic)


def _delivered(error: KafkaError | None, message: Message) -> None:
    if error is not None:
        log.error("alert %r not delivered: %s", message.key(), error.str())

"""Per-partition stall detection: one input partition whose committed offset stopped moving.

A stage can make progress as a whole while one of its partitions does not (a consumer stuck on
one partition, a partition left paused): its health looks fine and the events keyed to that
partition wait for ever. ``PartitionStallDetector`` is the pure rule, fed with the committed and
end offsets of every input partition (``LagProbe.offsets``), the stages' health events and a
clock. A partition is stalled when its committed offset has not moved for ``stall_after``
seconds while its lag was above zero.

The clock of a stage only runs while its current process is up and not paused: it starts at
the first health event of a new instance (after a start or a restart the process needs its
partitions first) and starts again while the stage reports itself paused (it holds its input
on purpose: a command, the dead-letter guard, backpressure). So a restarted stage has
``stall_after`` seconds from its first report to move the partition again.

Example::

    detector = PartitionStallDetector(stall_after=30.0)
    detector.on_health({"stage": "ingest", "instance": "host-12", "paused": False}, now=0.0)
    detector.observe("ingest", "tidegate.events", {0: PartitionOffsets(5, 9)}, now=1.0)
    for stall in detector.stalled(now=40.0):      # partition 0 of ingest
        detector.alert(stall)                     # True: news, publish it
    detector.forget("ingest")                     # restarted: wait for its new instance
    detector.recovered()                          # once it moves: the alert to resolve
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from tidegate.monitoring.alerting import Alert
from tidegate.runtime.backpressure import PartitionOffsets

__all__ = ["PartitionStall", "PartitionStallDetector", "stall_alert"]


@dataclass(frozen=True, order=True)
class PartitionStall:
    """One stalled input partition: where its group is, where the topic ends, for how long."""

    stage: str
    topic: str
    partition: int
    committed: int
    end: int
    seconds: float

    @property
    def key(self) -> str:
        """The alert's de-duplication key: the same partition keeps the same key."""
        return _key(self.stage, self.topic, self.partition)

    @property
    def lag(self) -> int:
        return PartitionOffsets(self.committed, self.end).lag

    def describe(self) -> str:
        """One line for a human.

        >>> PartitionStall("ingest", "tidegate.events", 2, 40, 90, 31.2).describe()
        'ingest: partition 2 of tidegate.events stalled at offset 40 for 31 s with lag 50'
        """
        at = f"offset {self.committed}" if self.committed >= 0 else "its start (no commit)"
        return (f"{self.stage}: partition {self.partition} of {self.topic} stalled at {at} "
                f"for {self.seconds:.0f} s with lag {self.lag}")


def _key(stage: str, topic: str, partition: int) -> str:
    return f"{stage}/partition_stall/{topic}/{partition}"


def stall_alert(stall: PartitionStall, status: Literal["firing", "resolved"], *,
                now: float) -> Alert:
    """The alert record (``schemas/alert.avsc``) for ``stall``; ``now`` is epoch seconds.

    Critical: the events of that partition wait until it moves, however well the rest flows.

    >>> stall_alert(PartitionStall("ingest", "tidegate.events", 2, 40, 90, 31), "firing",
    ...             now=1.0).details["partition"]
    '2'
    """
    message = stall.describe() + ("; restarting the stage" if status == "firing" else
                                  "; moving again")
    return Alert(id=uuid.uuid4().hex, key=stall.key, severity="critical", stage=stall.stage,
                 kind="partition_stall", message=message, status=status, time=int(now * 1000),
                 details={"topic": stall.topic, "partition": str(stall.partition),
                          "committed": str(stall.committed), "end": str(stall.end),
                          "lag": str(stall.lag), "stalled_seconds": f"{stall.seconds:.1f}"})


@dataclass
class _Track:
    offsets: PartitionOffsets
    since: float  # when the offset last moved, the lag appeared, or the clock started again


@dataclass
class _Stage:
    instances: set[str] = field(default_factory=set)  # reporting since the clock started
    retired: set[str] = field(default_factory=set)  # the processes a restart replaced
    paused: bool = False
    tracks: dict[tuple[str, int], _Track] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return bool(self.instances)


class PartitionStallDetector:
    """Which input partitions had lag and an unmoved committed offset for ``stall_after`` s."""

    def __init__(self, *, stall_after: float) -> None:
        self.stall_after = stall_after
        self._stages: dict[str, _Stage] = {}
        self._alerted: dict[str, PartitionStall] = {}  # reported and not yet moving again
        self._recovered: list[PartitionStall] = []

    def on_health(self, event: Mapping[str, Any], *, now: float) -> None:
        """A health event: a new instance (re)starts the stage's clock, paused holds it."""
        stage = self._stages.setdefault(str(event["stage"]), _Stage())
        instance = str(event.get("instance", ""))
        if instance in stage.retired:
            return  # the replaced process, still draining: no news about the new one
        if instance not in stage.instances:
            stage.instances.add(instance)  # a new worker needs its partitions first
            stage.tracks.clear()
        stage.paused = bool(event.get("paused"))
        if stage.paused:
            stage.tracks.clear()

    def observe(self, stage_name: str, topic: str, offsets: Mapping[int, PartitionOffsets],
                *, now: float) -> None:
        """One probe of ``stage_name``'s input ``topic``: committed and end offsets."""
        stage = self._stages.setdefault(stage_name, _Stage())
        for partition, seen in offsets.items():
            alerted = self._alerted.get(_key(stage_name, topic, partition))
            if alerted is not None and (seen.lag == 0 or seen.committed != alerted.committed):
                del self._alerted[alerted.key]
                self._recovered.append(alerted)
            if not stage.running or stage.paused:
                continue
            track = stage.tracks.get((topic, partition))
            # the clock runs from the first sample with lag, never from a time before it
            if (track is None or track.offsets.lag == 0
                    or seen.committed != track.offsets.committed):
                stage.tracks[(topic, partition)] = _Track(seen, since=now)
            else:
                track.offsets = seen

    def stalled(self, *, now: float) -> list[PartitionStall]:
        """The partitions stalled at ``now``, by stage, topic and partition."""
        found = []
        for name, stage in self._stages.items():
            for (topic, partition), track in stage.tracks.items():
                if track.offsets.lag > 0 and now - track.since > self.stall_after:
                    found.append(PartitionStall(name, topic, partition, track.offsets.committed,
                                                track.offsets.end, now - track.since))
        return sorted(found)

    def alert(self, stall: PartitionStall) -> bool:
        """Note that ``stall`` was reported; whether it is news (else its partition stalled
        again at the same offset, after a restart that did not help)."""
        news = stall.key not in self._alerted
        self._alerted.setdefault(stall.key, stall)
        return news

    def recovered(self) -> list[PartitionStall]:
        """Stalls reported before whose partition moved again (or caught up) since; once each."""
        done, self._recovered = self._recovered, []
        return done

    def expect(self, stages: list[str]) -> None:
        """Watch ``stages``; their clocks start when each first reports health."""
        for name in stages:
            self._stages.setdefault(name, _Stage())

    def forget(self, stage_name: str) -> None:
        """``stage_name`` is being restarted: hold its clock until a new instance reports."""
        stage = self._stages.setdefault(stage_name, _Stage())
        stage.retired = stage.instances  # only the latest replaced processes: bounded
        stage.instances, stage.paused = set(), False
        stage.tracks.clear()

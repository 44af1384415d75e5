"""The checkpoint without a broker: deliver, retry, commit, and exit when undeliverable."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from tidegate.outputs import Outgoing
from tidegate.runtime import checkpoint
from tidegate.runtime.checkpoint import AtLeastOnce

pytestmark = pytest.mark.unit

OUT = [Outgoing(topic="t", value=b"v")]


class Reader:
    def __init__(self) -> None:
        self.committed: list[Sequence[Any]] = []

    def commit(self, events: Sequence[Any]) -> None:
        self.committed.append(events)


class ExitedError(Exception):
    pass


def failing(times: int, log: list[str]) -> checkpoint.Send:
    async def send(outgoing: Sequence[Outgoing]) -> None:
        log.append("send")
        if len(log) <= times:
            raise ConnectionError("broker went away")

    return send


def test_outputs_are_delivered_before_the_offsets_are_committed() -> None:
    log: list[str] = []
    reader = Reader()
    point = AtLeastOnce(failing(2, log), reader, deadline=30.0)  # type: ignore[arg-type]
    asyncio.run(point.commit(OUT, ["e1", "e2"]))
    assert log == ["send", "send", "send"]
    assert reader.committed == [["e1", "e2"]]


def test_undeliverable_outputs_end_the_process_without_committing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def exit_undeliverable(reason: str) -> None:
        raise ExitedError(reason)

    monkeypatch.setattr(checkpoint, "exit_undeliverable", exit_undeliverable)
    reader = Reader()
    point = AtLeastOnce(failing(10**6, []), reader, deadline=0.3)  # type: ignore[arg-type]
    with pytest.raises(ExitedError, match="undeliverable"):
        asyncio.run(point.commit(OUT, ["e1"]))
    assert reader.committed == []


class HoldingReader:
    """A reader whose events are (partition, offset) pairs; it logs each commit of offsets."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    def next_offsets(self, events: Sequence[tuple[int, int]]) -> list[TopicPartition]:
        ends: dict[int, int] = {}
        for partition, offset in events:
            ends[partition] = max(ends.get(partition, -1), offset)
        return [TopicPartition("in", p, o + 1) for p, o in sorted(ends.items())]

    def delivered(self, offsets: Sequence[TopicPartition]) -> None:
        pass

    def commit_offsets(self, offsets: Sequence[TopicPartition], *, at_once: bool = False
                       ) -> None:
        assert at_once, "held offsets wait no longer once their state is written"
        self.log.append("commit " + ",".join(f"{tp.partition}@{tp.offset}" for tp in offsets))


class OwedState:
    def __init__(self) -> None:
        self.owed: list[Outgoing] = []

    def unwritten(self) -> list[Outgoing]:
        owed, self.owed = self.owed, []
        return owed


def test_deferred_state_is_written_before_the_offsets_of_its_batches_commit() -> None:
    log: list[str] = []

    async def send(outgoing: Sequence[Outgoing]) -> None:
        log.append("send " + ",".join(item.value.decode() for item in outgoing))

    state = OwedState()
    point = AtLeastOnce(send, HoldingReader(log), deadline=30.0,  # type: ignore[arg-type]
                        deferred=state, interval=3600.0)

    async def scenario() -> None:
        await point.commit([Outgoing(topic="out", value=b"b1")], [(0, 4), (1, 7)])
        state.owed.append(Outgoing(topic="state", value=b"s1"))  # the batch's state counted
        await point.settle()  # the first settle is due: state, then the offsets
        await point.commit([Outgoing(topic="out", value=b"b2")], [(0, 5), (0, 6)])
        state.owed.append(Outgoing(topic="state", value=b"s2"))
        await point.settle()  # inside the interval: held
        assert log[-1] == "send b2", "offsets committed before their state was written"
        await point.settle(now=True)  # stopping

    asyncio.run(scenario())
    assert log == ["send b1", "send s1", "commit 0@5,1@8", "send b2", "send s2", "commit 0@7"]


def test_revoked_partitions_drop_their_held_offsets() -> None:
    log: list[str] = []

    async def send(outgoing: Sequence[Outgoing]) -> None:
        pass

    point = AtLeastOnce(send, HoldingReader(log), deadline=30.0,  # type: ignore[arg-type]
                        deferred=OwedState(), interval=3600.0)

    async def scenario() -> None:
        await point.settle()  # spends the first due settle on nothing
        await point.commit([], [(0, 1), (1, 2), (2, 3)])
        point.forget([1])  # its state is forgotten with it: the next owner repeats the batch
        await point.settle(now=True)

    asyncio.run(scenario())
    assert log == ["commit 0@2,2@4"]


def test_without_deferred_state_settle_does_nothing() -> None:
    reader = Reader()
    point = AtLeastOnce(failing(0, []), reader, deadline=30.0)  # type: ignore[arg-type]
    asyncio.run(point.commit(OUT, ["e1"]))
    asyncio.run(point.settle(now=True))
    assert reader.committed == [["e1"]]

"""The checkpoint without a broker: deliver, retry, commit, and exit when undeliverable."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

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

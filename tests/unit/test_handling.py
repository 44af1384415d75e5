"""Handler calls without a broker: outputs counted, a failing event isolated, staged state kept
only for calls that returned."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest

from tidegate.codec import Codec
from tidegate.deadletter import Code, context_of
from tidegate.outputs import Outgoing, Outputs
from tidegate.runtime.handling import Handling
from tidegate.runtime.metrics import StageMetrics

pytestmark = pytest.mark.unit


def event(offset: int, value: bytes) -> Any:
    return SimpleNamespace(message=SimpleNamespace(
        topic="p.events", partition=0, offset=offset, timestamp=1.0, key=b"k", value=value,
        headers=[("h", b"1")]))


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def keep(self) -> None:
        self.calls.append("keep")

    def drop(self) -> None:
        self.calls.append("drop")

    def commit(self) -> None:
        self.calls.append("commit")


async def echo(events: Sequence[Any]) -> Outputs:
    """Forwards every value; a value of b"poison" makes the whole call raise."""
    if any(e.message.value == b"poison" for e in events):
        raise ValueError("cannot handle poison")
    return Outputs([Outgoing(topic="p.next", value=e.message.value) for e in events],
                   records_in=len(events), records_out=len(events))


def handling(staged: Recorder | None = None) -> Handling:
    return Handling(stage="ingest", dead_letter_topic="p.dlq.ingest", codec=Codec(),
                    metrics=StageMetrics(stage="ingest"), internal=False,
                    staged=[staged] if staged else [])


def test_a_good_batch_is_forwarded_and_counted_in_one_call() -> None:
    staged = Recorder()
    h = handling(staged)
    out = asyncio.run(h.run(echo, [event(0, b"a"), event(1, b"b")]))
    assert [m.value for m in out] == [b"a", b"b"]
    assert h.metrics.totals["in"] == 2 and h.metrics.totals["out"] == 2
    assert staged.calls == ["keep"]


def test_a_failing_event_becomes_one_internal_error_and_the_rest_goes_on() -> None:
    staged = Recorder()
    h = handling(staged)
    out = asyncio.run(h.run(echo, [event(0, b"a"), event(1, b"poison"), event(2, b"c")]))
    forwarded = [m.value for m in out if m.topic == "p.next"]
    [letter] = [m for m in out if m.topic == "p.dlq.ingest"]
    assert forwarded == [b"a", b"c"]
    assert letter.value == b"poison" and letter.key == b"k"
    context = context_of(letter.headers)
    assert context["error.code"] == Code.INTERNAL_ERROR
    assert context["error.class"] == "ValueError"
    assert context["source.offset"] == "1"
    assert ("h", b"1") in list(letter.headers or [])  # the original headers stay
    assert h.metrics.totals["dead_lettered"] == 1
    assert h.metrics.totals["errors"] == 2  # the batch call and the poison event's own call
    # the whole batch failed (dropped), then a, poison (dropped), c each alone
    assert staged.calls == ["drop", "keep", "drop", "keep"]


def test_without_a_dead_letter_topic_the_failure_is_counted_and_dropped() -> None:
    h = Handling(stage="monitoring", dead_letter_topic=None, codec=Codec(),
                 metrics=StageMetrics(stage="monitoring"), internal=False)
    out = asyncio.run(h.run(echo, [event(0, b"poison")]))
    assert out == []
    assert h.metrics.totals["dead_lettered"] == 1

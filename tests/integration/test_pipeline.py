"""The five stages as real processes on the real broker: conservation, codes, crashes."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.integration.pipeline import (
    expectations,
    produce,
    running_pipeline,
    wait_for_outputs,
    wait_until_healthy,
)
from tidegate.example.badrecords import ALL_KINDS
from tidegate.example.stream import example_messages
from tidegate.settings import Settings

pytestmark = pytest.mark.integration

EVENTS = 20_000


@pytest.mark.parametrize("reader", ["librdkafka", "faust"])
def test_every_event_ends_in_exactly_one_place(pipeline_settings: Settings, reader: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDEGATE_READER", reader)
    messages = list(example_messages(EVENTS, seed=11, bad_rate=0.05,
                                     events_per_second=20_000))
    kinds = {m.expected.name for m in messages if m.expected is not None}
    assert len(kinds) >= 15, f"only {len(kinds)} kinds of bad record were generated"
    with running_pipeline(pipeline_settings) as supervisor:
        ready = wait_until_healthy(pipeline_settings)
        began = time.monotonic()
        sent = produce(pipeline_settings, messages)
        outputs = wait_for_outputs(pipeline_settings, len(sent), supervisor=supervisor)
        took = time.monotonic() - began
        restarts = {name: child.restarts for name, child in supervisor.children.items()}
        alive = {name: child.process is not None and child.process.poll() is None
                 for name, child in supervisor.children.items()}
    predicted, dead = expectations(sent)
    assert restarts == dict.fromkeys(restarts, 0), f"a stage crashed: {restarts}"
    assert all(alive.values()), f"a stage died: {alive}"
    missing = set(predicted) - set(outputs.predictions)
    assert not missing, f"{len(missing)} good events have no prediction"
    assert outputs.predictions == predicted, "a good event was predicted more than once"
    assert outputs.dead == dead, _dead_diff(outputs.dead, dead)
    lat = np.percentile(outputs.latencies_ms, [50, 99])
    print(f"\npipeline ({reader} readers): {len(sent)} events "
          f"({sum(dead.values())} bad, {len(kinds)} kinds) "
          f"accounted for in {took:.1f} s (stages ready after {ready:.1f} s) = "
          f"{len(sent) / took:.0f} events/s end to end; "
          f"ingest-to-prediction latency p50 {lat[0]:.0f} ms, p99 {lat[1]:.0f} ms")


def _dead_diff(got: Counter[tuple[str, str, bytes]],
               want: Counter[tuple[str, str, bytes]]) -> str:
    extra = Counter({(s, c): n for (s, c, _), n in (got - want).items()})
    short = Counter({(s, c): n for (s, c, _), n in (want - got).items()})
    return f"dead letters differ: unexpected {dict(extra)}, missing {dict(short)}"


def test_kill_9_of_three_stages_loses_nothing(pipeline_settings: Settings) -> None:
    """Ingest, feature and inference killed in turn while events flow; each restarts."""
    victims = ("ingest", "feature", "inference")
    kinds = [kind for kind in ALL_KINDS if kind.name != "duplicate_event_id"]
    messages = list(example_messages(12_000, seed=5, bad_rate=0.03, kinds=kinds,
                                     events_per_second=20_000))
    predicted, dead = expectations(messages)
    with running_pipeline(pipeline_settings) as supervisor, ThreadPoolExecutor(1) as pool:
        wait_until_healthy(pipeline_settings)
        sending = pool.submit(produce, pipeline_settings, messages, rate=800.0)
        for victim in victims:
            time.sleep(3.0)
            process = supervisor.children[victim].process
            assert process is not None
            os.kill(process.pid, signal.SIGKILL)
            supervisor.poll()
        sent = sending.result()
        # Repeats are allowed after a crash, so wait for every event id, not for a count.
        outputs = wait_for_outputs(
            pipeline_settings, len(sent), supervisor=supervisor, timeout=240,
            done=lambda out: set(predicted) <= set(out.predictions) and set(dead) <= set(out.dead),
        )
        restarts = {name: supervisor.children[name].restarts for name in victims}
    assert all(restarts[name] >= 1 for name in victims), f"not every stage restarted: {restarts}"
    lost = set(predicted) - set(outputs.predictions)
    assert not lost, f"{len(lost)} events lost after kill -9"
    assert set(outputs.predictions) == set(predicted), "a prediction for an unknown event id"
    assert set(outputs.dead) == set(dead), _dead_diff(outputs.dead, dead)
    repeats = sum(outputs.predictions.values()) - len(predicted)
    print(f"\nkill -9 of {', '.join(victims)} mid-run: {len(sent)} events, none lost, "
          f"{repeats} repeated predictions (removable by event id)")

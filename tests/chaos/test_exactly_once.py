"""Exactly-once mode: kill -9 every data stage in turn mid-run; nothing lost, nothing repeated.

Outputs are read as a downstream service in exactly-once mode reads them, with
``isolation.level=read_committed`` (librdkafka's default): an aborted transaction's records are
never seen.
"""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.integration.pipeline import (
    expectations,
    produce,
    read_outputs,
    running_pipeline,
    wait_for_outputs,
    wait_until_healthy,
)
from tidegate.example.badrecords import ALL_KINDS
from tidegate.example.stream import example_messages
from tidegate.settings import Settings

pytestmark = pytest.mark.chaos

VICTIMS = ("ingest", "validation", "feature", "inference")
EVENTS = 12_000
RATE = 800.0  # events/s: 15 s of input, so every kill lands with batches in flight


def test_kill_9_of_each_stage_loses_and_repeats_nothing(
        pipeline_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDEGATE_PROCESSING_GUARANTEE", "exactly_once")
    # Ingest remembers event ids per process, so a duplicate sent before a crash and its copy
    # after it are not this test's subject (see the README on de-duplication).
    kinds = [kind for kind in ALL_KINDS if kind.name != "duplicate_event_id"]
    messages = list(example_messages(EVENTS, seed=17, bad_rate=0.03, kinds=kinds,
                                     events_per_second=20_000))
    predicted, dead = expectations(messages)
    with running_pipeline(pipeline_settings) as supervisor, ThreadPoolExecutor(1) as pool:
        wait_until_healthy(pipeline_settings)
        sending = pool.submit(produce, pipeline_settings, messages, rate=RATE)
        for victim in VICTIMS:
            time.sleep(2.5)
            process = supervisor.children[victim].process
            assert process is not None
            before = read_outputs(pipeline_settings).total
            os.kill(process.pid, signal.SIGKILL)
            print(f"\nkilled {victim} with {before} outputs so far")
            supervisor.poll()
        sent = sending.result()
        began = time.monotonic()
        outputs = wait_for_outputs(pipeline_settings, len(sent), supervisor=supervisor,
                                   timeout=240)
        # a repeat would arrive after the last expected output: give it a moment to show
        time.sleep(3.0)
        outputs = read_outputs(pipeline_settings)
        restarts = {name: supervisor.children[name].restarts for name in VICTIMS}
    assert all(restarts[name] >= 1 for name in VICTIMS), f"not every stage restarted: {restarts}"
    lost = set(predicted) - set(outputs.predictions)
    assert not lost, f"{len(lost)} events lost in exactly-once mode"
    assert set(outputs.predictions) == set(predicted), "a prediction for an unknown event id"
    repeated = {event_id: n for event_id, n in outputs.predictions.items() if n > 1}
    assert not repeated, f"{len(repeated)} events predicted more than once"
    assert outputs.dead == dead, "dead letters lost or repeated"
    print(f"exactly-once: {len(sent)} events at {RATE:.0f}/s, {len(VICTIMS)} stages killed -9 "
          f"mid-run and restarted ({restarts}); 0 lost, 0 repeated; drained "
          f"{time.monotonic() - began:.1f} s after the last send")

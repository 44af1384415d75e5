"""Control commands through the real broker: degrade, restore, recovery after a restart, pause."""

from __future__ import annotations

import time

import pytest

from tests.integration.pipeline import (
    health_events,
    produce,
    read_outputs,
    read_predictions,
    running_pipeline,
    wait_until_healthy,
)
from tidegate.cli.main import main
from tidegate.cli.supervisor import Supervisor
from tidegate.example.stream import example_messages
from tidegate.settings import Settings

pytestmark = pytest.mark.integration


def _paths_after(settings: Settings, since_ms: int) -> set[str]:
    return {record["path"] for record in read_predictions(settings, since_ms=since_ms)}


def _wait_for_path(settings: Settings, supervisor: Supervisor, path: str, *, seed: int,
                   timeout: float) -> float:
    """Send a trickle of events until predictions on ``path`` appear; return seconds taken."""
    began = time.monotonic()
    since = int(time.time() * 1000)
    while time.monotonic() - began < timeout:
        produce(settings, example_messages(50, seed=seed + int(time.monotonic() * 10),
                                           json_share=0.0, events_per_second=5000))
        time.sleep(0.3)
        supervisor.poll()
        if path in _paths_after(settings, since):
            return time.monotonic() - began
    raise AssertionError(f"no prediction on the {path} path within {timeout} s")


def _wait_for_health(settings: Settings, stage: str, *, paused: bool,
                     timeout: float = 30.0) -> None:
    """Until a health event of ``stage`` reports ``paused`` (and its mode says so)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in health_events(settings):
            if event["stage"] == stage and event["paused"] == paused:
                assert ("paused" in event["mode"]) == paused
                return
        time.sleep(0.5)
    raise AssertionError(f"{stage} never reported paused={paused}")


def test_degrade_restore_and_recover_after_restart(pipeline_settings: Settings) -> None:
    with running_pipeline(pipeline_settings) as supervisor:
        wait_until_healthy(pipeline_settings)
        _wait_for_path(pipeline_settings, supervisor, "primary", seed=1, timeout=60)

        assert main(["control", "degrade", "inference", "--reason", "test: model errors"]) == 0
        took = _wait_for_path(pipeline_settings, supervisor, "fallback", seed=2, timeout=30)
        print(f"\ndegrade inference -> fallback predictions after {took:.1f} s")

        # A restarted inference stage recovers the degraded mode from the compacted topic.
        inference = supervisor.children["inference"].process
        assert inference is not None
        inference.terminate()
        inference.wait(30)
        supervisor.poll()
        time.sleep(1.0)
        supervisor.poll()
        since = int(time.time() * 1000)
        _wait_for_path(pipeline_settings, supervisor, "fallback", seed=3, timeout=60)
        assert "primary" not in _paths_after(pipeline_settings, since), \
            "the restarted stage forgot it was degraded"

        assert main(["control", "restore", "inference", "--reason", "test: model fixed"]) == 0
        took = _wait_for_path(pipeline_settings, supervisor, "primary", seed=4, timeout=30)
        print(f"restore inference -> primary predictions after {took:.1f} s")


def test_pause_holds_events_in_kafka_and_resume_scores_them(pipeline_settings: Settings) -> None:
    with running_pipeline(pipeline_settings) as supervisor:
        wait_until_healthy(pipeline_settings)
        assert main(["control", "pause", "validation", "--reason", "test: upstream bad"]) == 0
        _wait_for_health(pipeline_settings, "validation", paused=True)
        sent = produce(pipeline_settings, example_messages(500, seed=9, json_share=0.0,
                                                           events_per_second=5000))
        time.sleep(5.0)
        supervisor.poll()
        held = read_outputs(pipeline_settings)
        assert sum(held.predictions.values()) == 0, "a paused validation stage let events through"
        assert main(["control", "resume", "validation", "--reason", "test: fixed"]) == 0
        deadline = time.monotonic() + 60
        outputs = held
        while time.monotonic() < deadline:
            outputs = read_outputs(pipeline_settings)
            if set(outputs.predictions) >= {m.event_id for m in sent}:
                break
            time.sleep(1.0)
        assert set(outputs.predictions) >= {m.event_id for m in sent}

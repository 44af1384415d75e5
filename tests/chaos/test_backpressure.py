"""Backpressure on the real broker: a stage pauses while the next one lags, then drains."""

from __future__ import annotations

import time

import pytest

from tests.integration.pipeline import (
    paused_for,
    produce,
    read_outputs,
    running_pipeline,
    wait_until_healthy,
)
from tidegate.cli.main import main
from tidegate.example.stream import example_messages
from tidegate.settings import Settings

pytestmark = pytest.mark.chaos


def _feature_backpressured(settings: Settings) -> bool:
    return paused_for(settings, "feature", "backpressure")


def test_feature_pauses_while_inference_lags_and_everything_drains(
        pipeline_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDEGATE_BACKPRESSURE_HIGH", "5")
    monkeypatch.setenv("TIDEGATE_BACKPRESSURE_LOW", "2")
    monkeypatch.setenv("TIDEGATE_BATCH_SIZE", "50")
    with running_pipeline(pipeline_settings) as supervisor:
        wait_until_healthy(pipeline_settings)
        assert main(["control", "pause", "inference", "--reason", "test: slow consumer"]) == 0
        sent = produce(pipeline_settings, example_messages(3000, seed=51, json_share=0.0,
                                                           events_per_second=20_000))
        deadline = time.monotonic() + 60
        while not _feature_backpressured(pipeline_settings) and time.monotonic() < deadline:
            supervisor.poll()
            time.sleep(0.5)
        assert _feature_backpressured(pipeline_settings), "feature never felt the backpressure"
        assert main(["control", "resume", "inference", "--reason", "test: caught up"]) == 0
        wanted = {m.event_id for m in sent}
        deadline = time.monotonic() + 120
        outputs = read_outputs(pipeline_settings)
        while time.monotonic() < deadline and not wanted <= set(outputs.predictions):
            supervisor.poll()
            time.sleep(1.0)
            outputs = read_outputs(pipeline_settings)
    assert wanted <= set(outputs.predictions), "events stuck behind the backpressure"

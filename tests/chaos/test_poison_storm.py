"""A poison storm at validation: the stage pauses instead of dead-lettering the stream."""

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
from tidegate.example.badrecords import kind_by_name
from tidegate.example.stream import example_messages
from tidegate.settings import Settings

pytestmark = pytest.mark.chaos


def _paused_by_guard(settings: Settings) -> bool:
    return paused_for(settings, "validation", "dead-letter rate")


def test_a_poison_storm_pauses_validation_and_the_good_records_behind_it_are_scored(
        pipeline_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDEGATE_DEAD_LETTER_RATE_WAIT", "2")
    monkeypatch.setenv("TIDEGATE_BATCH_SIZE", "100")
    storm_kind = kind_by_name("missing_account_id")
    before = list(example_messages(1000, seed=41, json_share=0.0, events_per_second=20_000))
    storm = list(example_messages(2000, seed=42, bad_rate=1.0, kinds=[storm_kind],
                                  events_per_second=20_000))
    after = list(example_messages(1000, seed=43, json_share=0.0, events_per_second=20_000))
    with running_pipeline(pipeline_settings) as supervisor:
        wait_until_healthy(pipeline_settings)
        produce(pipeline_settings, before + storm)
        deadline = time.monotonic() + 60
        while not _paused_by_guard(pipeline_settings) and time.monotonic() < deadline:
            supervisor.poll()
            time.sleep(0.5)
        assert _paused_by_guard(pipeline_settings), "validation never paused on the storm"
        held = read_outputs(pipeline_settings)
        dead_at_pause = sum(held.dead.values())
        print(f"\npoison storm: validation paused with {dead_at_pause} of {len(storm)} storm "
              "records dead-lettered")
        assert dead_at_pause < len(storm), "the whole storm went to the dead-letter topic"
        produce(pipeline_settings, after)  # the producer is fixed
        wanted = {m.event_id for m in before + after}
        deadline = time.monotonic() + 240
        outputs = held
        while time.monotonic() < deadline:
            supervisor.poll()
            outputs = read_outputs(pipeline_settings)
            if wanted <= set(outputs.predictions) and sum(outputs.dead.values()) >= len(storm):
                break
            time.sleep(1.0)
    assert wanted <= set(outputs.predictions), "good records behind the storm were not scored"
    assert sum(outputs.dead.values()) == len(storm), "every storm record ends in one place"

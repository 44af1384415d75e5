"""A poison storm at validation: the stage pauses instead of dead-lettering the stream."""

from __future__ import annotations

import time

import pytest

from tests.integration.pipeline import (
    Outputs,
    paused_for,
    produce,
    read_outputs,
    running_pipeline,
    wait_until_healthy,
)
from tidegate.cli.main import main
from tidegate.cli.supervisor import Supervisor
from tidegate.example.badrecords import kind_by_name
from tidegate.example.stream import example_messages
from tidegate.settings import Settings

pytestmark = pytest.mark.chaos


def _paused_by_guard(settings: Settings) -> bool:
    return paused_for(settings, "validation", "dead-letter rate")


def _scored_and_drained(settings: Settings, supervisor: Supervisor, wanted: set[str | None],
                        dead: int, timeout: float) -> Outputs:
    """The outputs once ``wanted`` are predicted and ``dead`` records dead-lettered, or at the
    timeout."""
    deadline = time.monotonic() + timeout
    while True:
        supervisor.poll()
        outputs = read_outputs(settings)
        if ((wanted <= set(outputs.predictions) and sum(outputs.dead.values()) >= dead)
                or time.monotonic() > deadline):
            return outputs
        time.sleep(1.0)


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
        outputs = _scored_and_drained(pipeline_settings, supervisor, wanted, len(storm), 240)
    assert wanted <= set(outputs.predictions), "good records behind the storm were not scored"
    assert sum(outputs.dead.values()) == len(storm), "every storm record ends in one place"


def test_a_stage_killed_mid_storm_comes_back_paused_and_a_resume_still_wins(
        pipeline_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    # a wait longer than the restart, so the restarted stage reports its inherited pause before
    # any probe. The guard trips once 400 records of its window are at least half dead letters:
    # the storm's first 400 trip it, and the paused reader commits them at once; what is left
    # of the storm, with the batch the kill makes the new process read again (at most 150
    # records), is under half of 400, so it cannot trip the guard again after the resume,
    # however the good records behind it are batched. (When the pause waited for the commit
    # interval, a kill inside it made the new process read up to 300 storm records again,
    # which tripped the guard after the resume, and the good records waited out the 60 s.)
    monkeypatch.setenv("TIDEGATE_DEAD_LETTER_RATE_WAIT", "60")
    monkeypatch.setenv("TIDEGATE_DEAD_LETTER_RATE_MINIMUM", "400")
    monkeypatch.setenv("TIDEGATE_BATCH_SIZE", "100")
    storm = list(example_messages(450, seed=52, bad_rate=1.0,
                                  kinds=[kind_by_name("missing_account_id")],
                                  events_per_second=20_000))
    good = list(example_messages(300, seed=53, json_share=0.0, events_per_second=20_000))
    with running_pipeline(pipeline_settings) as supervisor:
        wait_until_healthy(pipeline_settings)
        produce(pipeline_settings, storm)
        deadline = time.monotonic() + 60
        while not _paused_by_guard(pipeline_settings) and time.monotonic() < deadline:
            supervisor.poll()
            time.sleep(0.5)
        assert _paused_by_guard(pipeline_settings), "validation never paused on the storm"
        validation = supervisor.children["validation"].process
        assert validation is not None
        validation.kill()  # no goodbye: the new process learns of the storm from health alone
        validation.wait(10)
        dead_at_kill = sum(read_outputs(pipeline_settings).dead.values())
        deadline = time.monotonic() + 60
        carried = "when the previous process stopped"
        while not paused_for(pipeline_settings, "validation", carried):
            assert time.monotonic() < deadline, "the restarted validation did not start paused"
            supervisor.poll()
            time.sleep(0.3)
        dead_then = sum(read_outputs(pipeline_settings).dead.values())
        print(f"\nkilled mid-storm with {dead_at_kill} of {len(storm)} dead-lettered; the new "
              f"process started paused with {dead_then}")
        # at most the batch the killed process had in flight, not a batch per restart
        assert dead_then - dead_at_kill <= 100, "the restarted stage flooded the dead letters"
        # the operator's resume wins over the inherited pause: the rest of the storm drains
        assert main(["control", "resume", "validation", "--reason", "test: storm over"]) == 0
        produce(pipeline_settings, good)
        wanted = {m.event_id for m in good}
        # 40 s, less than the guard's wait: no probe but the resume can have drained it
        outputs = _scored_and_drained(pipeline_settings, supervisor, wanted, len(storm), 40)
    assert wanted <= set(outputs.predictions), "good records behind the storm were not scored"
    assert {stage for stage, _, _ in outputs.dead} == {"validation"}
    assert {value for _, _, value in outputs.dead} == {m.value for m in storm}
    # at least once: a kill may repeat the batch it had not committed, never more
    assert sum(outputs.dead.values()) <= len(storm) + 100

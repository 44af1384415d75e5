"""The feature stage's account state on the real broker: written to its changelog once per commit
interval (not with every batch), and there for the next process after a kill."""

from __future__ import annotations

import time

import pytest

from tests.integration.pipeline import (
    cluster_config,
    produce,
    read_predictions,
    running_pipeline,
    wait_until_healthy,
)
from tidegate.example.stream import example_messages
from tidegate.kafka.scan import read_topic
from tidegate.settings import Settings
from tidegate.topics import ACCOUNTS as ACCOUNT_TOPIC

pytestmark = pytest.mark.integration

ACCOUNTS = 25


def _predictions_for(settings: Settings, wanted: set[str | None], timeout: float = 120.0
                     ) -> dict[str, dict[str, object]]:
    deadline = time.monotonic() + timeout
    while True:
        found = {p["event_id"]: p for p in read_predictions(settings)}
        if wanted <= set(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def _changelog_keys(settings: Settings) -> list[bytes]:
    return [m.key() or b"" for m in read_topic(cluster_config(settings),
                                               ACCOUNT_TOPIC.name(settings.topic_prefix))]


def test_a_killed_feature_stage_leaves_its_accounts_state_for_the_next_process(
        pipeline_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    # one write of the state right after the first batch, the next one 10 s later: the first
    # events are all processed by then, so each account is written at most twice (written with
    # every batch, as before, the same events made over 200 state records)
    monkeypatch.setenv("TIDEGATE_COMMIT_INTERVAL", "10")
    first = list(example_messages(400, seed=71, json_share=0.0, accounts=ACCOUNTS))
    second = list(example_messages(200, seed=72, json_share=0.0, accounts=ACCOUNTS))
    with running_pipeline(pipeline_settings) as supervisor:
        wait_until_healthy(pipeline_settings)
        produce(pipeline_settings, first, rate=400)  # many batches: a write per batch would show
        scored = _predictions_for(pipeline_settings, {m.event_id for m in first})
        assert {m.event_id for m in first} <= set(scored), "the first events were not scored"
        known = {str(p["account_id"]) for p in scored.values()}
        # the stage goes idle: within a commit interval it writes each changed account once
        deadline = time.monotonic() + 60
        while {k.decode() for k in _changelog_keys(pipeline_settings)} < known:
            assert time.monotonic() < deadline, "the idle stage never wrote its state"
            time.sleep(0.5)
        written = _changelog_keys(pipeline_settings)
        feature = supervisor.children["feature"].process
        assert feature is not None
        feature.kill()  # no goodbye: only what the changelog holds survives
        feature.wait(10)
        produce(pipeline_settings, second)
        wanted = {m.event_id for m in second}
        deadline = time.monotonic() + 120
        while not wanted <= set(_predictions_for(pipeline_settings, wanted, timeout=1.0)):
            assert time.monotonic() < deadline, "the restarted feature stage scored nothing"
            supervisor.poll()  # restarts the killed stage
            time.sleep(0.5)
        after = _predictions_for(pipeline_settings, wanted)
    # one record per changed account and interval, not one per account and batch
    assert len(written) <= 2 * ACCOUNTS, f"{len(written)} state records for {len(first)} events"
    repeat = [after[str(m.event_id)] for m in second
              if str(after[str(m.event_id)]["account_id"]) in known]
    assert repeat, "the second events share no account with the first"
    forgotten = [p["event_id"] for p in repeat if "no_state" in str(p["feature_quality"])]
    assert not forgotten, f"the new process forgot the accounts of {len(forgotten)} events"

"""The feature stage's account state on the real broker: written to its changelog once per commit
interval (not with every batch), the input offsets held until it is, so a killed process's
successor rebuilds it from the input and a stopped one's finds it in the changelog."""

from __future__ import annotations

import time

import pytest

from tests.integration.pipeline import (
    cluster_config,
    produce,
    read_outputs,
    read_predictions,
    running_pipeline,
    wait_until_healthy,
)
from tidegate.cli.supervisor import Supervisor
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


def _restarted(supervisor: Supervisor, name: str, before: int, timeout: float = 60.0) -> None:
    """Wait until ``name`` runs again in a process other than ``before``."""
    deadline = time.monotonic() + timeout
    while True:
        supervisor.poll()
        process = supervisor.children[name].process
        if process is not None and process.pid != before:
            return
        assert time.monotonic() < deadline, f"{name} was not restarted"
        time.sleep(0.3)


def test_state_is_written_once_per_interval_rebuilt_after_a_kill_and_kept_by_a_stop(
        pipeline_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    # an interval longer than the test: state is written (and the offsets behind it committed)
    # only when the stage stops cleanly
    monkeypatch.setenv("TIDEGATE_COMMIT_INTERVAL", "600")
    first = list(example_messages(400, seed=71, json_share=0.0, accounts=ACCOUNTS))
    second = list(example_messages(200, seed=72, json_share=0.0, accounts=ACCOUNTS))
    with running_pipeline(pipeline_settings) as supervisor:
        wait_until_healthy(pipeline_settings)
        produce(pipeline_settings, first, rate=400)  # many batches: a write per batch would show
        scored = _predictions_for(pipeline_settings, {m.event_id for m in first})
        assert {m.event_id for m in first} <= set(scored), "the first events were not scored"
        known = {str(p["account_id"]) for p in scored.values()}
        early = _changelog_keys(pipeline_settings)
        # written with every batch, as before, these events made about 200 state records
        assert len(early) == len(set(early)), "an account's state was written twice"
        feature = supervisor.children["feature"].process
        assert feature is not None
        feature.kill()  # no goodbye: its state was not written, nor its offsets committed
        feature.wait(10)
        _restarted(supervisor, "feature", feature.pid)
        # the new process reads the first events again and rebuilds the state from them
        deadline = time.monotonic() + 120
        while sum(n >= 2 for n in read_outputs(pipeline_settings).predictions.values()) \
                < len(first) / 2:
            assert time.monotonic() < deadline, "the held batches were not read again"
            supervisor.poll()
            time.sleep(0.5)
        stopping = supervisor.children["feature"].process
        assert stopping is not None
        supervisor.restart("feature", "test: a clean stop", grace=30)  # SIGTERM: writes it
        _restarted(supervisor, "feature", stopping.pid)
        written = _changelog_keys(pipeline_settings)[len(early):]
        assert {k.decode() for k in written} >= known, "the stopping stage did not write it"
        assert len(written) == len(set(written)), "an account's state was written twice"
        produce(pipeline_settings, second)
        wanted = {m.event_id for m in second}
        after = _predictions_for(pipeline_settings, wanted)
        assert wanted <= set(after), "the restarted feature stage did not score"
    repeat = [after[str(m.event_id)] for m in second
              if str(after[str(m.event_id)]["account_id"]) in known]
    assert repeat, "the second events share no account with the first"
    forgotten = [p["event_id"] for p in repeat if "no_state" in str(p["feature_quality"])]
    assert not forgotten, f"the new process forgot the accounts of {len(forgotten)} events"

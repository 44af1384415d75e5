"""Canary release on the real broker: a bad candidate's canary is ended, a good one promoted.

``tidegate model canary`` sends the command; inference serves the candidate to a stable share of
the accounts; monitoring compares it with production from inference's score bins and the labels
topic, and promotes it or ends the canary on its own. Every event still ends exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.pipeline import (
    produce,
    read_predictions,
    running_pipeline,
    wait_for_outputs,
    wait_until_healthy,
)
from tests.integration.test_monitoring import CHUNK, _send_labels, _status
from tidegate.cli.main import main
from tidegate.example.stream import ExampleMessage, example_messages
from tidegate.models.faults import register_bad_version
from tidegate.models.lifecycle import train_candidates
from tidegate.models.registry import ModelRegistry
from tidegate.models.training import PRIMARY
from tidegate.pipeline.canary import canary_rows
from tidegate.settings import Settings

pytestmark = pytest.mark.integration

SHARE = 0.5


def _canary_cli(version: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["model", "canary", PRIMARY, version, "--share", str(SHARE),
                 "--reason", f"drill: canary of {version}"])
    assert code == 0, capsys.readouterr().err
    assert "monitoring promotes it or ends the canary" in capsys.readouterr().out


def _until_verdict(settings: Settings, stream: Iterator[ExampleMessage], version: str,
                   sent: list[ExampleMessage]) -> dict[str, Any]:
    """Send events and, a second later, their labels until monitoring ends the canary of
    ``version``; the status at that moment."""
    deadline = time.monotonic() + 150
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        chunk = produce(settings, (next(stream) for _ in range(CHUNK)))
        sent += chunk
        time.sleep(1.0)  # predictions first, then their labels, as in production
        _send_labels(settings, chunk)
        status = _status(settings)
        ended = [a for a in status.get("actions", []) if a["action"] == "end_canary"
                 and f"canary/{PRIMARY}:{version}" in a["reason"]]
        if ended:
            return status
    raise AssertionError(f"no verdict on the canary of {version}: {status.get('canary')}")


def _served_by_candidate(settings: Settings, version: str, since_ms: int) -> list[str]:
    """Accounts of the predictions the candidate made; each must belong to the canary share."""
    name = f"{PRIMARY}:{version}"
    accounts = [r["account_id"] or "" for r in read_predictions(settings, since_ms=since_ms)
                if r["model_version"] == name]
    assert accounts, f"{name} served no prediction during its canary"
    assert canary_rows(accounts, SHARE).all(), "the candidate scored an account outside its share"
    return accounts


def test_a_bad_canary_is_ended_and_a_good_one_promoted(pipeline_settings: Settings,
                                                      capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDEGATE_ACCURACY_MIN_LABELS", "200")
    sent: list[ExampleMessage] = []
    stream = example_messages(200_000, seed=61, events_per_second=5_000)
    with running_pipeline(pipeline_settings):
        wait_until_healthy(pipeline_settings)
        registry = ModelRegistry(pipeline_settings.registry_dir)
        production = registry.require_production(PRIMARY).version

        bad = register_bad_version(registry, PRIMARY)
        began = int(time.time() * 1000)
        _canary_cli(bad.version, capsys)
        status = _until_verdict(pipeline_settings, stream, bad.version, sent)
        assert not [a for a in status["actions"] if a["action"] == "promote"], status["actions"]
        assert registry.require_production(PRIMARY).version == production
        bad_accounts = _served_by_candidate(pipeline_settings, bad.version, began)

        good = next(mv for mv in train_candidates(registry, events=20_000, seed=62)
                    if mv.name == PRIMARY)
        began = int(time.time() * 1000)
        _canary_cli(good.version, capsys)
        status = _until_verdict(pipeline_settings, stream, good.version, sent)
        promoted = [a for a in status["actions"] if a["action"] == "promote"]
        assert promoted and promoted[-1]["parameters"]["version"] == good.version, promoted
        assert promoted[-1]["issuer"] == "monitoring"
        assert registry.require_production(PRIMARY).version == good.version
        good_accounts = _served_by_candidate(pipeline_settings, good.version, began)
        outputs = wait_for_outputs(pipeline_settings, len(sent), timeout=120)

    wanted = {m.event_id for m in sent if m.event_id}
    missing = wanted - set(outputs.predictions) - {  # bad records end as dead letters
        m.event_id for m in sent if m.expected is not None}
    assert not missing, f"{len(missing)} events have no outcome"
    repeated = [e for e, n in outputs.predictions.items() if n > 1]
    assert outputs.total >= len(sent) and not repeated, f"repeated predictions: {repeated[:5]}"
    ended = next(a for a in status["actions"] if a["action"] == "end_canary"
                 and good.version in a["reason"])
    print(f"\nbad canary {bad.version} ended after {len(bad_accounts)} of its predictions; good "
          f"canary {good.version} promoted after {len(good_accounts)} ({ended['reason']}); "
          f"{len(sent)} events, each once")

"""A failing and a slow model behind the breaker, on the real broker: the fallback answers."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from tests.integration.pipeline import (
    health_events,
    install_faulty_primary,
    produce,
    read_predictions,
    running_pipeline,
)
from tidegate.example.stream import example_messages
from tidegate.settings import Settings

pytestmark = pytest.mark.chaos


def _paths_since(settings: Settings, since_ms: int) -> Counter[str]:
    return Counter(record["path"] for record in read_predictions(settings, since_ms=since_ms))


def _primary_breaker_opened(settings: Settings) -> bool:
    """Whether inference reported its primary model's breaker open in a health event."""
    return any(event["stage"] == "inference" and event["breakers"].get("model:primary") == "open"
               for event in health_events(settings))


def _trickle(settings: Settings, seconds: float, seed: int) -> set[str | None]:
    """Send 20 events every 0.2 s for ``seconds``: many small batches, many breaker calls."""
    sent: set[str | None] = set()
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        batch = produce(settings, example_messages(20, seed=seed, json_share=0.0,
                                                   events_per_second=5000))
        sent |= {m.event_id for m in batch}
        seed += 1
        time.sleep(0.2)
    return sent


@pytest.mark.parametrize("fault", ["fail", "slow 2"])
def test_the_breaker_opens_the_fallback_answers_and_the_primary_comes_back(
        pipeline_settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        fault: str) -> None:
    monkeypatch.setenv("TIDEGATE_BREAKER_WAIT_SECONDS", "3")
    switch = tmp_path / "model.fault"
    install_faulty_primary(pipeline_settings, switch)
    with running_pipeline(pipeline_settings):
        _trickle(pipeline_settings, 8, seed=1)
        switch.write_text(fault)
        sent = _trickle(pipeline_settings, 4, seed=100)
        deadline = time.monotonic() + 60
        while not _primary_breaker_opened(pipeline_settings) and time.monotonic() < deadline:
            sent |= _trickle(pipeline_settings, 1, seed=int(time.monotonic() * 10))
        assert _primary_breaker_opened(pipeline_settings), "the model breaker never opened"
        opened = int(time.time() * 1000)
        sent |= _trickle(pipeline_settings, 12, seed=300)
        during = _paths_since(pipeline_settings, opened)
        switch.write_text("")
        healed = int(time.time() * 1000)
        sent |= _trickle(pipeline_settings, 12, seed=200)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            after = _paths_since(pipeline_settings, healed + 6000)
            if after["primary"]:
                break
            time.sleep(1)
        predicted = {record["event_id"] for record in read_predictions(pipeline_settings)}
    print(f"\nmodel {fault!r}: paths during the fault {dict(during)}, after {dict(after)}")
    if fault == "fail":
        assert during["fallback"] > 0 and during["primary"] == 0, during
    else:  # a slow call still answers: the half-open probes score on the primary, slowly
        assert during["fallback"] > during["primary"], during
    assert after["primary"] > 0, "the primary never came back after the model recovered"
    assert sent <= predicted, "events lost while the model failed"

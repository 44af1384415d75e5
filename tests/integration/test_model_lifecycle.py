"""Model lifecycle on the real broker: promote a retrained candidate, roll back, restart.

Running inference switches on the promote and rollback commands, every prediction names the
version that scored it, and a restarted stage recovers the pinned version from the control topic.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.integration.pipeline import (
    example_registry,
    health_events,
    produce,
    read_predictions,
    running_pipeline,
    wait_until_healthy,
)
from tidegate.cli.main import main
from tidegate.cli.supervisor import Supervisor
from tidegate.example.stream import example_messages
from tidegate.models.lifecycle import train_candidates
from tidegate.models.registry import ModelRegistry
from tidegate.models.training import PRIMARY
from tidegate.settings import Settings

pytestmark = pytest.mark.integration

V1, V2 = f"{PRIMARY}:v1", f"{PRIMARY}:v2"


def _score(settings: Settings, supervisor: Supervisor, seed: int, *, n: int = 30,
           timeout: float = 30.0) -> list[dict[str, Any]]:
    """Send ``n`` good events and return their predictions once every one has arrived."""
    sent = produce(settings, example_messages(n, seed=seed, json_share=0.0,
                                              events_per_second=5000))
    wanted = {m.event_id for m in sent}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [r for r in read_predictions(settings) if r["event_id"] in wanted]
        if len(found) >= len(wanted):
            return found
        supervisor.poll()
        time.sleep(0.3)
    raise AssertionError(f"{len(wanted)} events were not all predicted within {timeout} s")


def _versions(records: list[dict[str, Any]]) -> set[str]:
    return {r["model_version"] for r in records if r["path"] == "primary"}


def _until_served(settings: Settings, supervisor: Supervisor, version: str, seed: int, *,
                  timeout: float = 30.0) -> float:
    """Score small batches until ``version`` answers; then every later batch must be it."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        seed += 1
        if version in _versions(_score(settings, supervisor, seed, n=10)):
            took = time.monotonic() - began
            assert _versions(_score(settings, supervisor, seed + 500)) == {version}
            return took
    raise AssertionError(f"inference never served {version} within {timeout} s")


def _reported(settings: Settings, version: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = [e for e in health_events(settings) if e["stage"] == "inference"]
        if events and events[-1]["model_version"] == version:
            return
        time.sleep(0.5)
    raise AssertionError(f"inference health never reported {version}")


def test_promote_roll_back_and_recover_the_pinned_version_after_a_restart(
        pipeline_settings: Settings) -> None:
    settings = pipeline_settings
    began = time.monotonic()
    registry = ModelRegistry(example_registry(settings.registry_dir))
    assert [mv.stage for mv in train_candidates(registry, events=20_000, seed=8)] == [
        "candidate", "candidate"]
    stages = ("ingest", "validation", "feature", "inference")
    trained = time.monotonic()
    with running_pipeline(settings, stages=stages) as supervisor:
        healthy = wait_until_healthy(settings, stages)
        assert _versions(_score(settings, supervisor, 100)) == {V1}
        ready = time.monotonic()

        assert main(["model", "promote", PRIMARY, "v2", "--reason", "test: retrained",
                     "--sample-events", "8000"]) == 0
        promoted = _until_served(settings, supervisor, V2, 200)
        _reported(settings, V2)

        assert main(["model", "rollback", PRIMARY, "--reason", "test: alerts doubled"]) == 0
        rolled_back = _until_served(settings, supervisor, V1, 300)
        _reported(settings, V1)

        # Make the registry say v2 without a command: a restarted stage that ignored the
        # control topic would serve it; one that recovered the pin serves v1.
        registry.promote(PRIMARY, "v2", reason="test: registry changed behind the stage")
        inference = supervisor.children["inference"].process
        assert inference is not None
        inference.terminate()
        inference.wait(30)
        restarted = time.monotonic()
        after = _score(settings, supervisor, 400, timeout=60)
        assert _versions(after) == {V1}, "the restarted stage forgot the rolled-back version"
        recovered = time.monotonic() - restarted
    print(f"\ntraining {trained - began:.1f} s, stages healthy after {healthy:.1f} s, first "
          f"predictions at {ready - began:.1f} s; promote -> v2 served in {promoted:.1f} s; "
          f"rollback -> v1 in {rolled_back:.1f} s; restart -> v1 in {recovered:.1f} s; "
          f"total {time.monotonic() - began:.1f} s")

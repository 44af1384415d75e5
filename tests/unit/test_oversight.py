"""Monitoring's inputs and outputs, without Kafka: predictions decoded only when labelled, the
registry read once per served version, and the actions shown as the commands actually issued."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import pytest

from tidegate.codec import Codec
from tidegate.errors import BrokerError
from tidegate.models.registry import PRIMARY, ModelRegistry, ModelVersion, Stage
from tidegate.monitoring.analyst import Analyst
from tidegate.monitoring.oversight import LazyJoin, Oversight
from tidegate.monitoring.status import StatusBoard
from tidegate.outputs import Outgoing
from tidegate.runtime.stage import StageRuntime
from tidegate.settings import Settings
from tidegate.topics import TopicSpec

pytestmark = pytest.mark.unit

REF = {"amount": {"cuts": [0.5], "shares": [0.5, 0.5]}}


def prediction(event_id: str, score: float) -> bytes:
    return json.dumps({"event_id": event_id, "model_version": "fraud-primary:v1",
                       "score": score, "label": score >= 0.5, "threshold": 0.5,
                       "path": "primary"}).encode()


def label(event_id: str, value: bool) -> dict[str, Any]:
    return {"event_id": event_id, "label": value, "labelled_at": 0}


class Counting:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, value: bytes) -> Mapping[str, Any]:
        self.calls += 1
        decoded: Mapping[str, Any] = json.loads(value)
        return decoded


def test_only_labelled_predictions_are_decoded_in_either_order() -> None:
    analyst, decode = Analyst(), Counting()
    join = LazyJoin(analyst, decode)
    for index in range(100):
        join.on_prediction(f"e{index}".encode(), prediction(f"e{index}", 0.9))
    join.on_label(label("e3", True))
    join.on_label(label("late", False))  # its prediction has not arrived yet
    join.on_prediction(b"late", prediction("late", 0.1))
    assert decode.calls == 2, "only the two labelled predictions were decoded"
    metrics = analyst.join.metrics("fraud-primary:v1")
    assert metrics is not None and metrics.labelled == 2 and metrics.accuracy == 1.0


def test_both_maps_stay_bounded() -> None:
    join = LazyJoin(Analyst(), Counting(), max_predictions=10, max_early=5)
    for index in range(50):
        join.on_prediction(f"p{index}".encode(), prediction(f"p{index}", 0.2))
        join.on_label(label(f"l{index}", False))
    join.on_label(label("p0", False))  # evicted long ago: now waits as an early label
    assert len(join._raw) == 10 and len(join._early) == 5


class FakeRuntime:
    """What Oversight uses of a StageRuntime: settings, codec, topic names and delivery."""

    def __init__(self, settings: Settings) -> None:
        self.settings, self.codec = settings, Codec()
        self.delivered: list[Outgoing] = []

    def name(self, spec: TopicSpec) -> str:
        return spec.name(self.settings.topic_prefix)

    async def deliver(self, outgoing: Sequence[Outgoing]) -> None:
        self.delivered.extend(outgoing)


def oversight(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Oversight:
    """An Oversight whose topic readers are never started."""
    monkeypatch.setattr(Oversight, "_follow", lambda self, key, on_message, **_: None)
    return Oversight(cast(StageRuntime, FakeRuntime(settings)), StatusBoard())


class CountingRegistry:
    """A registry double that counts how often the versions are listed."""

    def __init__(self, *versions: ModelVersion) -> None:
        self.versions, self.listings = list(versions), 0

    def list(self, name: str) -> list[ModelVersion]:
        self.listings += 1
        return [mv for mv in self.versions if mv.name == name]


def model_version(number: int, stage: Stage, promoted_ms: int | None) -> ModelVersion:
    return ModelVersion(name=PRIMARY, version=f"v{number}", created_ms=number, stage=stage,
                        metrics={"accuracy": 0.95}, feature_names=("amount",), threshold=0.5,
                        reference=REF, promoted_ms=promoted_ms)


def inference_health(version: str | None) -> dict[str, Any]:
    return {"stage": "inference", "instance": "i-1", "time": 0, "interval_seconds": 2.0,
            "records_in": 10, "records_out": 10, "dead_lettered": 0, "dead_letters_by_code": {},
            "errors": 0, "latency_p50_ms": 5.0, "latency_p95_ms": 8.0, "latency_p99_ms": 10.0,
            "lag": 0, "mode": "normal", "breakers": {}, "paused": False, "pause_reason": None,
            "model_version": version, "extra": {}}


def test_the_registry_is_read_once_per_served_version_even_one_it_lacks(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    registry = CountingRegistry(model_version(1, "archived", 1), model_version(2, "production", 2))
    monkeypatch.setattr("tidegate.monitoring.oversight.ModelRegistry", lambda root: registry)
    watch = oversight(monkeypatch, Settings(data_dir=tmp_path))
    assert (registry.listings, watch.served) == (1, f"{PRIMARY}:v2")  # production at start

    def report(version: str | None, times: int = 5) -> tuple[int, str | None]:
        for _ in range(times):
            watch.on_health(inference_health(version))
        return registry.listings, watch.served

    assert report(None) == (1, f"{PRIMARY}:v2")  # no primary model: looked up at start
    assert report(f"{PRIMARY}:v2") == (1, f"{PRIMARY}:v2")
    assert report(f"{PRIMARY}:v9") == (2, f"{PRIMARY}:v2")  # not registered: production stands in
    assert report(f"{PRIMARY}:v1") == (3, f"{PRIMARY}:v1")  # the served version changed
    assert report(f"{PRIMARY}:v10") == (4, f"{PRIMARY}:v2")
    registry.versions.append(model_version(11, "candidate", None))
    assert report(f"{PRIMARY}:v11") == (5, f"{PRIMARY}:v11")
    ref = watch.analyst._ref
    assert ref is not None and (ref.version, ref.previous) == (f"{PRIMARY}:v11", f"{PRIMARY}:v2")


def failing_production(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Oversight:
    """v1 then v2 promoted; v2 then gets 50 labels at half the accuracy of its baseline."""
    registry = ModelRegistry(tmp_path / "models")
    for _ in range(2):
        registry.register(PRIMARY, {"stub": True}, metrics={"accuracy": 0.95},
                          feature_names=["amount"], threshold=0.5, reference=REF)
    registry.promote(PRIMARY, "v1")
    registry.promote(PRIMARY, "v2")
    watch = oversight(monkeypatch, Settings(data_dir=tmp_path, accuracy_min_labels=50))
    for i in range(50):
        score = 0.9 if i % 4 < 2 else 0.1
        watch.analyst.on_prediction({"event_id": f"e{i}", "model_version": f"{PRIMARY}:v2",
                                     "score": score, "label": score >= 0.5, "threshold": 0.5,
                                     "path": "primary", "shed": False})  # fmt: skip
        watch.analyst.on_label({"event_id": f"e{i}", "label": i % 2 == 0, "labelled_at": 0})
    return watch


def test_a_rollback_shows_the_command_sent_to_the_control_topic(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    sent: list[dict[str, Any]] = []
    issue = lambda settings, record, **kw: sent.append(record)  # noqa: E731
    monkeypatch.setattr("tidegate.models.lifecycle.issue_command", issue)
    monkeypatch.setattr("tidegate.monitoring.oversight.issue_command", issue)
    watch = failing_production(monkeypatch, tmp_path)
    asyncio.run(watch.assess())
    (issued,) = sent
    assert (issued["action"], issued["parameters"]) == ("rollback",
                                                         {"version": "v1", "model": PRIMARY})
    assert issued["issuer"] == "monitoring" and f"accuracy/{PRIMARY}:v2" in issued["reason"]
    assert watch.snapshot()["actions"] == [issued]  # its id and content, not the analyst's
    assert ModelRegistry(tmp_path / "models").require_production(PRIMARY).version == "v1"


def test_a_rollback_that_fails_still_shows_what_monitoring_decided(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def rollback(*args: Any, **kwargs: Any) -> None:
        raise BrokerError("the rollback command was not delivered")

    monkeypatch.setattr("tidegate.monitoring.oversight.rollback", rollback)
    watch = failing_production(monkeypatch, tmp_path)
    asyncio.run(watch.assess())
    (action,) = watch.snapshot()["actions"]
    assert (action["action"], action["parameters"]) == ("rollback", {"version": "v1"})

"""Monitoring intelligence on the real broker: drift raises an alert, a bad model is rolled back.

Both tests drive the pipeline with the example generator and read what monitoring decided from
its ``/status`` endpoint, the alerts topic and the predictions topic.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterable
from typing import Any

import pytest
from confluent_kafka import Producer

from tests.integration.pipeline import (
    produce,
    read_predictions,
    running_pipeline,
    wait_until_healthy,
)
from tidegate.codec import Codec
from tidegate.example.stream import ExampleMessage, example_messages
from tidegate.kafka.scan import read_topic
from tidegate.models.faults import register_bad_version
from tidegate.models.lifecycle import promote
from tidegate.models.registry import ModelRegistry
from tidegate.models.training import PRIMARY
from tidegate.settings import ClientConfig, Settings

pytestmark = pytest.mark.integration

CHUNK = 500


def _status(settings: Settings) -> dict[str, Any]:
    url = f"http://{settings.status_host}:{settings.status_port}/status"
    with urllib.request.urlopen(url, timeout=5) as reply:
        status: dict[str, Any] = json.loads(reply.read())
    return status


def _config(settings: Settings) -> ClientConfig:
    return {"bootstrap.servers": str(settings.kafka_bootstrap_servers)}


def _alerts(settings: Settings) -> list[dict[str, Any]]:
    codec = Codec()
    return [codec.decode(m.value() or b"")
            for m in read_topic(_config(settings), settings.topic_prefix + "alerts")]


def _send_labels(settings: Settings, messages: Iterable[ExampleMessage]) -> int:
    """The ground truth of ``messages`` on the labels topic, as a labelling service sends it."""
    codec, topic = Codec(), settings.topic_prefix + "labels"
    producer = Producer({**_config(settings), "acks": "all"})
    sent = 0
    for message in messages:
        if message.event_id is None or message.label is None:
            continue
        record = {"event_id": message.event_id, "label": bool(message.label),
                  "labelled_at": int(time.time() * 1000)}
        producer.produce(topic, key=message.event_id.encode(),
                         value=codec.encode("tidegate.Label", record, topic=topic))
        sent += 1
    assert producer.flush(15) == 0
    return sent


def test_drift_raises_an_alert_and_a_warning_level(pipeline_settings: Settings) -> None:
    with running_pipeline(pipeline_settings):
        wait_until_healthy(pipeline_settings)
        # normal traffic first: enough for a judgement, and no drift alert
        baseline = list(example_messages(3_000, seed=41, events_per_second=5_000))
        produce(pipeline_settings, baseline)
        status = _status(pipeline_settings)
        deadline = time.monotonic() + 60
        while status.get("drift", {}).get("events", 0) < 2_500 and time.monotonic() < deadline:
            time.sleep(1.0)
            status = _status(pipeline_settings)
        assert status["drift"]["judged"], status["drift"]
        inputs = [name for name in status["drift"]["drifted"] if name != "score"]
        assert not inputs, f"drift on normal traffic: {status['drift']}"
        drifted = example_messages(40_000, seed=42, drift=1.0, events_per_second=5_000)
        sent = 0
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            produce(pipeline_settings, (next(drifted) for _ in range(CHUNK)))
            sent += CHUNK
            time.sleep(1.0)
            status = _status(pipeline_settings)
            drift_alerts = [alert for alert in status.get("alerts", [])
                            if alert["kind"] == "drift" and alert["severity"] != "info"]
            if drift_alerts and status["crisis"]["system"] != "NORMAL":
                break
        else:
            raise AssertionError(f"no drift alert after {sent} drifted events: "
                                 f"{status.get('drift')}")
    drift = status["drift"]
    assert status["crisis"]["system"] == "WARNING", status["crisis"]
    assert drift["drifted"], drift
    published = [a for a in _alerts(pipeline_settings)
                 if a["kind"] == "drift" and a["severity"] == "warning"]
    assert published and published[0]["status"] == "firing"
    worst = max(drift["features"].items(), key=lambda item: item[1]["psi"])
    print(f"\ndrift alert and system WARNING after {sent} drifted events "
          f"(after {len(baseline)} normal ones); drifted features {drift['drifted'][:5]}, "
          f"worst {worst[0]} PSI {worst[1]['psi']:.2f} KS {worst[1]['ks']:.2f}")


def test_a_bad_production_model_is_rolled_back_automatically(pipeline_settings: Settings,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    monkeypatch.setenv("TIDEGATE_ACCURACY_MIN_LABELS", "300")
    with running_pipeline(pipeline_settings):
        wait_until_healthy(pipeline_settings)
        registry = ModelRegistry(pipeline_settings.registry_dir)
        good = registry.require_production(PRIMARY).version
        bad = register_bad_version(registry, PRIMARY)
        promote(pipeline_settings, PRIMARY, bad.version, reason="drill: a bad model",
                issuer="test", force=True)
        bad_name, good_name = f"{PRIMARY}:{bad.version}", f"{PRIMARY}:{good}"
        stream = example_messages(60_000, seed=43, events_per_second=5_000)
        labelled = 0
        rolled_back_after: int | None = None
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and rolled_back_after is None:
            chunk = [next(stream) for _ in range(CHUNK)]
            produce(pipeline_settings, chunk)
            time.sleep(1.0)  # predictions first, then their labels, as in production
            labelled += _send_labels(pipeline_settings, chunk)
            accuracy = _status(pipeline_settings).get("accuracy", {})
            if registry.require_production(PRIMARY).version == good:
                rolled_back_after = labelled
        assert rolled_back_after is not None, f"no rollback after {labelled} labels: {accuracy}"
        # later predictions carry the previous version again: the registry changes first, then
        # the rollback command reaches inference, which loads the version while it serves
        since = int(time.time() * 1000)
        versions: set[str] = set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and good_name not in versions:
            produce(pipeline_settings, (next(stream) for _ in range(CHUNK // 5)))
            time.sleep(1.0)
            versions = {r["model_version"] for r in read_predictions(pipeline_settings,
                                                                     since_ms=since)
                        if r["path"] == "primary"}
        status = _status(pipeline_settings)
    assert good_name in versions, f"predictions after the rollback came from {versions}"
    actions = [a for a in status.get("actions", []) if a["action"] == "rollback"]
    assert actions and actions[0]["issuer"] == "monitoring", status.get("actions")
    measured = status["accuracy"].get(bad_name, {})
    print(f"\nbad model {bad_name} rolled back to {good_name} automatically after {labelled} "
          f"labelled events (accuracy of {bad_name}: {measured.get('accuracy')})")

"""Signed control commands through the real broker: what a forger can and cannot do.

With TIDEGATE_CONTROL_KEY set, a forged, unsigned, expired, unknown-key or replayed command on
the control topic leaves the inference stage's mode as it was, and each refusal is on the audit
topic with its reason; a command the CLI signs is obeyed, also after a restart.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from confluent_kafka import Producer

from tests.integration.pipeline import (
    produce,
    read_predictions,
    running_pipeline,
    wait_until_healthy,
)
from tidegate.cli.main import main
from tidegate.cli.supervisor import Supervisor
from tidegate.codec import Codec
from tidegate.control import command, command_key
from tidegate.example.stream import example_messages
from tidegate.kafka.scan import read_topic
from tidegate.settings import ClientConfig, Settings, load_settings
from tidegate.signing import ControlKeys, sign

pytestmark = pytest.mark.integration

KEY = "k2:integration-secret-0123456789"


def _paths_of_trickle(settings: Settings, supervisor: Supervisor, seed: int) -> set[str]:
    """Send 50 events; once all of them are predicted, the paths they took."""
    since = int(time.time() * 1000)
    sent = {m.event_id for m in produce(settings, example_messages(
        50, seed=seed, bad_rate=0.0, json_share=0.0, events_per_second=5000))}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        supervisor.poll()
        predicted = [r for r in read_predictions(settings, since_ms=since)
                     if r["event_id"] in sent]
        if len({r["event_id"] for r in predicted}) == len(sent):
            return {r["path"] for r in predicted}
        time.sleep(0.5)
    raise AssertionError("the trickle was not predicted within 60 s")


def _until_path(settings: Settings, supervisor: Supervisor, path: str, *, seed: int) -> None:
    for attempt in range(30):
        if _paths_of_trickle(settings, supervisor, seed + attempt) == {path}:
            return
    raise AssertionError(f"predictions never moved to the {path} path")


def _write_raw(settings: Settings, values: list[tuple[bytes, bytes]]) -> None:
    """Put records on the control topic as anyone with write access could."""
    producer = Producer({"bootstrap.servers": str(settings.kafka_bootstrap_servers)})
    for key, value in values:
        producer.produce(settings.topic_prefix + "control", key=key, value=value)
    assert producer.flush(15) == 0


def _encoded(settings: Settings, record: dict[str, Any]) -> tuple[bytes, bytes]:
    topic = settings.topic_prefix + "control"
    return command_key(record), Codec().encode("tidegate.ControlCommand", record, topic=topic)


def _refusals(settings: Settings) -> list[dict[str, Any]]:
    config: ClientConfig = {"bootstrap.servers": str(settings.kafka_bootstrap_servers)}
    records = [json.loads(m.value() or b"{}")
               for m in read_topic(config, settings.topic_prefix + "audit")]
    return [r for r in records if r.get("kind") == "control-refused"]


def _wait_for_refusals(settings: Settings, supervisor: Supervisor, wanted: list[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        supervisor.poll()
        reasons = sorted(r["reason"] for r in _refusals(settings) if r["stage"] == "inference")
        if reasons == sorted(wanted):
            return
        time.sleep(0.5)
    raise AssertionError(f"audit shows refusals {reasons}, wanted {sorted(wanted)}")


def test_forged_commands_change_nothing_and_are_audited(
        pipeline_settings: Settings, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TIDEGATE_CONTROL_KEY", KEY)
    settings = load_settings()
    keys = settings.control_keys
    with running_pipeline(settings) as supervisor:
        wait_until_healthy(settings)
        _until_path(settings, supervisor, "primary", seed=10)
        assert main(["control", "degrade", "inference", "--reason", "test: signed"]) == 0
        _until_path(settings, supervisor, "fallback", seed=100)

        def restore(**changes: Any) -> dict[str, Any]:
            return {**command("inference", "restore", reason="forger", issuer="mallory"),
                    **changes}

        forged = {**sign(restore(), keys), "reason": "looks legitimate"}
        unsigned = sign(restore(), ControlKeys())
        expired = sign(restore(time=int(time.time() * 1000) - 3_600_000), keys)
        stranger = sign(restore(), ControlKeys.parse("k9:a-key-nobody-configured"))
        _write_raw(settings, [_encoded(settings, r) for r in (forged, unsigned, expired,
                                                               stranger)])
        _wait_for_refusals(settings, supervisor, ["expired", "forged", "unknown-key",
                                                  "unsigned"])
        assert _paths_of_trickle(settings, supervisor, seed=200) == {"fallback"}

        # The signed degrade, copied byte for byte after a signed restore: a replay.
        config: ClientConfig = {"bootstrap.servers": str(settings.kafka_bootstrap_servers)}
        degrade = next(m for m in read_topic(config, settings.topic_prefix + "control")
                       if Codec().decode(m.value() or b"")["action"] == "degrade")
        assert main(["control", "restore", "inference", "--reason", "test: signed"]) == 0
        _until_path(settings, supervisor, "primary", seed=300)
        _write_raw(settings, [(degrade.key() or b"", degrade.value() or b"")])
        _wait_for_refusals(settings, supervisor, ["expired", "forged", "replayed",
                                                  "unknown-key", "unsigned"])
        assert _paths_of_trickle(settings, supervisor, seed=400) == {"primary"}

        # A restarted stage reads the whole topic again: the copy is still a replay to it.
        inference = supervisor.children["inference"].process
        assert inference is not None
        inference.terminate()
        inference.wait(30)
        assert _paths_of_trickle(settings, supervisor, seed=500) == {"primary"}

        capsys.readouterr()
        assert main(["status"]) == 0
        out = capsys.readouterr().out
        assert "control commands: signed, HMAC-SHA256 with key k2; refused: " in out
        assert "forged 1" in out and "replayed" in out

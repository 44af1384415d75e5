"""Chaos on the real broker: one input partition of one stage freezes while the others flow.

``tidegate up`` must name the partition in an alert (its log and the alerts topic), restart the
stage, and lose nothing: every event ends in predictions or in exactly one dead-letter topic.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.pipeline import (
    example_registry,
    expectations,
    health_events,
    produce,
    read_outputs,
    wait_for_outputs,
    wait_until_healthy,
)
from tidegate.codec import Codec
from tidegate.example.badrecords import ALL_KINDS
from tidegate.example.stream import example_messages
from tidegate.kafka.scan import read_topic
from tidegate.settings import ClientConfig, Settings

pytestmark = pytest.mark.chaos

STALL_SECONDS = 5
_KINDS = [kind for kind in ALL_KINDS if kind.name != "duplicate_event_id"]


class _Up:
    """``tidegate up`` on the session broker with the test's environment; its output kept."""

    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "tidegate.cli.main", "up"],
                                        env=dict(os.environ), stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def wait_for(self, wanted: Callable[[str], bool], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((line for line in list(self.lines) if wanted(line)), None)
            if found is not None:
                return found
            assert self.process.poll() is None, "tidegate up exited:\n" + "".join(self.lines)
            time.sleep(0.2)
        raise AssertionError("not in the output of tidegate up:\n" + "".join(self.lines))

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _ingest_instances(settings: Settings, *, at_least: int, timeout: float = 10.0) -> set[str]:
    """The ingest processes that sent health events, once ``at_least`` did (or the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        seen = {str(e["instance"]) for e in health_events(settings) if e["stage"] == "ingest"}
        if len(seen) >= at_least or time.monotonic() > deadline:
            return seen
        time.sleep(0.5)


def _statuses(settings: Settings, key: str, *, until: str, timeout: float = 10.0) -> list[str]:
    """The statuses of alert ``key`` on the alerts topic, once ``until`` is among them."""
    config: ClientConfig = {"bootstrap.servers": str(settings.kafka_bootstrap_servers)}
    codec = Codec()
    deadline = time.monotonic() + timeout
    while True:
        alerts = [codec.decode(m.value() or b"")
                  for m in read_topic(config, settings.topic_prefix + "alerts")]
        statuses = [str(a["status"]) for a in alerts if a["key"] == key]
        if until in statuses or time.monotonic() > deadline:
            return statuses
        time.sleep(0.5)


def test_a_frozen_partition_is_named_restarted_and_loses_nothing(
        pipeline_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = pipeline_settings
    for name, value in {"TIDEGATE_STALL_SECONDS": str(STALL_SECONDS),
                        "TIDEGATE_FAULT_FREEZE_PARTITION": "ingest:0",
                        "TIDEGATE_LOG_LEVEL": "WARNING"}.items():
        monkeypatch.setenv(name, value)
    example_registry(settings.registry_dir)  # trained once per session, not by up
    messages = list(example_messages(3000, seed=31, kinds=_KINDS, bad_rate=0.02,
                                     events_per_second=20_000))
    predicted, dead = expectations(messages)
    topic = settings.topic_prefix + "events"
    up = _Up()
    try:
        up.wait_for(lambda line: "stages running" in line, timeout=60)
        try:
            wait_until_healthy(settings)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{''.join(up.lines)}") from exc
        began = time.monotonic()
        produce(settings, messages)
        alert = up.wait_for(lambda line: "ALERT partition stall" in line, timeout=30)
        detected = time.monotonic() - began
        flowing = len(read_outputs(settings).predictions)
        assert f"partition 0 of {topic}" in alert, alert
        assert 0 < flowing < len(predicted), "the other partitions should flow meanwhile"
        up.wait_for(lambda line: "restarting ingest: stalled partitions" in line, timeout=5)
        outputs = wait_for_outputs(
            settings, len(messages), timeout=45,
            done=lambda out: set(predicted) <= set(out.predictions) and set(dead) <= set(out.dead))
        took = time.monotonic() - began
        instances = _ingest_instances(settings, at_least=2)
        up.wait_for(lambda line: "partition stall over" in line, timeout=10)
        statuses = _statuses(settings, f"ingest/partition_stall/{topic}/0", until="resolved")
    finally:
        up.stop()
    assert len(instances) >= 2, "ingest was not restarted"
    lost = set(predicted) - set(outputs.predictions)
    assert not lost, f"{len(lost)} events lost after the partition stall"
    assert set(outputs.predictions) == set(predicted), "a prediction for an unknown event id"
    assert set(outputs.dead) == set(dead), "a bad record missing or in the wrong dead-letter topic"
    values = [value for _, _, value in outputs.dead]
    assert len(values) == len(set(values)), "a bad record in more than one dead-letter topic"
    named = f"partition 0 of {topic}"
    others = [line for line in up.lines if "ALERT" in line and named not in line]
    assert not others, f"only the frozen partition may stall: {others}"
    restarts = [line for line in up.lines if "supervisor: restarting " in line]
    assert len(restarts) == 1 and "stalled partitions" in restarts[0], \
        f"only the partition rule should restart a stage here: {restarts}"
    assert statuses == ["firing", "resolved"], statuses
    assert (Path(settings.data_dir) / "faults" / "freeze-ingest-0").exists()
    repeats = sum(outputs.predictions.values()) - len(predicted)
    print(f"\nfrozen ingest partition 0: alert {detected:.1f} s after the events were sent "
          f"({flowing} predicted from the other partitions by then), all {len(messages)} "
          f"events accounted for after {took:.1f} s, {repeats} repeated predictions\n"
          f"{alert.strip()}")

"""Chaos on the real broker: a stopped stage, a restarted broker. Nothing may be lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.integration.pipeline import free_port, produce, read_outputs
from tidegate.example.badrecords import ALL_KINDS
from tidegate.example.stream import example_messages
from tidegate.kafka.broker import start_broker, stop_broker
from tidegate.settings import Settings, load_settings

pytestmark = pytest.mark.chaos

_KINDS = [kind for kind in ALL_KINDS if kind.name != "duplicate_event_id"]


def _stage_pid(data_dir: Path, stage: str) -> int | None:
    """The pid of ``stage``'s process started by ``tidegate up`` for ``data_dir``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if b"stage" in cmdline and stage.encode() in cmdline and str(data_dir).encode() in environ:
            return int(entry.name)
    return None


class _Up:
    """``tidegate up`` with its own embedded broker, as a user runs it."""

    def __init__(self, data_dir: Path, **extra: str) -> None:
        self.data_dir = data_dir
        self.env = {k: v for k, v in os.environ.items()
                    if k != "KAFKA_BOOTSTRAP_SERVERS" and not k.startswith("TIDEGATE_")}
        self.env.update(TIDEGATE_DATA_DIR=str(data_dir), TIDEGATE_STATUS_PORT=str(free_port()),
                        TIDEGATE_LOG_LEVEL="WARNING", **extra)
        self.process = subprocess.Popen([sys.executable, "-m", "tidegate.cli.main", "up"],
                                        env=self.env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        assert self.process.stdout is not None
        self.lines: list[str] = []
        for line in self.process.stdout:
            self.lines.append(line)
            if "stages running" in line:
                break
        assert self.process.poll() is None, "".join(self.lines)
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def settings(self) -> Settings:
        old = dict(os.environ)
        os.environ.update(self.env)
        try:
            settings = load_settings()
        finally:
            os.environ.clear()
            os.environ.update(old)
        from tidegate.kafka.clients import bootstrap_servers

        return settings.model_copy(update={"kafka_bootstrap_servers":
                                           bootstrap_servers(settings)})

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        self.process.wait(60)


def _wait_all(settings: Settings, event_ids: set[str | None], timeout: float) -> set[str]:
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    while time.monotonic() < deadline:
        seen = set(read_outputs(settings).predictions)
        if event_ids <= seen:
            break
        time.sleep(1.0)
    return seen


def test_a_stopped_stage_is_detected_restarted_and_loses_nothing(tmp_path: Path) -> None:
    up = _Up(tmp_path / "stall")
    try:
        settings = up.settings()
        messages = list(example_messages(6000, seed=21, kinds=_KINDS, bad_rate=0.0,
                                         events_per_second=20_000))
        produce(settings, messages[:2000])
        victim = _stage_pid(up.data_dir, "feature")
        assert victim is not None
        os.kill(victim, signal.SIGSTOP)
        stopped_at = time.monotonic()
        produce(settings, messages[2000:])
        replacement = None
        while time.monotonic() - stopped_at < 60:
            replacement = _stage_pid(up.data_dir, "feature")
            if replacement not in (None, victim):
                break
            time.sleep(0.5)
        detected = time.monotonic() - stopped_at
        assert replacement not in (None, victim), "the stopped stage was never restarted"
        print(f"\nSIGSTOP feature: restarted after {detected:.1f} s")
        assert detected <= 30 + 10, "stall detection took longer than its 30 s setting allows"
        seen = _wait_all(settings, {m.event_id for m in messages}, timeout=120)
        assert {m.event_id for m in messages} <= seen, "events lost after a stall"
    finally:
        up.stop()


def test_every_stage_recovers_from_a_broker_restart(tmp_path: Path) -> None:
    up = _Up(tmp_path / "restart")
    broker_settings = None
    try:
        settings = up.settings()
        messages = list(example_messages(6000, seed=22, kinds=_KINDS, bad_rate=0.0,
                                         events_per_second=20_000))
        produce(settings, messages[:3000])
        broker_settings = load_settings().model_copy(
            update={"data_dir": up.data_dir, "kafka_bootstrap_servers": None})
        stop_broker(broker_settings)
        time.sleep(3.0)
        began = time.monotonic()
        state = start_broker(broker_settings, die_with_parent=True)
        assert state.bootstrap == settings.kafka_bootstrap_servers, "the broker moved ports"
        produce(settings, messages[3000:])
        seen = _wait_all(settings, {m.event_id for m in messages}, timeout=180)
        lost = {m.event_id for m in messages} - seen
        assert not lost, (f"{len(lost)} events lost across a broker restart; tidegate up said:\n"
                          + "".join(up.lines[-60:]))
        print(f"\nbroker restart: all {len(messages)} events predicted "
              f"{time.monotonic() - began:.1f} s after the broker came back")
        assert up.process.poll() is None, "tidegate up died with the broker"
    finally:
        up.stop()
        if broker_settings is not None:
            stop_broker(broker_settings)

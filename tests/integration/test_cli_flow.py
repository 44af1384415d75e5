"""A new user's first run, from the README: up, produce, tail, dlq ls, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.pipeline import free_port

pytestmark = pytest.mark.integration


def _tidegate(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    result = subprocess.run([sys.executable, "-m", "tidegate.cli.main", *args], env=env,
                            capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"tidegate {' '.join(args)}: {result.stderr[-2000:]}"
    return result.stdout


def _our_processes(marker: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                environ = (entry / "environ").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if entry.name != str(os.getpid()) and (marker in cmdline or marker in environ):
                found.append(cmdline[:200])
    return found


def test_up_produce_tail_dlq(tmp_path: Path) -> None:
    data_dir = tmp_path / "first-run"
    env = {key: value for key, value in os.environ.items()
           if key != "KAFKA_BOOTSTRAP_SERVERS" and not key.startswith("TIDEGATE_")}
    env.update(TIDEGATE_DATA_DIR=str(data_dir), TIDEGATE_STATUS_PORT=str(free_port()))
    up = subprocess.Popen([sys.executable, "-m", "tidegate.cli.main", "up"], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert up.stdout is not None
        lines = []
        for line in up.stdout:  # wait for the line that says everything runs
            lines.append(line)
            if "stages running" in line:
                break
        assert up.poll() is None, "".join(lines)
        sent = _tidegate(env, "produce", "--generate", "10000", "--bad-rate", "0.05")
        assert "sent 10000 events" in sent
        tail = _tidegate(env, "tail", "predictions", "--from-beginning", "--max", "5")
        predictions = [json.loads(line) for line in tail.splitlines()]
        assert len(predictions) == 5
        assert all(0.0 <= p["score"] <= 1.0 and p["path"] == "primary" for p in predictions)
        deadline, counts = time.monotonic() + 120, {}
        while time.monotonic() < deadline:
            counts = json.loads(_tidegate(env, "dlq", "ls", "--json"))
            if sum(counts["ingest"].values()) + sum(counts["validation"].values()) >= 450:
                break
            time.sleep(2)
        assert counts["ingest"] and counts["validation"], counts
        assert {"INVALID_JSON", "TRUNCATED_AVRO"} <= set(counts["ingest"]), counts
        assert "NOT_FINITE" in counts["validation"], counts
        table = _tidegate(env, "dlq", "ls")
        assert "validation" in table and "OUT_OF_RANGE" in table
        deadline, states = time.monotonic() + 60, {}
        while time.monotonic() < deadline:  # monitoring may still be catching up on health
            status = json.loads(_tidegate(env, "status", "--json"))
            states = {stage: info["state"] for stage, info in status["stages"].items()}
            if set(states.values()) == {"up"}:
                break
            time.sleep(1)
        assert set(states.values()) == {"up"}, states
        assert status["predictions"]["total"] > 0
    finally:
        up.send_signal(signal.SIGINT)
        code = up.wait(timeout=60)
    assert code == 0
    leftovers = _our_processes(str(data_dir))
    assert leftovers == [], f"processes left after Ctrl-C: {leftovers}"

"""Stage metrics: counters per interval, latency percentiles, and the health event they make."""

from __future__ import annotations

import os
import socket
import time

import pytest

from tidegate.codec import Codec
from tidegate.monitoring.status import StatusBoard
from tidegate.runtime.metrics import StageMetrics, instance_name

pytestmark = pytest.mark.unit

HEALTH = "tidegate.HealthEvent"


def test_instance_name_names_stage_host_and_process() -> None:
    assert instance_name("feature") == f"feature@{socket.gethostname()}:{os.getpid()}"
    assert StageMetrics(stage="feature").instance == instance_name("feature")
    assert StageMetrics(stage="feature", instance="f-1").instance == "f-1"


def test_snapshot_reports_the_interval_and_resets_its_counters() -> None:
    metrics = StageMetrics(stage="validation", instance="v-1")
    metrics.record_batch(records_in=10, records_out=8, latencies_ms=[1.0, 2.0])
    metrics.record_batch(records_in=5, records_out=5)
    metrics.record_dead_letters(["REQUIRED", "OUT_OF_RANGE", "REQUIRED"])
    metrics.record_error()
    before = int(time.time() * 1000)
    first = metrics.snapshot(lag=42)

    assert first["stage"] == "validation" and first["instance"] == "v-1"
    assert (first["records_in"], first["records_out"]) == (15, 13)
    assert first["dead_lettered"] == 3
    assert first["dead_letters_by_code"] == {"REQUIRED": 2, "OUT_OF_RANGE": 1}
    assert first["errors"] == 1
    assert first["lag"] == 42
    assert before <= int(str(first["time"])) <= int(time.time() * 1000)
    assert float(str(first["interval_seconds"])) >= 0.0

    second = metrics.snapshot(lag=0)
    assert (second["records_in"], second["records_out"], second["dead_lettered"],
            second["errors"]) == (0, 0, 0, 0)
    assert second["dead_letters_by_code"] == {}
    assert (second["latency_p50_ms"], second["latency_p95_ms"], second["latency_p99_ms"]) == (
        0.0, 0.0, 0.0)
    # totals survive snapshots
    assert metrics.totals == {"in": 15, "out": 13, "dead_lettered": 3, "errors": 1}


def test_snapshot_copies_its_maps() -> None:
    metrics = StageMetrics(stage="inference", instance="i-1")
    metrics.breakers["model"] = "closed"
    event = metrics.snapshot(lag=0)
    metrics.breakers["model"] = "open"
    assert event["breakers"] == {"model": "closed"}


def test_latency_percentiles() -> None:
    metrics = StageMetrics(stage="feature", instance="f-1")
    metrics.record_batch(records_in=50, records_out=50, latencies_ms=range(1, 51))
    metrics.record_batch(records_in=50, records_out=50, latencies_ms=(float(v) for v in
                                                                      range(51, 101)))
    event = metrics.snapshot(lag=0)
    assert event["latency_p50_ms"] == pytest.approx(50.5)
    assert event["latency_p95_ms"] == pytest.approx(95.05)
    assert event["latency_p99_ms"] == pytest.approx(99.01)


def test_latency_sample_is_bounded() -> None:
    metrics = StageMetrics(stage="ingest", instance="n-1")
    for start in range(0, 100_000, 1_000):
        metrics.record_batch(records_in=1_000, records_out=1_000,
                             latencies_ms=[float(v) for v in range(start, start + 1_000)])
    assert (metrics._latencies.shape, metrics._filled) == ((4_096,), 4_096)
    event = metrics.snapshot(lag=0)
    assert event["records_in"] == 100_000
    # a bounded uniform sample of the whole interval: the median of 0..99 999 lies near
    # 50 000 (a sample of the first values only would put it near 2 000)
    assert event["latency_p50_ms"] == pytest.approx(50_000, rel=0.06)
    assert event["latency_p99_ms"] == pytest.approx(99_000, rel=0.02)
    metrics.record_batch(records_in=1, records_out=1, latencies_ms=[7.0])
    assert metrics.snapshot(lag=0)["latency_p99_ms"] == 7.0  # the sample starts over


def test_the_snapshot_is_a_valid_health_event() -> None:
    codec = Codec()
    metrics = StageMetrics(stage="inference", instance="i-1")
    quiet = metrics.snapshot(lag=0)
    assert codec.decode(codec.encode(HEALTH, quiet)) == quiet

    metrics.mode = "degraded"
    metrics.breakers = {"primary": "open", "feature_state": "half_open"}
    metrics.paused = True
    metrics.pause_reason = "dead-letter rate"
    metrics.model_version = "fraud-primary:v3"
    metrics.extra = {"warning.customer_age": "share missing 0.3"}
    metrics.record_batch(records_in=3, records_out=2, latencies_ms=[3.0, 4.0, 5.0])
    metrics.record_dead_letters(["SCORING"])
    busy = metrics.snapshot(lag=17)
    assert codec.decode(codec.encode(HEALTH, busy)) == busy
    assert busy["mode"] == "degraded" and busy["pause_reason"] == "dead-letter rate"


def test_the_status_board_reads_decoded_health_events() -> None:
    codec, board = Codec(), StatusBoard()
    metrics = StageMetrics(stage="ingest", instance="n-1")
    metrics.record_batch(records_in=7, records_out=6, latencies_ms=[2.0])
    metrics.record_dead_letters(["BAD_MAGIC"])
    board.on_health(codec.decode(codec.encode(HEALTH, metrics.snapshot(lag=5))), now=100.0)
    info = board.snapshot(now=101.0)["stages"]["ingest"]
    assert (info["state"], info["records_in"], info["lag"]) == ("up", 7, 5)
    assert info["dead_letters_by_code"] == {"BAD_MAGIC": 1}


def test_reporters_add_to_one_event_only() -> None:
    metrics = StageMetrics(stage="inference", instance="host-1")
    taken = iter([{"drift": "{}", "drift_version": "fraud-primary:v1"}, {}])
    metrics.reporters.append(lambda: next(taken))
    first = metrics.snapshot(lag=0)
    second = metrics.snapshot(lag=0)
    assert first["extra"]["drift_version"] == "fraud-primary:v1"  # type: ignore[index]
    assert "drift" not in second["extra"]  # type: ignore[operator]

"""The benchmark's bookkeeping: per-stage folding, CPU per event, restamping and the report."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from tidegate.cli.benchmark import _per_event, _per_stage, _restamp, _stage_commands, render
from tidegate.codec import Codec
from tidegate.example.stream import example_messages

pytestmark = pytest.mark.unit


def report() -> dict[str, Any]:
    return {
        "machine": {"cpus": 2, "python": "3.11.7"}, "record_bytes": 211,
        "ceiling": {"produce_per_s": 50_000.0, "consume_per_s": 100_000.0},
        "raw": {"events_per_s": 120_000.0},
        "pipeline": {
            "workers_per_stage": 1,
            "max_rate": {"events": 100_000, "complete": True, "events_per_s": 7_000.0,
                         "cpu_s": {"ingest": 4.5, "inference": 3.5, "broker": 9.9}},
            "half_rate": {"events_per_s": 3_500.0, "events": 70_000, "given": False,
                          "p50_ms": 401.2, "p95_ms": 650.0, "p99_ms": 712.9,
                          "written_p50_ms": 390.0, "written_p99_ms": 700.4,
                          "send_lag_p50_ms": 0.0, "send_lag_p99_ms": 12.6,
                          "cpu_s": {"ingest": 5.6, "inference": 4.2, "broker": 14.0}},
            "peak_rss_mb": {"ingest": 131.6, "inference": 213.0},
        },
        "ratios": {"pipeline_over_raw": 7_000 / 120_000, "pipeline_over_ceiling": 0.14},
    }  # fmt: skip


def test_processes_of_a_stage_fold_into_one_figure() -> None:
    cpu = {"ingest.1": 1.5, "ingest.2": 2.0, "monitoring": 0.5, "broker": 3.0}
    assert _per_stage(cpu, sum) == {"ingest": 3.5, "monitoring": 0.5, "broker": 3.0}
    assert _per_stage({"feature.1": 110.0, "feature.2": 95.0}, max) == {"feature": 110.0}


def test_cpu_per_event_is_microseconds_per_event_of_the_run() -> None:
    run = report()["pipeline"]["max_rate"]
    assert _per_event(run) == "ingest 45 µs, inference 35 µs, broker 99 µs"


def test_the_report_names_every_figure() -> None:
    text = render(report())
    assert "produce     50,000 events/s, consume    100,000 events/s" in text
    assert "pipeline maximum:      7,000 events/s (100000 events, five stages, " \
           "1 process(es) per data stage)" in text
    assert "pipeline at half:      3,500 events/s: latency p50 401 ms, p95 650 ms, p99 713 ms" \
        in text
    assert "written: p50 390 ms, p99 700 ms" in text
    assert "sends were late by p50 0 ms, p99 13 ms" in text
    assert "cpu per event, max rate: ingest 45 µs, inference 35 µs, broker 99 µs" in text
    assert "cpu per event, latency run: ingest 80 µs, inference 60 µs, broker 200 µs" in text
    assert "peak RSS: ingest 132 MB, inference 213 MB" in text
    assert "pipeline/raw 0.06" in text


def test_a_set_latency_rate_is_named_as_such() -> None:
    given = report()
    given["pipeline"]["half_rate"]["given"] = True
    assert "pipeline at set:      3,500 events/s" in render(given)


def test_data_stages_get_workers_and_monitoring_stays_single() -> None:
    one = _stage_commands(1)
    assert sorted(one) == ["feature", "inference", "ingest", "monitoring", "validation"]
    assert one["ingest"] == [sys.executable, "-m", "tidegate.cli.main", "stage", "run",
                             "ingest", "--worker", "0"]
    two = _stage_commands(2)
    assert sorted(two) == ["feature.1", "feature.2", "inference.1", "inference.2", "ingest.1",
                           "ingest.2", "monitoring", "validation.1", "validation.2"]
    assert two["validation.2"][-2:] == ["--worker", "1"]


def test_restamped_events_are_due_at_the_send_rate() -> None:
    messages = list(example_messages(50, seed=4, json_share=0.5))
    values = _restamp(messages, start_ms=1_800_000_000_000, rate=200.0)
    codec = Codec()
    times = [codec.decode_any(value)[1]["event_time"] for value in values]
    assert times == [1_800_000_000_000 + 5 * i for i in range(50)]
    assert [codec.decode_any(v)[1]["event_id"] for v in values] == [m.event_id for m in messages]

"""The benchmark's bookkeeping: per-stage folding, CPU per event, restamping and the report."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from tidegate.cli.benchmark import (
    _per_event,
    _per_stage,
    _restamp,
    render,
    stage_commands,
    verdicts,
)
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
                         "seconds": 14.3,
                         "cpu_s": {"ingest": 4.5, "inference": 3.5, "broker": 9.9, "load": 2.0},
                         "broker": {"requests": {"Produce": 5_000.0, "Fetch": 40_000.0,
                                                 "Metadata": 20.0},
                                    "bytes_in": {"events": 23_000_000.0, "predictions": 9e6},
                                    "bytes_out": {"events": 23_000_000.0, "predictions": 18e6},
                                    "messages_in": {"events": 100_000.0,
                                                    "predictions": 100_000.0}}},
            "half_rate": {"events_per_s": 3_500.0, "events": 70_000, "given": False,
                          "p50_ms": 401.2, "p95_ms": 650.0, "p99_ms": 712.9,
                          "written_p50_ms": 390.0, "written_p99_ms": 700.4,
                          "send_lag_p50_ms": 0.0, "send_lag_p99_ms": 12.6,
                          "busy_share": 0.45,
                          "cpu_s": {"ingest": 5.6, "inference": 4.2, "broker": 14.0}},
            "low_rate": {"events_per_s": 2_000.0, "events": 40_000, "p50_ms": 40.0,
                         "p95_ms": 70.0, "p99_ms": 90.0, "written_p50_ms": 35.0,
                         "written_p99_ms": 80.0, "send_lag_p50_ms": 0.0, "send_lag_p99_ms": 1.0,
                         "busy_share": 0.2, "cpu_s": {"ingest": 1.0, "broker": 2.0},
                         "hops": {"ingest start": {"events": 40_000, "p50_ms": 21.4,
                                                   "p99_ms": 48.6},
                                  "ingest": {"events": 40_000, "p50_ms": 24.0, "p99_ms": 51.0},
                                  "validation": {"events": 0}}},
            "idle_core_share": {"ingest": 0.021, "broker": 0.114},
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
    assert _per_event(run) == "ingest 45 µs, inference 35 µs, broker 99 µs, load 20 µs"


def test_the_report_names_every_figure() -> None:
    text = render(report())
    assert "produce     50,000 events/s, consume    100,000 events/s" in text
    assert "pipeline maximum:      7,000 events/s (100000 events, five stages, " \
           "1 process(es) per data stage)" in text
    assert "pipeline at half:      3,500 events/s: latency p50 401 ms, p95 650 ms, p99 713 ms" \
        in text
    assert "written: p50 390 ms, p99 700 ms" in text
    assert "sends were late by p50 0 ms, p99 13 ms" in text
    assert "cpu per event: ingest 45 µs, inference 35 µs, broker 99 µs, load 20 µs; " \
        "the stages together 80 µs" in text
    assert "cpu per event: ingest 80 µs, inference 60 µs, broker 200 µs" in text
    assert "broker requests per event (per second): Fetch 0.400 (2,797/s), " \
        "Produce 0.050 (350/s)" in text
    assert "events 230/230 B 1.00, predictions 90/180 B 1.00" in text
    assert "pipeline at low:      2,000 events/s: latency p50 40 ms" in text
    # a hop no event was read at is left out, not shown as zero
    assert "event time to each hop, p50/p99 ms: ingest start 21/49, ingest 24/51\n" in text
    assert "cores 45% busy" in text
    assert "peak RSS: ingest 132 MB, inference 213 MB" in text
    assert "pipeline/raw 0.06" in text
    assert "idle, share of one core: ingest 2.1%, broker 11.4%" in text


def test_a_report_without_the_idle_reading_leaves_its_line_out() -> None:
    older = report()
    del older["pipeline"]["idle_core_share"]
    assert "idle" not in render(older)


def test_a_set_latency_rate_is_named_as_such() -> None:
    given = report()
    given["pipeline"]["half_rate"]["given"] = True
    assert "pipeline at set:      3,500 events/s" in render(given)


def test_data_stages_get_workers_and_monitoring_stays_single() -> None:
    one = stage_commands(1)
    assert sorted(one) == ["feature", "inference", "ingest", "monitoring", "validation"]
    assert one["ingest"] == [sys.executable, "-m", "tidegate.cli.main", "stage", "run",
                             "ingest", "--worker", "0"]
    two = stage_commands(2)
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


def test_each_target_is_judged_and_a_shortfall_names_its_holder() -> None:
    lines = verdicts(report())
    assert "  maximum: 7,000 events/s (target >= 20,000 events/s): short; " \
        "the largest CPU share: ingest" in lines
    assert "  broker cpu per event: 99 µs (target <= 25 µs): short; most requests: Fetch; " \
        "most records in: events" in lines
    assert "  stages' cpu per event: 80 µs (target <= 60 µs): short; the largest: ingest 45 µs" \
        in lines
    assert any(line.startswith("  p99 at half the maximum: 713 ms (target <= 250 ms): short")
               for line in lines)
    assert "  p99 at 2,000/s: 90 ms (target <= 100 ms): met" in lines
    assert "  cores busy at half the maximum: 45% (target <= 60%): met" in lines
    assert "  peak RSS of a stage: 213 MB (target <= 300 MB): met" in lines


def test_an_unmeasured_broker_says_how_to_measure_it() -> None:
    unmeasured = report()
    unmeasured["pipeline"]["max_rate"]["broker"] = None
    assert "not measured (give the broker's JMX address with --jmx)" in render(unmeasured)

"""Stage signals: windowed rates, z-scores with a std floor, trends, latency objectives, StageWatch.

Time is a number the tests pass in; nothing sleeps.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from tidegate.monitoring.anomaly import (
    LatencyObjective,
    SlidingRate,
    StageWatch,
    TrendDetector,
    WatchConfig,
    ZScoreDetector,
)

pytestmark = pytest.mark.unit


def test_sliding_rate_counts_only_the_window() -> None:
    rate = SlidingRate(60.0)
    rate.add(0.0, count=30, records=100)
    rate.add(30.0, count=0, records=100)
    assert rate.rate(30.0) == pytest.approx(0.15)
    assert rate.totals(60.0) == (0, 100)  # the entry at 0.0 is exactly one window old: out
    assert rate.rate(90.0) is None  # nothing left
    assert rate.rate(30.0, min_records=500) is None


def test_sliding_rate_is_bounded() -> None:
    rate = SlidingRate(1e9, max_entries=5)
    for t in range(20):
        rate.add(float(t), count=t, records=1)
    assert rate.totals(20.0) == (15 + 16 + 17 + 18 + 19, 5)


def test_zscore_waits_for_a_baseline() -> None:
    detector = ZScoreDetector(min_baseline=5, baseline=10)
    assert [detector.observe(0.01) for _ in range(5)] == [None] * 5
    assert detector.observe(0.01) is not None


def test_zscore_std_floor_keeps_a_flat_baseline_finite() -> None:
    detector = ZScoreDetector(min_baseline=5, min_std=0.01, threshold=4.0)
    for _ in range(5):
        detector.observe(0.0)
    blip = detector.observe(0.02)
    assert blip is not None and blip.std == 0.01 and blip.z == pytest.approx(2.0)
    assert not blip.anomalous
    spike = detector.observe(0.05)
    assert spike is not None and spike.anomalous and math.isfinite(spike.z)


def test_zscore_flags_rises_only() -> None:
    detector = ZScoreDetector(min_baseline=5, min_std=0.001)
    for v in (0.10, 0.11, 0.09, 0.10, 0.10):
        detector.observe(v)
    drop = detector.observe(0.0)
    assert drop is not None and drop.z < -4 and not drop.anomalous


def test_anomalies_stay_out_of_the_baseline_until_adapt_after() -> None:
    detector = ZScoreDetector(min_baseline=5, min_std=0.01, adapt_after=5)
    for _ in range(5):
        detector.observe(0.0)
    verdicts = [detector.observe(0.5) for _ in range(5)]
    assert all(v is not None and v.anomalous and v.mean == 0.0 for v in verdicts)
    accepted = detector.observe(0.5)  # five in a row: the new level is the baseline now
    assert accepted is not None and not accepted.anomalous and accepted.mean == 0.5


def test_zscore_never_adapts_when_told_not_to() -> None:
    detector = ZScoreDetector(min_baseline=3, adapt_after=None)
    for _ in range(3):
        detector.observe(0.0)
    assert all(detector.observe(1.0).anomalous for _ in range(100))  # type: ignore[union-attr]


def test_detector_configs_are_checked() -> None:
    with pytest.raises(ValueError, match="min_baseline"):
        ZScoreDetector(min_baseline=0)
    with pytest.raises(ValueError, match="min_std"):
        ZScoreDetector(min_std=0.0)
    with pytest.raises(ValueError, match="adapt_after"):
        ZScoreDetector(min_baseline=10, adapt_after=5)
    with pytest.raises(ValueError, match="min_points"):
        TrendDetector(window=5, min_points=6)
    with pytest.raises(ValueError, match="consecutive"):
        LatencyObjective(100.0, consecutive=0)


def test_trend_sees_a_steady_climb_not_noise_or_small_rises() -> None:
    climbing = TrendDetector(window=10, min_points=5, t_threshold=4.0, min_rise=100.0)
    noisy = TrendDetector(window=10, min_points=5, t_threshold=4.0, min_rise=100.0)
    small = TrendDetector(window=10, min_points=5, t_threshold=4.0, min_rise=100.0)
    wiggle = [0.0, 50.0, -40.0, 30.0, -20.0, 45.0, -35.0, 10.0, 0.0, 5.0]
    for i in range(10):
        t = 2.0 * i
        up = climbing.observe(t, 100.0 * i + (3.0 if i % 2 else -3.0))
        flat = noisy.observe(t, 1000.0 + wiggle[i])
        tiny = small.observe(t, float(i))
    assert up is not None and up.rising and up.slope == pytest.approx(50.0, rel=0.05)
    assert flat is not None and not flat.rising
    assert tiny is not None and math.isinf(tiny.t) and not tiny.rising  # perfect, but +9 only


def test_trend_needs_points_and_time() -> None:
    trend = TrendDetector(window=5, min_points=3)
    assert trend.observe(0.0, 1.0) is None and trend.observe(1.0, 2.0) is None
    assert trend.observe(2.0, 3.0) is not None
    same_instant = TrendDetector(window=5, min_points=3)
    for v in (1.0, 2.0, 3.0):
        last = same_instant.observe(5.0, v)
    assert last is None  # no time spread, no slope


def test_latency_objective_needs_consecutive_breaches() -> None:
    slo = LatencyObjective(100.0, consecutive=3)
    assert [slo.observe(v) for v in (150, 150, 90, 150, 150, 150, 150)] == [
        False, False, False, False, False, True, True]  # fmt: skip
    assert slo.observe(100.0) is False and slo.streak == 0  # at the objective is within it


def health(**fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"stage": "validation", "instance": "i-1", "records_in": 1000,
                             "errors": 0, "dead_lettered": 0, "lag": 0, "paused": False,
                             "latency_p99_ms": 10.0}  # fmt: skip
    event.update(fields)
    return event


FAST = WatchConfig(anomaly_min_baseline=5, latency_objective_ms=100.0, latency_consecutive=2)


def kinds(watch: StageWatch, now: float) -> dict[str, str]:
    return {f.kind: f.severity for f in watch.findings(now)}


def test_watch_rates_need_min_records_then_grade_by_threshold() -> None:
    watch = StageWatch("validation", FAST)
    watch.observe(health(records_in=100, dead_lettered=50), now=0.0)
    assert "dead_letter_rate" not in kinds(watch, 0.0)  # 100 records < min_window_records
    watch.observe(health(records_in=900, dead_lettered=30), now=2.0)
    found = {f.kind: f for f in watch.findings(2.0)}
    assert found["dead_letter_rate"].severity == "warning"  # 80 of 1000
    assert found["dead_letter_rate"].key == "validation/dead_letter_rate"
    assert found["dead_letter_rate"].details["rate"] == "0.080000"
    watch.observe(health(records_in=1000, dead_lettered=500), now=4.0)
    assert kinds(watch, 4.0)["dead_letter_rate"] == "critical"
    assert kinds(watch, 200.0) == {}  # the window emptied, the verdicts are too old


def test_watch_anomaly_against_its_own_baseline() -> None:
    watch = StageWatch("inference", WatchConfig(anomaly_min_baseline=5,
                                                error_anomaly_severity="critical"))
    for t in range(6):
        watch.observe(health(stage="inference", errors=1), now=float(t))
    assert "error_rate_anomaly" not in kinds(watch, 6.0)
    # 4.5% is under the 5% rate threshold, but 4.4 std (the 0.01 floor) above a 0.1% baseline
    watch.observe(health(stage="inference", errors=45), now=6.0)
    found = kinds(watch, 6.0)
    assert found == {"error_rate_anomaly": "critical"}
    watch.observe(health(stage="inference", errors=1), now=8.0)
    assert kinds(watch, 8.0) == {}


def test_watch_skips_noisy_small_intervals_for_anomalies() -> None:
    watch = StageWatch("validation", FAST)
    for t in range(6):
        watch.observe(health(errors=0), now=float(t))
    watch.observe(health(records_in=10, errors=5), now=7.0)  # 50% of 10 records: too few
    assert "error_rate_anomaly" not in kinds(watch, 7.0)


def test_watch_lag_trend_sums_instances_and_ignores_a_paused_stage() -> None:
    cfg = WatchConfig(lag_trend_window=6, lag_trend_min_points=4, lag_trend_min_rise=500.0)
    watch, paused = StageWatch("feature", cfg), StageWatch("feature", cfg)
    for i in range(6):
        for instance in ("a", "b"):
            watch.observe(health(stage="feature", instance=instance, lag=200 * i), now=2.0 * i)
            paused.observe(health(stage="feature", instance=instance, lag=200 * i,
                                  paused=True), now=2.0 * i)  # fmt: skip
    found = {f.kind: f for f in watch.findings(10.0)}
    assert found["lag_trend"].severity == "warning"
    assert float(found["lag_trend"].details["slope"]) > 150.0  # 100/s per instance: both count
    assert kinds(paused, 10.0) == {}


def test_watch_latency_objective_warning_then_critical() -> None:
    watch = StageWatch("validation", FAST)
    watch.observe(health(latency_p99_ms=150.0), now=0.0)
    assert "latency" not in kinds(watch, 0.0)
    watch.observe(health(latency_p99_ms=150.0), now=2.0)
    assert kinds(watch, 2.0)["latency"] == "warning"
    watch.observe(health(latency_p99_ms=900.0), now=4.0)
    watch.observe(health(latency_p99_ms=900.0), now=6.0)
    found = {f.kind: f for f in watch.findings(6.0)}
    assert found["latency"].severity == "critical"
    assert found["latency"].details["objective_ms"] == "400"
    watch.observe(health(records_in=0, latency_p99_ms=900.0), now=8.0)  # idle: not a sample
    watch.observe(health(latency_p99_ms=50.0), now=10.0)
    assert "latency" not in kinds(watch, 10.0)


def test_watch_without_objective_never_reports_latency() -> None:
    watch = StageWatch("ingest")
    for t in range(10):
        watch.observe(health(stage="ingest", latency_p99_ms=1e6), now=float(t))
    assert "latency" not in kinds(watch, 10.0)

"""``/metrics``: the status board through prometheus-client, read back with its own parsers.

The health events come from ``StageMetrics`` itself, so the batch-duration histogram is tested
from the stage's counting to the scraped buckets.
"""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.test_status import T0, health
from tidegate.monitoring.exposition import metrics_registry
from tidegate.monitoring.status import StatusBoard
from tidegate.runtime.metrics import BATCH_SECONDS_BUCKETS, StageMetrics
from tidegate.topics import STAGE_ORDER

pytestmark = pytest.mark.unit

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(board: StatusBoard,
           crisis: dict[str, Any] | None = None) -> tuple[Samples, dict[str, str]]:
    """Every sample of one scrape by name and labels, and every family's type."""
    def snapshot() -> dict[str, Any]:
        return {**board.snapshot(now=T0 + 1), **({"crisis": crisis} if crisis else {})}

    text = generate_latest(metrics_registry(snapshot, board.batch_durations)).decode()
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"sample twice: {key}"
            samples[key] = sample.value
    return samples, types


def labels(**pairs: str) -> frozenset[tuple[str, str]]:
    return frozenset(pairs.items())


def test_the_board_scrapes_with_conventional_names_types_and_units() -> None:
    board = StatusBoard(stale_after=10.0)
    board.on_health(health("ingest", records_in=12, records_out=10, dead_lettered=2, errors=1,
                           dead_letters_by_code={"BAD_MAGIC": 2}, lag=4, latency_p50_ms=1.5,
                           latency_p99_ms=9.25), now=T0)
    board.on_health(health("inference", breakers={"model": "half_open"}, model_version="v3",
                           mode="fallback", paused=True), now=T0)
    board.on_health(health("validation"), now=T0 - 60)
    board.on_predictions([{"path": "primary", "label": True}, {"path": "fallback", "label": 0}])

    samples, types = scrape(board, {"system": "CRITICAL", "stages": {"inference": "CRITICAL",
                                                                     "ingest": "NORMAL"}})

    assert types["tidegate_events"] == "counter"
    assert types["tidegate_batch_duration_seconds"] == "histogram"
    assert types["tidegate_consumer_lag_records"] == "gauge"
    assert types["tidegate_model_info"] == "gauge"  # the text format has no info type
    assert samples[("tidegate_stage_up", labels(stage="ingest"))] == 1
    assert samples[("tidegate_stage_up", labels(stage="validation"))] == 0
    assert samples[("tidegate_stage_up", labels(stage="monitoring"))] == 0
    for outcome, count in (("in", 12), ("out", 10), ("dead_lettered", 2), ("error", 1)):
        assert samples[("tidegate_events_total", labels(stage="ingest", outcome=outcome))] == count
    assert samples[("tidegate_dead_letters_total", labels(stage="ingest", code="BAD_MAGIC"))] == 2
    assert samples[("tidegate_consumer_lag_records", labels(stage="ingest"))] == 4
    assert samples[("tidegate_event_latency_seconds",
                    labels(stage="ingest", percentile="99"))] == pytest.approx(0.00925)
    assert samples[("tidegate_breaker_state",
                    labels(stage="inference", breaker="model", state="half_open"))] == 1
    assert samples[("tidegate_breaker_state",
                    labels(stage="inference", breaker="model", state="open"))] == 0
    assert samples[("tidegate_model_info", labels(stage="inference", version="v3"))] == 1
    assert samples[("tidegate_stage_mode_info", labels(stage="inference", mode="fallback"))] == 1
    assert samples[("tidegate_stage_paused", labels(stage="inference"))] == 1
    assert samples[("tidegate_crisis_level", labels(scope="system"))] == 2
    assert samples[("tidegate_crisis_level", labels(scope="ingest"))] == 0
    assert samples[("tidegate_predictions_total", labels(path="primary"))] == 1
    assert samples[("tidegate_predictions_flagged_total", labels())] == 1
    for name in ("tidegate_stage_up", "tidegate_consumer_lag_records"):
        assert {dict(key[1])["stage"] for key in samples if key[0] == name} == set(STAGE_ORDER)


def test_batch_durations_go_from_the_stage_to_cumulative_buckets() -> None:
    board = StatusBoard(stale_after=10.0)
    for intervals in ([0.004, 0.02, 0.02], [0.3, 20.0]):  # two health events from one stage
        metrics = StageMetrics(stage="feature", instance="f-1")
        for seconds in intervals:
            metrics.record_timing(100, handle_s=seconds / 2, deliver_s=seconds / 2)
        board.on_health(metrics.snapshot(lag=0), now=T0)

    samples, _ = scrape(board)

    def bucket(le: str) -> float:
        return samples[("tidegate_batch_duration_seconds_bucket", labels(stage="feature", le=le))]

    assert [bucket(le) for le in ("0.005", "0.01", "0.025", "0.25", "0.5", "10.0", "+Inf")] == [
        1, 1, 3, 3, 4, 4, 5]
    assert samples[("tidegate_batch_duration_seconds_count", labels(stage="feature"))] == 5
    assert samples[("tidegate_batch_duration_seconds_sum",
                    labels(stage="feature"))] == pytest.approx(20.344)
    assert len(BATCH_SECONDS_BUCKETS) + 1 == len(
        [key for key in samples if key[0] == "tidegate_batch_duration_seconds_bucket"])


def test_an_empty_board_scrapes_and_so_does_openmetrics() -> None:
    board = StatusBoard()
    samples, types = scrape(board)
    assert {value for key, value in samples.items() if key[0] == "tidegate_stage_up"} == {0.0}
    assert "tidegate_crisis_level" not in types  # not reported yet: no made-up level

    board.on_health(health("ingest", records_in=3), now=T0)
    text = generate_openmetrics(metrics_registry(lambda: board.snapshot(now=T0 + 1),
                                                 board.batch_durations)).decode()
    families = {family.name: family for family in parse_om(text)}
    assert text.endswith("# EOF\n")
    assert any(s.value == 3 and s.labels == {"stage": "ingest", "outcome": "in"}
               for s in families["tidegate_events"].samples)

"""The monitoring stage's ``/metrics``: its status board as Prometheus metrics (prometheus-client).

Every stage reports in health events; monitoring is the one process that sees them all, so it
serves the pipeline's metrics. ``BoardCollector`` turns one snapshot of the board (and the
crisis levels) into metric families at scrape time, so the figures are the board's, never a
second count that could drift from it.

Example::

    registry = metrics_registry(oversight.snapshot, board.batch_durations)
    body = prometheus_client.generate_latest(registry)   # the text exposition format
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from tidegate.breaker import State
from tidegate.monitoring.alerting import LEVELS

__all__ = ["BoardCollector", "metrics_registry"]

# health-event totals by the outcome label they get on tidegate_events_total
_OUTCOMES = {"records_in": "in", "records_out": "out", "dead_lettered": "dead_lettered",
             "errors": "error"}
_BREAKER_STATES = [state.value for state in State]

Durations = Mapping[str, tuple[list[tuple[str, int]], float]]


class BoardCollector(Collector):
    """Metric families from ``snapshot()`` (the board, crisis levels) and ``durations()``."""

    def __init__(self, snapshot: Callable[[], Mapping[str, Any]],
                 durations: Callable[[], Durations]) -> None:
        self._snapshot = snapshot
        self._durations = durations

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        stages: Mapping[str, Mapping[str, Any]] = snap["stages"]
        yield from self._stage_families(stages)
        yield from self._prediction_families(snap["predictions"])
        batches = HistogramMetricFamily(
            "tidegate_batch_duration_seconds",
            "Time a stage spent on one micro-batch: its handler and the wait for delivery.",
            labels=["stage"])
        for stage, (buckets, seconds) in sorted(self._durations().items()):
            # bounds as Prometheus's own clients write them: 10.0, not 10
            batches.add_metric([stage], [(floatToGoString(float(le)), n) for le, n in buckets],
                               seconds)
        yield batches
        crisis = snap.get("crisis")
        if crisis:
            level = GaugeMetricFamily(
                "tidegate_crisis_level",
                "Crisis level: 0 NORMAL, 1 WARNING, 2 CRITICAL, 3 EMERGENCY (scope system or a "
                "stage).", labels=["scope"])
            level.add_metric(["system"], LEVELS.index(crisis["system"]))
            for stage, name in sorted(crisis.get("stages", {}).items()):
                level.add_metric([stage], LEVELS.index(name))
            yield level

    def _stage_families(self, stages: Mapping[str, Mapping[str, Any]]) -> Iterator[Metric]:
        up = GaugeMetricFamily("tidegate_stage_up",
                               "1 when the stage sent a health event recently.", labels=["stage"])
        events = CounterMetricFamily(
            "tidegate_events", "Events per stage by outcome: in, out, dead_lettered, error.",
            labels=["stage", "outcome"])
        dead = CounterMetricFamily("tidegate_dead_letters",
                                   "Dead letters per stage by error code.",
                                   labels=["stage", "code"])
        lag = GaugeMetricFamily("tidegate_consumer_lag_records",
                                "Records the stage's consumer group has yet to read.",
                                labels=["stage"])
        latency = GaugeMetricFamily(
            "tidegate_event_latency_seconds",
            "Age of the events the stage put out, percentiles of its last health interval "
            "(a gauge: the label is not a summary's quantile).", labels=["stage", "percentile"])
        paused = GaugeMetricFamily("tidegate_stage_paused",
                                   "1 while the stage's input is paused.", labels=["stage"])
        breaker = GaugeMetricFamily(
            "tidegate_breaker_state", "1 for the state each breaker is in, 0 for the others.",
            labels=["stage", "breaker", "state"])
        model = InfoMetricFamily("tidegate_model", "The model version a stage serves.",
                                 labels=["stage"])
        mode = InfoMetricFamily("tidegate_stage_mode", "The mode a stage runs in.",
                                labels=["stage"])
        for stage, info in stages.items():
            up.add_metric([stage], int(info["state"] == "up"))
            for field, outcome in _OUTCOMES.items():
                events.add_metric([stage, outcome], info[field])
            for code, count in sorted(info["dead_letters_by_code"].items()):
                dead.add_metric([stage, code], count)
            lag.add_metric([stage], info["lag"])
            latency.add_metric([stage, "50"], info["latency_p50_ms"] / 1000)
            latency.add_metric([stage, "99"], info["latency_p99_ms"] / 1000)
            paused.add_metric([stage], int(bool(info["paused"])))
            for name, state in sorted(info["breakers"].items()):
                states = _BREAKER_STATES if state in _BREAKER_STATES else [*_BREAKER_STATES, state]
                for one in states:
                    breaker.add_metric([stage, name, one], int(one == state))
            if info.get("model_version"):
                model.add_metric([stage], {"version": str(info["model_version"])})
            if info["state"] != "unknown":
                mode.add_metric([stage], {"mode": str(info["mode"])})
        yield from (up, events, dead, lag, latency, paused, breaker, model, mode)

    def _prediction_families(self, predictions: Mapping[str, Any]) -> Iterator[Metric]:
        by_path = CounterMetricFamily(
            "tidegate_predictions", "Predictions by the path that produced them: primary, "
            "fallback, static.", labels=["path"])
        for path, count in sorted(predictions.get("by_path", {}).items()):
            by_path.add_metric([path], count)
        flagged = CounterMetricFamily("tidegate_predictions_flagged",
                                      "Predictions that flagged the event.")
        flagged.add_metric([], predictions.get("flagged", 0))
        yield from (by_path, flagged)


def metrics_registry(snapshot: Callable[[], Mapping[str, Any]],
                     durations: Callable[[], Durations]) -> CollectorRegistry:
    """A registry of its own (not the process-global one) holding a ``BoardCollector``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BoardCollector(snapshot, durations))
    return registry

"""The status board: stage states with an injected clock, totals, dead letters, Prometheus text."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

from tidegate.monitoring.status import StatusBoard
from tidegate.topics import STAGE_ORDER

pytestmark = pytest.mark.unit

T0 = 1_000_000.0
SAMPLE = re.compile(
    r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)'
    r'(?:\{(?P<labels>[a-zA-Z_][a-zA-Z0-9_]*="[^"\\\n]*"'
    r'(?:,[a-zA-Z_][a-zA-Z0-9_]*="[^"\\\n]*")*)\})?'
    r' (?P<value>\S+)$'
)
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="([^"]*)"')
COMMENT = re.compile(r"^# (?P<kind>HELP|TYPE) (?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*) (?P<rest>.+)$")


def health(stage: str, instance: str = "i-1", **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "stage": stage, "instance": instance, "records_in": 0, "records_out": 0,
        "dead_lettered": 0, "errors": 0, "dead_letters_by_code": {}, "lag": 0,
        "latency_p50_ms": 0.0, "latency_p99_ms": 0.0, "mode": "normal", "breakers": {},
        "paused": False, "model_version": None,
    }
    event.update(fields)
    return event


def parse_prometheus(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition, checked line by line; each family is TYPEd first."""
    assert text.endswith("\n")
    typed: dict[str, str] = {}
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in text.splitlines():
        comment = COMMENT.match(line)
        if comment:
            if comment["kind"] == "TYPE":
                assert comment["name"] not in typed, f"TYPE twice: {line}"
                assert comment["rest"] in ("counter", "gauge"), line
                typed[comment["name"]] = comment["rest"]
            continue
        match = SAMPLE.match(line)
        assert match is not None, f"not a sample line: {line!r}"
        name = match["name"]
        assert name in typed or name == "tidegate_stage_up", f"untyped sample: {line}"
        labels = frozenset(LABEL.findall(match["labels"] or ""))
        key = (name, labels)
        assert key not in samples, f"sample twice: {line}"
        value = float(match["value"])
        assert not math.isnan(value)
        samples[key] = value
    return samples


def labels(**pairs: str) -> frozenset[tuple[str, str]]:
    return frozenset(pairs.items())


def test_every_known_stage_starts_unknown() -> None:
    snap = StatusBoard().snapshot(now=T0)
    assert list(snap["stages"]) == list(STAGE_ORDER)
    assert {info["state"] for info in snap["stages"].values()} == {"unknown"}
    assert snap["predictions"] == {"total": 0, "flagged": 0, "by_path": {}}
    assert snap["time"] == T0


def test_up_then_stale_by_the_injected_clock() -> None:
    board = StatusBoard(stale_after=10.0)
    board.on_health(health("ingest"), now=T0)
    assert board.snapshot(now=T0 + 10.0)["stages"]["ingest"]["state"] == "up"
    assert board.snapshot(now=T0 + 10.0)["stages"]["ingest"]["instances"] == ["i-1"]
    stale = board.snapshot(now=T0 + 10.5)["stages"]["ingest"]
    assert stale["state"] == "stale"
    assert stale["instances"] == []
    assert board.snapshot(now=T0 + 10.5)["stages"]["validation"]["state"] == "unknown"
    board.on_health(health("ingest"), now=T0 + 11.0)
    assert board.snapshot(now=T0 + 12.0)["stages"]["ingest"]["state"] == "up"


def test_a_stage_is_up_while_any_instance_reports() -> None:
    board = StatusBoard(stale_after=5.0)
    board.on_health(health("feature", "a", lag=7), now=T0)
    board.on_health(health("feature", "b", lag=3), now=T0 + 4.0)
    info = board.snapshot(now=T0 + 4.0)["stages"]["feature"]
    assert (info["state"], info["instances"], info["lag"]) == ("up", ["a", "b"], 10)
    later = board.snapshot(now=T0 + 8.0)["stages"]["feature"]
    assert (later["state"], later["instances"], later["lag"]) == ("up", ["b"], 3)


def test_totals_and_dead_letters_by_code_accumulate() -> None:
    board = StatusBoard()
    board.on_health(health("validation", "a", records_in=100, records_out=90, dead_lettered=10,
                           errors=1, dead_letters_by_code={"REQUIRED": 6, "OUT_OF_RANGE": 4}),
                    now=T0)
    board.on_health(health("validation", "b", records_in=50, records_out=49, dead_lettered=1,
                           dead_letters_by_code={"REQUIRED": 1}), now=T0 + 1)
    board.on_health(health("validation", "a", records_in=5, records_out=5), now=T0 + 2)
    info = board.snapshot(now=T0 + 2)["stages"]["validation"]
    assert (info["records_in"], info["records_out"], info["dead_lettered"], info["errors"]) == (
        155, 144, 11, 1)
    assert info["dead_letters_by_code"] == {"REQUIRED": 7, "OUT_OF_RANGE": 4}


def test_newest_event_gives_latency_mode_breakers_and_model() -> None:
    board = StatusBoard()
    board.on_health(health("inference", "a", latency_p50_ms=5.0, latency_p99_ms=50.0,
                           mode="normal", model_version="fraud-primary:v1"), now=T0)
    board.on_health(health("inference", "b", latency_p50_ms=7.5, latency_p99_ms=80.0,
                           mode="degraded", breakers={"model": "open"}, paused=True,
                           model_version="fraud-primary:v2"), now=T0 + 1)
    info = board.snapshot(now=T0 + 1)["stages"]["inference"]
    assert (info["latency_p50_ms"], info["latency_p99_ms"]) == (7.5, 80.0)
    assert info["mode"] == "degraded"
    assert info["breakers"] == {"model": "open"}
    assert info["model_version"] == "fraud-primary:v2"
    assert info["paused"] is True


def test_unknown_stages_are_listed_after_the_known_ones() -> None:
    board = StatusBoard()
    board.on_health(health("zeta"), now=T0)
    board.on_health(health("alpha"), now=T0)
    assert list(board.snapshot(now=T0)["stages"]) == [*STAGE_ORDER, "alpha", "zeta"]


def test_predictions_are_counted_by_path_and_flag() -> None:
    board = StatusBoard()
    board.on_predictions([{"path": "primary", "label": True}, {"path": "primary", "label": False},
                          {"path": "static", "label": False}])
    board.on_predictions([{"path": "fallback", "label": True}])
    assert board.snapshot(now=T0)["predictions"] == {
        "total": 4, "flagged": 2, "by_path": {"primary": 2, "static": 1, "fallback": 1}}


def test_prometheus_text_has_the_expected_samples() -> None:
    board = StatusBoard(stale_after=10.0)
    board.on_health(health("ingest", records_in=12, records_out=10, dead_lettered=2, errors=1,
                           dead_letters_by_code={"BAD_MAGIC": 2}, lag=4,
                           latency_p50_ms=1.5, latency_p99_ms=9.25), now=T0)
    board.on_health(health("validation"), now=T0 - 60)
    board.on_predictions([{"path": "primary", "label": True}, {"path": "fallback", "label": 0}])

    samples = parse_prometheus(board.prometheus(now=T0 + 1))

    assert samples[("tidegate_stage_up", labels(stage="ingest"))] == 1
    assert samples[("tidegate_stage_up", labels(stage="validation"))] == 0
    assert samples[("tidegate_stage_up", labels(stage="monitoring"))] == 0
    assert samples[("tidegate_records_in_total", labels(stage="ingest"))] == 12
    assert samples[("tidegate_records_out_total", labels(stage="ingest"))] == 10
    assert samples[("tidegate_dead_lettered_total", labels(stage="ingest"))] == 2
    assert samples[("tidegate_errors_total", labels(stage="ingest"))] == 1
    assert samples[("tidegate_dead_letters_total", labels(stage="ingest", code="BAD_MAGIC"))] == 2
    assert samples[("tidegate_lag", labels(stage="ingest"))] == 4
    assert samples[("tidegate_latency_ms", labels(stage="ingest", quantile="p50"))] == 1.5
    assert samples[("tidegate_latency_ms", labels(stage="ingest", quantile="p99"))] == 9.25
    assert samples[("tidegate_predictions_total", labels(path="primary"))] == 1
    assert samples[("tidegate_predictions_total", labels(path="fallback"))] == 1
    for name in ("tidegate_stage_up", "tidegate_records_in_total", "tidegate_lag"):
        assert {dict(key[1])["stage"] for key in samples if key[0] == name} == set(STAGE_ORDER)


def test_prometheus_text_of_an_empty_board_parses() -> None:
    samples = parse_prometheus(StatusBoard().prometheus(now=T0))
    assert {key[0] for key in samples} == {"tidegate_stage_up", "tidegate_records_in_total",
                                           "tidegate_records_out_total",
                                           "tidegate_dead_lettered_total",
                                           "tidegate_errors_total", "tidegate_lag",
                                           "tidegate_latency_ms"}
    assert set(samples.values()) == {0.0}

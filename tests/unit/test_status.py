"""The status board: stage states with an injected clock, totals, dead letters, predictions."""

from __future__ import annotations

from typing import Any

import pytest

from tidegate.monitoring.status import StatusBoard
from tidegate.topics import STAGE_ORDER

pytestmark = pytest.mark.unit

T0 = 1_000_000.0


def health(stage: str, instance: str = "i-1", **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "stage": stage, "instance": instance, "records_in": 0, "records_out": 0,
        "dead_lettered": 0, "errors": 0, "dead_letters_by_code": {}, "lag": 0,
        "latency_p50_ms": 0.0, "latency_p99_ms": 0.0, "mode": "normal", "breakers": {},
        "paused": False, "model_version": None,
    }
    event.update(fields)
    return event


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

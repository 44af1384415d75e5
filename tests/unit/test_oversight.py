"""Monitoring's lazy label join, without Kafka: predictions decoded only when labelled."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest

from tidegate.analyst import Analyst
from tidegate.oversight import LazyJoin

pytestmark = pytest.mark.unit


def prediction(event_id: str, score: float) -> bytes:
    return json.dumps({"event_id": event_id, "model_version": "fraud-primary:v1",
                       "score": score, "label": score >= 0.5, "threshold": 0.5,
                       "path": "primary"}).encode()


def label(event_id: str, value: bool) -> dict[str, Any]:
    return {"event_id": event_id, "label": value, "labelled_at": 0}


class Counting:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, value: bytes) -> Mapping[str, Any]:
        self.calls += 1
        decoded: Mapping[str, Any] = json.loads(value)
        return decoded


def test_only_labelled_predictions_are_decoded_in_either_order() -> None:
    analyst, decode = Analyst(), Counting()
    join = LazyJoin(analyst, decode)
    for index in range(100):
        join.on_prediction(f"e{index}".encode(), prediction(f"e{index}", 0.9))
    join.on_label(label("e3", True))
    join.on_label(label("late", False))  # its prediction has not arrived yet
    join.on_prediction(b"late", prediction("late", 0.1))
    assert decode.calls == 2, "only the two labelled predictions were decoded"
    metrics = analyst.join.metrics("fraud-primary:v1")
    assert metrics is not None and metrics.labelled == 2 and metrics.accuracy == 1.0


def test_both_maps_stay_bounded() -> None:
    join = LazyJoin(Analyst(), Counting(), max_predictions=10, max_early=5)
    for index in range(50):
        join.on_prediction(f"p{index}".encode(), prediction(f"p{index}", 0.2))
        join.on_label(label(f"l{index}", False))
    join.on_label(label("p0", False))  # evicted long ago: now waits as an early label
    assert len(join._raw) == 10 and len(join._early) == 5

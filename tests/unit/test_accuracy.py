"""The label join: either order, exclusions, repeats, bounds, per-version metrics and judgement."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tidegate.monitoring.accuracy import (
    LabelJoin,
    accuracy_finding,
    calibration_error,
    worst_shortfall,
)

pytestmark = pytest.mark.unit

V1, V2 = "fraud-primary:v1", "fraud-primary:v2"


def prediction(event_id: str, score: float, *, version: str = V1, path: str = "primary",
               threshold: float = 0.5, shed: bool = False) -> dict[str, Any]:  # fmt: skip
    return {"event_id": event_id, "model_version": version, "score": score,
            "label": score >= threshold, "threshold": threshold, "path": path, "shed": shed}


def label(event_id: str, outcome: bool) -> dict[str, Any]:
    return {"event_id": event_id, "label": outcome, "labelled_at": 0}


def test_join_in_either_order_and_the_metrics() -> None:
    join = LabelJoin()
    cases = [("a", 0.9, True), ("b", 0.8, False), ("c", 0.2, True), ("d", 0.1, False)]
    for event_id, score, outcome in cases[:2]:
        join.on_prediction(prediction(event_id, score))
        join.on_label(label(event_id, outcome))
    for event_id, score, outcome in cases[2:]:  # labels first
        join.on_label(label(event_id, outcome))
        join.on_prediction(prediction(event_id, score))
    m = join.metrics(V1)
    assert m is not None and m.labelled == 4 and join.counts["joined"] == 4
    assert m.accuracy == 0.5 and m.precision == 0.5 and m.recall == 0.5
    assert m.brier == pytest.approx((0.01 + 0.64 + 0.64 + 0.01) / 4)
    assert join.waiting() == (0, 0)


def test_undefined_precision_and_recall_are_none() -> None:
    join = LabelJoin()
    join.on_prediction(prediction("a", 0.1))
    join.on_label(label("a", False))
    m = join.metrics(V1)
    assert m is not None and m.precision is None and m.recall is None and m.accuracy == 1.0
    assert join.metrics("never-seen") is None


def test_shed_and_static_answers_are_not_model_accuracy() -> None:
    join = LabelJoin()
    join.on_label(label("s", True))  # label first: it must not wait forever for a shed answer
    join.on_prediction(prediction("s", 0.0, version="shed", path="shed", shed=True))
    join.on_prediction(prediction("t", 0.0, version="static", path="static"))
    join.on_label(label("t", True))
    assert join.versions() == [] and join.counts["excluded"] == 2
    assert join.waiting() == (0, 1)  # only t's label, bounded, evicted in time


def test_fallback_answers_count_for_the_fallback_version() -> None:
    join = LabelJoin()
    join.on_prediction(prediction("a", 0.9, version="fraud-fallback:v1", path="fallback"))
    join.on_label(label("a", True))
    assert join.versions() == ["fraud-fallback:v1"]


def test_repeated_predictions_and_labels_count_once() -> None:
    join = LabelJoin()
    join.on_prediction(prediction("a", 0.9))
    join.on_prediction(prediction("a", 0.9))
    join.on_label(label("a", True))
    join.on_label(label("a", True))
    join.on_prediction(prediction("a", 0.9))
    m = join.metrics(V1)
    assert m is not None and m.labelled == 1 and join.total(V1) == 1
    assert join.counts["duplicates"] == 3 and join.waiting() == (0, 0)


def test_everything_is_bounded() -> None:
    join = LabelJoin(window=3, max_predictions=5, max_pending_labels=2, max_versions=2)
    for i in range(10):
        join.on_prediction(prediction(f"p{i}", 0.9))
    for i in range(6):
        join.on_label(label(f"early{i}", True))
    assert join.waiting() == (5, 2)
    assert join.counts["predictions_evicted"] == 5 and join.counts["labels_evicted"] == 4
    join.on_label(label("p0", True))  # its prediction was evicted: it waits, bounded
    assert join.waiting() == (5, 2)
    for i in range(5, 10):
        join.on_label(label(f"p{i}", i % 2 == 0))
    m = join.metrics(V1)
    assert m is not None and m.labelled == 3 and join.total(V1) == 5  # window of the last 3
    for version in ("m:v7", "m:v8"):
        join.on_prediction(prediction(version, 0.5, version=version))
        join.on_label(label(version, True))
    assert join.versions() == ["m:v7", "m:v8"] and join.metrics(V1) is None


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        LabelJoin(window=0)


def test_calibration_error() -> None:
    assert calibration_error(np.array([]), np.array([])) == 0.0
    perfect = calibration_error(np.array([0.25, 0.25, 0.25, 0.25]), np.array([1.0, 0, 0, 0]))
    assert perfect == pytest.approx(0.0)
    # two bins: scores 0.95 (outcomes 1, 0) gap 0.45; score 0.05 (outcome 0) gap 0.05
    ece = calibration_error(np.array([0.95, 0.95, 0.05]), np.array([1.0, 0.0, 0.0]))
    assert ece == pytest.approx((2 * 0.45 + 0.05) / 3)
    assert calibration_error(np.array([1.0, 1.5]), np.array([1.0, 1.0])) == 0.0  # clipped, top bin


def test_worst_shortfall_by_direction() -> None:
    assert worst_shortfall(0.9, {}, metric="accuracy") is None
    assert worst_shortfall(0.9, {"a": 0.95, "b": 0.99}, metric="accuracy") == ("b", 0.09)
    assert worst_shortfall(0.10, {"a": 0.05}, metric="brier") == ("a", 0.05)
    assert worst_shortfall(0.95, {"a": 0.90}, metric="accuracy") == ("a", -0.05)


def labelled(join: LabelJoin, version: str, n: int, correct: int, prefix: str) -> None:
    for i in range(n):
        outcome = i % 2 == 0
        right = i < correct
        join.on_prediction(prediction(f"{prefix}{i}", 0.9 if outcome == right else 0.1,
                                      version=version))  # fmt: skip
        join.on_label(label(f"{prefix}{i}", outcome))


def test_accuracy_finding_needs_min_labels_and_a_real_drop() -> None:
    join = LabelJoin(window=1000)
    labelled(join, V2, 99, 80, "a")
    baselines = {V2: 0.95}
    assert accuracy_finding(join, V2, previous=V1, baselines=baselines, min_labels=100) is None
    labelled(join, V2, 1, 1, "b")  # 100 labelled, 81 right
    found = accuracy_finding(join, V2, previous=V1, baselines=baselines, min_labels=100)
    assert found is not None and found.severity == "critical" and found.kind == "accuracy"
    assert found.key == f"inference/accuracy/{V2}" and found.details["baseline"] == "0.950000"
    assert found.details["previous_version"] == V1 and "0.140 worse than baseline" in found.message
    within = accuracy_finding(join, V2, previous=V1, baselines={V2: 0.85}, min_labels=100)
    assert within is None  # 0.04 below: within the 0.05 allowed


def test_accuracy_finding_against_the_previous_version_live() -> None:
    join = LabelJoin(window=1000)
    labelled(join, V1, 100, 98, "old")
    labelled(join, V2, 100, 90, "new")
    found = accuracy_finding(join, V2, previous=V1, baselines={}, min_labels=100)
    assert found is not None and found.details["previous_version"] == V1
    assert found.details["previous"] == "0.980000" and "baseline" not in found.details
    assert "worse than previous 0.980" in found.message
    # the previous version's baseline stands in only when nothing else is known
    alone = LabelJoin(window=1000)
    labelled(alone, V2, 100, 90, "x")
    stand_in = accuracy_finding(alone, V2, previous=V1, baselines={V1: 0.97}, min_labels=100)
    assert stand_in is not None and "previous_baseline" in stand_in.details
    assert accuracy_finding(alone, V2, previous=None, baselines={}, min_labels=100) is None

"""Drift: the sketch bins exactly like the registry; PSI and KS; the sliding window and bounds."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from tidegate.models.registry import bin_shares, reference_bins
from tidegate.monitoring.drift import DriftMonitor, DriftSketch, drift_finding, ks_binned, psi

pytestmark = pytest.mark.unit

NAMES = ("amount", "hour", "flag", "constant")


def reference(rng: np.random.Generator, n: int = 20_000) -> tuple[dict[str, Any], np.ndarray]:
    matrix = np.column_stack([
        rng.lognormal(3.0, 1.0, n), rng.integers(0, 24, n).astype(float),
        (rng.random(n) < 0.1).astype(float), np.full(n, 7.0),
    ])  # fmt: skip
    scores = rng.beta(1.0, 20.0, n)
    ref = {name: reference_bins(matrix[:, i]) for i, name in enumerate(NAMES)}
    return {**ref, "score": reference_bins(scores, bins=20)}, matrix


def test_sketch_counts_match_searchsorted_per_column_including_edges_and_nan() -> None:
    rng = np.random.default_rng(1)
    ref, matrix = reference(rng)
    batch = matrix[:512].copy()
    cuts = ref["amount"]["cuts"]
    batch[:3, 0] = [cuts[0], np.nan, -np.inf]  # exactly on a cut, NaN, -inf
    scores = rng.random(512)
    sketch = DriftSketch(ref, NAMES)
    sketch.add(batch, scores)
    taken = sketch.take()
    assert taken["n"] == 512
    for i, name in enumerate(NAMES):
        c = np.asarray(ref[name]["cuts"])
        expected = np.bincount(np.searchsorted(c, batch[:, i], side="right"), minlength=c.size + 1)
        assert taken["features"][name] == expected.tolist(), name
        shares = bin_shares(batch[:, i], c.tolist())
        assert np.allclose(np.asarray(taken["features"][name]) / 512, shares)
    score_cuts = np.asarray(ref["score"]["cuts"])
    assert taken["score"] == np.bincount(np.searchsorted(score_cuts, scores, side="right"),
                                         minlength=score_cuts.size + 1).tolist()  # fmt: skip
    assert json.loads(json.dumps(taken)) == taken


@pytest.mark.parametrize("columns", [1, 3])  # one binary search, or compared as a group
def test_both_binning_paths_agree_with_searchsorted_on_edges(columns: int) -> None:
    edges = np.array([-np.inf, -1.0, 0.0, 0.5, 1.0, 2.0, np.inf, np.nan])
    ref = {f"c{j}": {"cuts": [0.0, 1.0], "shares": [0.2, 0.3, 0.5]} for j in range(columns)}
    matrix = np.column_stack([np.roll(edges, j) for j in range(columns)])
    sketch = DriftSketch(ref, list(ref))
    sketch.add(matrix, np.zeros(len(edges)))
    taken = sketch.take()["features"]
    for j in range(columns):
        found = np.searchsorted([0.0, 1.0], matrix[:, j], side="right")
        assert taken[f"c{j}"] == np.bincount(found, minlength=3).tolist() == [2, 2, 4]


def test_sketch_accumulates_then_take_resets() -> None:
    ref = {"a": {"cuts": [0.5], "shares": [0.5, 0.5]}}
    sketch = DriftSketch(ref, ["a", "unreferenced"])
    sketch.add(np.array([[0.0, 9.0], [1.0, 9.0]]), np.array([0.1, 0.2]))
    sketch.add(np.array([[2.0, 9.0]]), np.array([0.3]))
    sketch.add(np.empty((0, 2)), np.empty(0))
    assert sketch.take() == {"features": {"a": [1, 2]}, "score": [], "n": 3}
    assert sketch.take() == {"features": {"a": [0, 0]}, "score": [], "n": 0}


def test_sketch_rejects_a_misshapen_batch() -> None:
    sketch = DriftSketch({"a": {"cuts": [0.5], "shares": [0.5, 0.5]}}, ["a"])
    with pytest.raises(ValueError, match="expected"):
        sketch.add(np.zeros((4, 2)), np.zeros(4))
    with pytest.raises(ValueError, match="expected"):
        sketch.add(np.zeros((4, 1)), np.zeros(3))


def test_sketch_with_more_cuts_than_a_byte_counts_falls_back_exactly() -> None:
    values = np.linspace(0.0, 1.0, 1000)
    ref = {"fine": reference_bins(values, bins=400)}
    assert len(ref["fine"]["cuts"]) > 255
    sketch = DriftSketch(ref, ["fine"])
    sketch.add(values[:, None], np.zeros(1000))
    cuts = np.asarray(ref["fine"]["cuts"])
    expected = np.bincount(np.searchsorted(cuts, values, side="right"), minlength=cuts.size + 1)
    assert sketch.take()["features"]["fine"] == expected.tolist()


def test_psi_and_ks_on_known_values() -> None:
    assert psi([0.5, 0.5], [500, 500]) == pytest.approx(0.0)
    # (0.7-0.5)ln(0.7/0.5) + (0.3-0.5)ln(0.3/0.5)
    assert psi([0.5, 0.5], [70, 30]) == pytest.approx(0.2 * math.log(1.4) - 0.2 * math.log(0.6))
    assert ks_binned([0.25, 0.25, 0.5], [50, 0, 50]) == pytest.approx(0.25)
    assert ks_binned([0.5, 0.5], [1, 1]) == 0.0


def test_psi_of_an_empty_bin_is_large_but_finite() -> None:
    value = psi([0.5, 0.5], [100, 0])
    assert math.isfinite(value) and value > 3.0
    assert math.isfinite(psi([1.0, 0.0], [50, 50]))


def test_psi_and_ks_reject_mismatched_or_empty_counts() -> None:
    with pytest.raises(ValueError, match="reference bins"):
        psi([0.5, 0.5], [1, 2, 3])
    with pytest.raises(ValueError, match="no counts"):
        ks_binned([0.5, 0.5], [0, 0])


def counts(taken: dict[str, Any]) -> dict[str, Any]:
    crossed: dict[str, Any] = json.loads(json.dumps(taken))  # what crosses the health topic
    return crossed


def test_monitor_flags_a_shifted_feature_only_after_min_events() -> None:
    rng = np.random.default_rng(2)
    ref, matrix = reference(rng)
    sketch = DriftSketch(ref, NAMES)
    monitor = DriftMonitor(ref, window_events=5000, min_events=1000)
    shifted = matrix[:512].copy()
    shifted[:, 0] *= 3.0  # amounts tripled
    sketch.add(shifted, rng.beta(1.0, 20.0, 512))
    monitor.add(counts(sketch.take()), now=0.0)
    early = monitor.report()
    assert early["events"] == 512 and not early["judged"] and early["drifted"] == []
    assert early["features"]["amount"]["psi"] > 0.25  # measured, just not judged yet
    sketch.add(shifted, rng.beta(1.0, 20.0, 512))
    monitor.add(counts(sketch.take()), now=2.0)
    report = monitor.report()
    assert report["judged"] and report["drifted"] == ["amount"] and report["severe"] == ["amount"]
    assert report["features"]["hour"]["psi"] < 0.1
    assert report["score"]["psi"] < 0.2
    finding = drift_finding(report, "m:v1")
    assert finding is not None and finding.severity == "warning" and finding.kind == "drift"
    assert finding.details["drifted"] == "amount" and "psi.amount" in finding.details


def test_monitor_on_reference_data_finds_no_drift() -> None:
    rng = np.random.default_rng(3)
    ref, matrix = reference(rng)
    sketch, monitor = DriftSketch(ref, NAMES), DriftMonitor(ref, min_events=1000)
    for i in range(4):
        rows = matrix[i * 512:(i + 1) * 512]
        sketch.add(rows, rng.beta(1.0, 20.0, 512))
        monitor.add(counts(sketch.take()), now=float(i))
    report = monitor.report()
    assert report["events"] == 2048 and report["drifted"] == []
    assert drift_finding(report, "m:v1") is None


def test_window_keeps_the_newest_events_and_forgets_old_drift() -> None:
    ref = {"a": {"cuts": [0.5], "shares": [0.5, 0.5]}}
    monitor = DriftMonitor(ref, window_events=1000, min_events=100)
    monitor.add({"features": {"a": [0, 500]}, "n": 500}, now=0.0)  # all high: drifted
    monitor.add({"features": {"a": [0, 500]}, "n": 500}, now=1.0)
    assert monitor.report()["drifted"] == ["a"]
    for t in range(2, 6):
        monitor.add({"features": {"a": [250, 250]}, "n": 500}, now=float(t))
    report = monitor.report()
    assert report["events"] == 1000  # two chunks of 500: the drifted ones went
    assert report["features"]["a"]["psi"] == pytest.approx(0.0)
    assert report["drifted"] == []


def test_window_expires_by_age_at_report() -> None:
    ref = {"a": {"cuts": [0.5], "shares": [0.5, 0.5]}}
    monitor = DriftMonitor(ref, max_age=60.0, min_events=1)
    monitor.add({"features": {"a": [0, 10]}, "n": 10}, now=0.0)
    assert monitor.report(now=59.0)["events"] == 10
    gone = monitor.report(now=61.0)
    assert gone["events"] == 0 and gone["features"] == {} and gone["drifted"] == []
    assert gone["score"] == {"psi": None, "ks": None}


def test_chunks_are_bounded_even_when_each_is_tiny() -> None:
    ref = {"a": {"cuts": [0.5], "shares": [0.5, 0.5]}}
    monitor = DriftMonitor(ref, window_events=1_000_000, max_chunks=10, max_age=None)
    for t in range(25):
        monitor.add({"features": {"a": [1, 0]}, "n": 1}, now=float(t))
    assert monitor.events == 10
    assert monitor.report()["features"]["a"]["ks"] == pytest.approx(0.5)


def test_mismatched_counts_are_ignored_and_counted() -> None:
    ref = {"a": {"cuts": [0.5], "shares": [0.5, 0.5]}, "score": {"cuts": [], "shares": [1.0]}}
    monitor = DriftMonitor(ref, min_events=1)
    monitor.add({"features": {"a": [1, 2, 3], "other": [1]}, "score": [], "n": 6}, now=0.0)
    assert monitor.mismatched == 2  # a has other cuts, other is unknown; no score is no mismatch
    assert monitor.report()["features"] == {}
    monitor.add({"features": {}, "n": 0}, now=1.0)
    assert monitor.events == 6


def test_monitor_rejects_bad_bounds_and_unreadable_counts() -> None:
    with pytest.raises(ValueError, match="positive"):
        DriftMonitor({}, window_events=0)
    with pytest.raises(KeyError):
        DriftMonitor({}).add({"features": {}}, now=0.0)

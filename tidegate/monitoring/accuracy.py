"""Online accuracy: predictions joined with labels that arrive later, per model version.

Labels (a chargeback, a confirmed fraud) come minutes to weeks after the prediction, so the join
keeps the newest ``max_predictions`` unlabelled predictions and the newest ``max_pending_labels``
labels that came first; the oldest go when full. Each joined pair lands in a rolling window of the
last ``window`` outcomes of its model version. Shed and static predictions are no model's answer
and are left out. A repeated prediction or label (delivery is at least once) is counted once.

Example::

    join = LabelJoin(window=2000)
    join.on_prediction(prediction_record)
    join.on_label({"event_id": ..., "label": True, "labelled_at": ...})
    join.metrics("fraud-primary:v3")       # VersionMetrics(labelled=1, accuracy=1.0, ...)
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from tidegate.monitoring.alerting import Finding

__all__ = ["EXCLUDED_PATHS", "LOWER_IS_BETTER", "LabelJoin", "VersionMetrics",
           "accuracy_finding", "calibration_error", "worst_shortfall"]

EXCLUDED_PATHS = frozenset({"shed", "static"})  # answers no model gave
LOWER_IS_BETTER = frozenset({"brier", "ece"})


@dataclass(frozen=True)
class VersionMetrics:
    """Metrics of one model version over its window; None where undefined (no positives)."""

    labelled: int
    accuracy: float
    precision: float | None
    recall: float | None
    brier: float
    ece: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def calibration_error(scores: np.ndarray, outcomes: np.ndarray, *, bins: int = 10) -> float:
    """Expected calibration error: |mean score - positive share| per equal-width score bin,
    weighted by the bin's share of events.

    >>> calibration_error(np.array([0.9, 0.9]), np.array([1.0, 0.0]))
    0.4
    """
    if scores.size == 0:
        return 0.0
    scores = np.clip(scores, 0.0, 1.0)
    index = np.minimum((scores * bins).astype(np.intp), bins - 1)
    gap = np.bincount(index, weights=scores, minlength=bins) - np.bincount(
        index, weights=outcomes, minlength=bins)
    return round(float(np.abs(gap).sum() / scores.size), 12)  # |sum| per bin = n_b * |mean gap|


def worst_shortfall(value: float, references: Mapping[str, float], *,
                    metric: str) -> tuple[str, float] | None:  # fmt: skip
    """The reference ``value`` of ``metric`` falls furthest short of, and by how much
    (positive: worse); None without references. Brier and ECE are better lower.

    >>> worst_shortfall(0.90, {"baseline": 0.97, "previous": 0.95}, metric="accuracy")
    ('baseline', 0.07)
    """
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    drops = {name: round(sign * (against - value), 12) for name, against in references.items()}
    worst = max(drops, key=drops.__getitem__, default=None)
    return None if worst is None else (worst, drops[worst])


class LabelJoin:
    """Bounded join of predictions and labels by event id, with per-version outcome windows.

    At most ``max_versions`` versions keep a window; the one labelled longest ago goes first.
    """

    def __init__(self, *, window: int = 2000, max_predictions: int = 100_000,
                 max_pending_labels: int = 20_000, max_versions: int = 8) -> None:  # fmt: skip
        if min(window, max_predictions, max_pending_labels, max_versions) < 1:
            raise ValueError("window and bounds must be positive")
        self.window = window
        self.max_predictions, self.max_pending_labels = max_predictions, max_pending_labels
        self.max_versions = max_versions
        # event id -> (version, score, predicted label); oldest first
        self._predictions: OrderedDict[str, tuple[str, float, bool]] = OrderedDict()
        self._pending: OrderedDict[str, bool] = OrderedDict()  # labels ahead of predictions
        self._joined: OrderedDict[str, None] = OrderedDict()  # ids done: repeats are ignored
        self._outcomes: OrderedDict[str, deque[tuple[float, bool, bool]]] = OrderedDict()
        self._totals: Counter[str] = Counter()  # labelled outcomes per version, ever
        self.counts: Counter[str] = Counter()

    def on_prediction(self, record: Mapping[str, Any]) -> None:
        """One tidegate.Prediction record (a mapping with its fields)."""
        event_id = str(record["event_id"])
        self.counts["predictions"] += 1
        if record.get("shed") or record.get("path") in EXCLUDED_PATHS:
            self.counts["excluded"] += 1
            self._pending.pop(event_id, None)  # its label, if first, will never join
            return
        if event_id in self._joined or event_id in self._predictions:
            self.counts["duplicates"] += 1
            return
        entry = (str(record["model_version"]), float(record["score"]), bool(record["label"]))
        if event_id in self._pending:
            self._record(event_id, entry, self._pending.pop(event_id))
            return
        self._predictions[event_id] = entry
        if len(self._predictions) > self.max_predictions:
            self._predictions.popitem(last=False)
            self.counts["predictions_evicted"] += 1

    def on_label(self, record: Mapping[str, Any]) -> None:
        """One tidegate.Label record."""
        event_id, outcome = str(record["event_id"]), bool(record["label"])
        self.counts["labels"] += 1
        if event_id in self._joined:
            self.counts["duplicates"] += 1
            return
        entry = self._predictions.pop(event_id, None)
        if entry is not None:
            self._record(event_id, entry, outcome)
            return
        # Ahead of its prediction, or its prediction was shed, static or evicted: wait, bounded.
        self._pending[event_id] = outcome
        self._pending.move_to_end(event_id)
        if len(self._pending) > self.max_pending_labels:
            self._pending.popitem(last=False)
            self.counts["labels_evicted"] += 1

    def _record(self, event_id: str, entry: tuple[str, float, bool], outcome: bool) -> None:
        version, score, predicted = entry
        self.counts["joined"] += 1
        self._joined[event_id] = None
        if len(self._joined) > self.max_predictions:
            self._joined.popitem(last=False)
        window = self._outcomes.pop(version, None) or deque(maxlen=self.window)
        self._outcomes[version] = window  # most recently labelled last
        window.append((score, predicted, outcome))
        self._totals[version] += 1
        while len(self._outcomes) > self.max_versions:
            gone, _ = self._outcomes.popitem(last=False)
            del self._totals[gone]

    def waiting(self) -> tuple[int, int]:
        """(predictions awaiting a label, labels awaiting a prediction)."""
        return len(self._predictions), len(self._pending)

    def versions(self) -> list[str]:
        """Versions with labelled outcomes, least recently labelled first."""
        return list(self._outcomes)

    def total(self, version: str) -> int:
        """Labelled outcomes of ``version`` since it was first seen (not only the window)."""
        return self._totals[version]

    def metrics(self, version: str) -> VersionMetrics | None:
        """Metrics over the window of ``version``, None if it has no labelled outcome."""
        window = self._outcomes.get(version)
        if not window:
            return None
        data = np.array(window, dtype=np.float64)
        scores, predicted, outcome = data[:, 0], data[:, 1] > 0.5, data[:, 2] > 0.5
        tp = int(np.sum(predicted & outcome))
        flagged, positives = int(predicted.sum()), int(outcome.sum())
        return VersionMetrics(
            labelled=len(window),
            accuracy=float(np.mean(predicted == outcome)),
            precision=tp / flagged if flagged else None,
            recall=tp / positives if positives else None,
            brier=float(np.mean((scores - outcome) ** 2)),
            ece=calibration_error(scores, outcome.astype(np.float64)),
        )  # fmt: skip

    def measure(self, version: str, metric: str, *, min_labels: int) -> tuple[float, int] | None:
        """(``metric`` of ``version``, labelled outcomes) once the window holds ``min_labels``."""
        m = self.metrics(version)
        value = None if m is None else getattr(m, metric)
        if m is None or value is None or m.labelled < min_labels:
            return None
        return float(value), m.labelled

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Metrics of every version with outcomes, as plain data."""
        return {version: {**m.to_dict(), "total": self.total(version)}
                for version in self._outcomes if (m := self.metrics(version)) is not None}


def accuracy_finding(join: LabelJoin, version: str, *, previous: str | None,
                     baselines: Mapping[str, float], metric: str = "accuracy",
                     min_labels: int = 500, max_drop: float = 0.05,
                     stage: str = "inference") -> Finding | None:  # fmt: skip
    """A critical finding when ``version`` is worse by more than ``max_drop`` than its own
    baseline or than ``previous`` live (with ``min_labels`` each); without either, ``previous``'s
    baseline stands in. None while there are too few labels to judge.
    """
    measured = join.measure(version, metric, min_labels=min_labels)
    if measured is None:
        return None
    value, labelled = measured
    refs = {"baseline": baselines[version]} if version in baselines else {}
    live = None if previous is None else join.measure(previous, metric, min_labels=min_labels)
    if live is not None:
        refs["previous"] = live[0]
    elif previous is not None and previous in baselines and not refs:
        refs["previous_baseline"] = baselines[previous]
    shortfall = worst_shortfall(value, refs, metric=metric)
    if shortfall is None or shortfall[1] <= max_drop:
        return None
    worst, drop = shortfall
    details = {"version": version, "metric": metric, "value": f"{value:.6f}",
               "labelled": str(labelled), "max_drop": f"{max_drop:g}",
               "previous_version": previous or "",
               **{name: f"{against:.6f}" for name, against in refs.items()}}  # fmt: skip
    return Finding(f"{stage}/accuracy/{version}", "critical", stage, "accuracy",
                   f"{stage}: {version} {metric} {value:.3f} over {labelled} labelled is "
                   f"{drop:.3f} worse than {worst} {refs[worst]:.3f}", details)  # fmt: skip

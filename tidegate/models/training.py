"""Train the example fraud models from the generator, with exactly the serving feature code.

Events are featurised in event-time order in batches of 512 through ``compute_features`` with the
account state carried from batch to batch, as the feature stage does. The rows are split by time:
the first 70 % train, the next 15 % (validation) choose the alert threshold, and the last 15 %
(test) give the reported metrics. The threshold maximises F1 on the validation split, so the
test metrics are not tuned on the data they report.

Example::

    primary, fallback = train_example(ModelRegistry(Path("models")), events=60_000)
    primary.metrics["roc_auc"]      # on the held-out test split
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    log_loss,
    precision_recall_curve,
    roc_auc_score,
)
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from tidegate.errors import ConfigError
from tidegate.example.generator import TransactionGenerator
from tidegate.models.registry import FALLBACK, PRIMARY, ModelRegistry, ModelVersion, reference_bins
from tidegate.pipeline.feature import FEATURE_NAMES, AccountState, FeatureBatch, compute_features

__all__ = [
    "FALLBACK",
    "PRIMARY",
    "Dataset",
    "ensure_example_models",
    "evaluate",
    "example_dataset",
    "featurize",
    "time_split",
    "train_example",
]

BATCH_SIZE = 512
EXAMPLE_START_MS = 1_700_000_000_000  # a fixed start keeps training runs reproducible
EXAMPLE_EVENTS_PER_SECOND = 0.5  # 60k events span about a day and a half of traffic
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dataset:
    """Feature rows in event-time order with their fraud labels."""

    matrix: np.ndarray
    labels: np.ndarray
    quality: list[str]


def featurize(
    records: Sequence[Mapping[str, object]], *, batch_size: int = BATCH_SIZE
) -> FeatureBatch:
    """Features for ``records`` (in event-time order) with state carried batch to batch."""
    states: dict[str, AccountState | None] = {}
    parts: list[np.ndarray] = []
    quality: list[str] = []
    for start in range(0, len(records), batch_size):
        batch = records[start : start + batch_size]
        now_ms = max(cast(int, r["event_time"]) for r in batch)
        features, updated = compute_features(batch, states, now_ms=now_ms)
        states.update(updated)
        parts.append(features.matrix)
        quality.extend(features.quality)
    matrix = np.vstack(parts) if parts else np.zeros((0, len(FEATURE_NAMES)))
    return FeatureBatch(matrix, quality)


def example_dataset(
    *, events: int, seed: int, events_per_second: float = EXAMPLE_EVENTS_PER_SECOND
) -> Dataset:
    """Generate ``events`` labelled transactions and featurise them like the pipeline does."""
    generator = TransactionGenerator(
        seed=seed, start_time_ms=EXAMPLE_START_MS, events_per_second=events_per_second
    )
    pairs = sorted(generator.generate(events), key=lambda p: cast(int, p[0]["event_time"]))
    features = featurize([event for event, _ in pairs])
    labels = np.fromiter((label for _, label in pairs), dtype=np.bool_, count=len(pairs))
    return Dataset(features.matrix, labels, features.quality)


def time_split(n: int, *, train: float = 0.7, validation: float = 0.15) -> tuple[slice, ...]:
    """Train, validation and test slices of ``n`` time-ordered rows (the test is the newest)."""
    a, b = int(n * train), int(n * (train + validation))
    return slice(0, a), slice(a, b), slice(b, n)


def _f1_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def evaluate(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Ranking, calibration and alert metrics of ``scores`` against ``labels``."""
    flagged = scores >= threshold
    tp = float(np.sum(flagged & labels))
    precision = tp / max(float(flagged.sum()), 1.0)
    recall = tp / max(float(labels.sum()), 1.0)
    return {
        "roc_auc": float(roc_auc_score(labels, scores)),
        "average_precision": float(average_precision_score(labels, scores)),
        "log_loss": float(log_loss(labels, scores, labels=[False, True])),
        "brier": float(brier_score_loss(labels, scores)),
        "n": float(len(labels)),
        "positives": float(labels.sum()),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / max(precision + recall, 1e-12),
        "accuracy": float(np.mean(flagged == labels)),
        "alert_rate": float(flagged.mean()),
    }


def _models(seed: int) -> dict[str, Any]:
    return {
        PRIMARY: HistGradientBoostingClassifier(
            max_iter=300, learning_rate=0.08, max_leaf_nodes=31, l2_regularization=1.0,
            early_stopping=True, validation_fraction=0.1, n_iter_no_change=20,
            random_state=seed,
        ),
        FALLBACK: Pipeline([
            ("scale", StandardScaler()),
            ("model", LogisticRegression(max_iter=2000, C=1.0)),
        ]),
    }  # fmt: skip


def train_example(
    registry: ModelRegistry, *, events: int = 60_000, seed: int = 7
) -> tuple[ModelVersion, ModelVersion]:
    """Train, evaluate, register and promote the primary and fallback fraud models.

    Returns the promoted ``(primary, fallback)`` versions; their metrics are on the test split.

    >>> primary, fallback = train_example(ModelRegistry(tmp_path), events=8000)
    >>> primary.stage, primary.metrics["roc_auc"] > 0.8
    ('production', True)
    """
    started = time.perf_counter()
    data = example_dataset(events=events, seed=seed)
    train, val, test = time_split(len(data.labels))
    x, y = data.matrix, data.labels
    for part, least in ((train, 10), (val, 2), (test, 2)):
        if not least <= int(y[part].sum()) <= len(y[part]) - least:
            raise ConfigError(f"{events} events are too few: a time split lacks fraud or non-fraud")
    featurised_s = time.perf_counter() - started
    reference = {name: reference_bins(x[train, i]) for i, name in enumerate(FEATURE_NAMES)}
    promoted: list[ModelVersion] = []
    for name, model in _models(seed).items():
        fit_started = time.perf_counter()
        model.fit(x[train], y[train])
        fit_s = time.perf_counter() - fit_started
        threshold = _f1_threshold(y[val], model.predict_proba(x[val])[:, 1])
        metrics = evaluate(y[test], model.predict_proba(x[test])[:, 1], threshold)
        # live scores are out of sample, so the score reference comes from validation + test
        live_scores = model.predict_proba(x[val.start :])[:, 1]
        parent = registry.production(name) if registry.root.is_dir() else None
        params = {
            "estimator": type(model).__name__, "events": events, "seed": seed,
            "events_per_second": EXAMPLE_EVENTS_PER_SECOND, "split": [0.7, 0.15, 0.15],
            "threshold_rule": "max F1 on the validation split", "fit_seconds": round(fit_s, 3),
        }  # fmt: skip
        mv = registry.register(
            name, model, metrics=metrics, feature_names=FEATURE_NAMES, threshold=threshold,
            reference={**reference, "score": reference_bins(live_scores, bins=20)},
            parent=parent.version if parent else None, params=params,
        )  # fmt: skip
        promoted.append(registry.promote(name, mv.version, reason="train_example"))
        _log.info(
            "trained %s %s in %.2fs: roc_auc=%.4f ap=%.4f threshold=%.4f",
            name, mv.version, fit_s, metrics["roc_auc"], metrics["average_precision"], threshold,
        )  # fmt: skip
    _log.info(
        "train_example: %d events, features %.2fs, total %.2fs",
        events, featurised_s, time.perf_counter() - started,
    )  # fmt: skip
    return promoted[0], promoted[1]


def ensure_example_models(root: Path) -> tuple[ModelVersion, ...]:
    """Train the example models into the registry at ``root`` unless both have a production
    version; return what was trained (nothing when the registry was ready)."""
    registry = ModelRegistry(root)
    if root.is_dir() and all(name in registry.names() and registry.production(name)
                             for name in (PRIMARY, FALLBACK)):
        return ()
    return train_example(registry)

"""Example training end to end into a temporary registry, and the scorers built on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tidegate.errors import ConfigError, FeatureMismatchError, ScoringError
from tidegate.models.registry import ModelRegistry, ModelVersion
from tidegate.models.scoring import ModelScorer, Scorer, StaticScorer
from tidegate.models.training import (
    FALLBACK,
    PRIMARY,
    Dataset,
    evaluate,
    example_dataset,
    time_split,
    train_example,
)
from tidegate.pipeline.feature import FEATURE_NAMES

pytestmark = pytest.mark.unit

EVENTS = 12_000
SEED = 7


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelRegistry, ModelVersion]:
    registry = ModelRegistry(tmp_path_factory.mktemp("models"))
    primary, _ = train_example(registry, events=EVENTS, seed=SEED)
    return registry, primary


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return example_dataset(events=EVENTS, seed=SEED)


def test_both_models_are_learnt_registered_and_live(
    trained: tuple[ModelRegistry, ModelVersion],
) -> None:
    registry, primary = trained
    fallback = registry.require_production(FALLBACK)
    assert primary.stage == fallback.stage == "production"
    assert primary.metrics["roc_auc"] > 0.9
    assert fallback.metrics["roc_auc"] > 0.85
    assert primary.metrics["average_precision"] > 0.5
    assert 0.0 < primary.threshold < 1.0
    assert primary.feature_names == FEATURE_NAMES
    assert set(primary.reference) == {*FEATURE_NAMES, "score"}
    for ref in primary.reference.values():
        assert sum(ref["shares"]) == pytest.approx(1.0)
        assert len(ref["shares"]) == len(ref["cuts"]) + 1


def test_model_round_trips_from_disk_and_scores_as_at_training(
    trained: tuple[ModelRegistry, ModelVersion], dataset: Dataset
) -> None:
    registry, primary = trained
    scorer = ModelScorer.from_registry(ModelRegistry(registry.root), PRIMARY)  # cold cache
    assert scorer.version == f"{PRIMARY}:{primary.version}"
    _, _, test = time_split(len(dataset.labels))
    scores = scorer.score(dataset.matrix[test])
    metrics = evaluate(dataset.labels[test], scores, scorer.threshold)
    assert metrics["roc_auc"] == pytest.approx(primary.metrics["roc_auc"], abs=1e-12)
    assert metrics["f1"] == pytest.approx(primary.metrics["f1"], abs=1e-12)
    in_memory = registry.load(PRIMARY, primary.version).predict_proba(dataset.matrix[test])
    np.testing.assert_array_equal(scores, in_memory[:, 1])


def test_retraining_promotes_and_rollback_restores(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    first, _ = train_example(registry, events=8000, seed=1)
    second, _ = train_example(registry, events=8000, seed=2)
    assert (first.version, second.version, second.parent) == ("v1", "v2", "v1")
    assert registry.get(PRIMARY, "v1").stage == "archived"
    assert registry.rollback(PRIMARY, reason="accuracy").version == "v1"
    assert registry.get(PRIMARY, "v2").stage == "archived"
    assert ModelScorer.from_registry(registry, PRIMARY).version == f"{PRIMARY}:v1"


def test_too_few_events_is_a_clear_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="too few"):
        train_example(ModelRegistry(tmp_path), events=300)


def test_scorers_share_one_interface_and_fail_as_scoring_errors(
    trained: tuple[ModelRegistry, ModelVersion], dataset: Dataset
) -> None:
    registry, primary = trained
    model_scorer = ModelScorer.from_registry(registry, FALLBACK)
    static = StaticScorer(0.01)
    scorers: list[Scorer] = [model_scorer, static]
    batch = dataset.matrix[:512]
    for scorer in scorers:
        assert isinstance(scorer, Scorer)
        scores = scorer.score(batch)
        assert scores.shape == (512,) and ((scores >= 0) & (scores <= 1)).all()
    assert static.version == "static" and set(static.score(batch).tolist()) == {0.01}
    assert model_scorer.score(batch[:0]).shape == (0,)
    with pytest.raises(ScoringError, match="expected"):
        model_scorer.score(batch[:, :5])
    with pytest.raises(ScoringError, match="non-finite") as info:
        ModelScorer(primary, _BrokenModel(fail=False)).score(batch)
    assert info.value.code == "SCORING"
    with pytest.raises(ScoringError, match="RuntimeError: boom"):
        ModelScorer(primary, _BrokenModel(fail=True)).score(batch)
    with pytest.raises(FeatureMismatchError):
        ModelScorer(primary, registry.load(PRIMARY, primary.version), feature_names=("x",))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        StaticScorer(1.5)


class _BrokenModel:
    """Raises, or answers NaN: both are scoring failures for the breaker."""

    classes_ = np.array([False, True])

    def __init__(self, *, fail: bool) -> None:
        self.fail = fail

    def predict_proba(self, matrix: np.ndarray) -> np.ndarray:
        if self.fail:
            raise RuntimeError("boom")
        return np.full((len(matrix), 2), np.nan)

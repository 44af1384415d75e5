"""Inference logic without Faust: the fallback chain and prediction records.

The chain tries the primary model, then the fallback model, then a static answer, and says
which path produced each batch. The breakers of a later layer decide which links to skip.

Example::

    chain = ScoringChain.from_registry(ModelRegistry(root))
    result = chain.score(matrix)          # ScoreResult(scores, path="primary", ...)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from tidegate.breaker import BreakerOpenError, CircuitBreaker
from tidegate.errors import ScoringError
from tidegate.registry import ModelRegistry
from tidegate.scoring import ModelScorer, Scorer, StaticScorer
from tidegate.training import FALLBACK, PRIMARY

__all__ = ["Path", "ScoreResult", "ScoringChain", "predictions", "shed_predictions"]

log = logging.getLogger("tidegate.inference")

Path = Literal["primary", "fallback", "static", "shed"]


@dataclass(frozen=True, slots=True)
class ScoreResult:
    """Scores for a batch and the link of the chain that produced them."""

    scores: np.ndarray
    path: Path
    version: str
    threshold: float


@dataclass
class ScoringChain:
    """primary -> fallback -> static; ``skip`` names links to pass over (degraded modes).

    A link with a breaker in ``breakers`` is skipped while its breaker is open: the next link
    answers, never the dead-letter topic.
    """

    primary: Scorer | None
    fallback: Scorer | None
    static: StaticScorer
    primary_threshold: float = 0.5
    fallback_threshold: float = 0.5
    breakers: dict[str, CircuitBreaker] = field(default_factory=dict)

    @classmethod
    def from_registry(cls, registry: ModelRegistry, *, static_score: float = 0.0) -> ScoringChain:
        """The production versions of the example's primary and fallback models."""
        primary = ModelScorer.from_registry(registry, PRIMARY)
        fallback = ModelScorer.from_registry(registry, FALLBACK)
        return cls(primary=primary, fallback=fallback, static=StaticScorer(static_score),
                   primary_threshold=primary.threshold, fallback_threshold=fallback.threshold)

    def score(self, matrix: np.ndarray, *, skip: Sequence[Path] = ()) -> ScoreResult:
        """Scores from the first link that answers; the static answer always does."""
        links: tuple[tuple[Path, Scorer | None, float], ...] = (
            ("primary", self.primary, self.primary_threshold),
            ("fallback", self.fallback, self.fallback_threshold),
        )
        for path, scorer, threshold in links:
            if scorer is None or path in skip:
                continue
            breaker = self.breakers.get(path)
            try:
                scores = (breaker.call_sync(scorer.score, matrix) if breaker is not None
                          else scorer.score(matrix))
                return ScoreResult(scores, path, scorer.version, threshold)
            except BreakerOpenError:
                continue  # open: the next link answers without trying this one
            except ScoringError as exc:
                log.warning("%s scorer failed, falling back: %s", path, exc)
        return ScoreResult(self.static.score(matrix), "static", self.static.version, 1.0)


def predictions(envelopes: Sequence[dict[str, Any]], result: ScoreResult,
                accounts: Sequence[str | None]) -> list[dict[str, Any]]:
    """One tidegate.Prediction record per envelope."""
    now = time.time() * 1000
    return [
        {
            "event_id": env["event_id"], "trace_id": env["trace_id"], "account_id": account,
            "score": score, "label": score >= result.threshold, "threshold": result.threshold,
            "model_version": result.version, "path": result.path,
            "latency_ms": now - env["ingested_at"], "event_time": env["event_time"],
            "predicted_at": int(now), "feature_quality": env["feature_quality"] or "ok",
            "shed": False,
        }
        for env, account, score in zip(envelopes, accounts, result.scores.tolist(), strict=True)
    ]


def shed_predictions(envelopes: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Predictions for events shed under load: no model ran, and the record says so."""
    shed = ScoreResult(np.zeros(len(envelopes)), "shed", "shed", 1.0)
    records = predictions(envelopes, shed, [env.get("account_id") or None for env in envelopes])
    for record in records:
        record["shed"] = True
        record["feature_quality"] = "shed"
    return records

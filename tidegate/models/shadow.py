"""The shadow check: a candidate scores a labelled sample beside production before promotion.

:func:`shadow_check` scores a labelled sample (default: generated traffic neither model saw)
with the candidate and production and compares ROC AUC, accuracy at each model's threshold,
agreement of their decisions and the score distribution (PSI) against :class:`Tolerances`.

Example::

    report = shadow_check(registry, "fraud-primary", "v2")
    print("\n".join(report.lines()))      # passed or failed, with every measure
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from tidegate.errors import ConfigError, FeatureMismatchError, ModelArtifactError, ScoringError
from tidegate.models.registry import ModelRegistry, bin_shares
from tidegate.models.scoring import ModelScorer

__all__ = ["SHADOW_EVENTS", "Sample", "ShadowReport", "Side", "Tolerances", "shadow_check"]

SHADOW_EVENTS = 20_000
SHADOW_SEED = 104_729  # not a training seed: traffic neither model has seen


@dataclass(frozen=True)
class Tolerances:
    """How much worse than production a candidate may be; None switches a check off."""

    max_auc_drop: float | None = 0.02
    max_accuracy_drop: float | None = 0.01
    min_agreement: float | None = 0.95  # share of rows where both models decide alike
    max_score_psi: float | None = 0.25  # population stability of scores; > 0.25 is a big move


@dataclass(frozen=True)
class Sample:
    """Feature rows (``FEATURE_NAMES`` order) and their fraud labels."""

    matrix: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        positives = int(np.sum(self.labels))
        if len(self.labels) != len(self.matrix) or not 0 < positives < len(self.labels):
            raise ConfigError("a shadow sample needs one label per row and both classes")

    @classmethod
    def example(cls, *, events: int = SHADOW_EVENTS, seed: int = SHADOW_SEED) -> Sample:
        """Labelled traffic from the example generator, featurised as the pipeline does."""
        from tidegate.models.training import example_dataset

        data = example_dataset(events=events, seed=seed)
        return cls(data.matrix, data.labels.astype(bool))


@dataclass(frozen=True)
class Side:
    """One model's showing on the sample."""

    version: str
    threshold: float
    roc_auc: float
    accuracy: float
    average_precision: float
    alert_rate: float
    mean_score: float


@dataclass(frozen=True)
class ShadowReport:
    """Candidate beside production on one sample; ``passed`` when no tolerance is exceeded."""

    name: str
    rows: int
    positives: int
    candidate: Side
    production: Side | None  # None: nothing in production to compare with
    agreement: float | None
    score_psi: float | None
    tolerances: Tolerances
    failures: tuple[str, ...] = field(default=())

    @property
    def passed(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def lines(self) -> list[str]:
        """The report as a small table and a verdict line."""
        prod, cand = self.production, self.candidate
        out = [f"shadow check {self.name} {cand.version} against "
               f"{prod.version if prod else 'no production version'} on {self.rows} rows "
               f"({self.positives} fraud)"]
        out.append(f"  {'':18}{'production':>12}{'candidate':>12}")
        for key in ("roc_auc", "accuracy", "average_precision", "alert_rate", "mean_score",
                    "threshold"):
            left = f"{getattr(prod, key):12.4f}" if prod else f"{'-':>12}"
            out.append(f"  {key:18}{left}{getattr(cand, key):12.4f}")
        if self.agreement is not None and self.score_psi is not None:
            out.append(f"  agreement {self.agreement:.4f}, score PSI {self.score_psi:.4f}")
        verdict = "pass" if self.passed else "FAIL: " + "; ".join(self.failures)
        return [*out, f"verdict: {verdict}"]


def _side(version: str, scores: np.ndarray, labels: np.ndarray, threshold: float) -> Side:
    from sklearn.metrics import average_precision_score, roc_auc_score

    flagged = scores >= threshold
    return Side(version=version, threshold=threshold,
                roc_auc=float(roc_auc_score(labels, scores)),
                accuracy=float(np.mean(flagged == labels)),
                average_precision=float(average_precision_score(labels, scores)),
                alert_rate=float(flagged.mean()), mean_score=float(scores.mean()))


def _psi(reference: np.ndarray, live: np.ndarray) -> float:
    """Population stability index of ``live`` against ``reference`` over ten equal score bins.

    Equal bins, not quantiles: retrained models reorder the crowd of near-zero scores freely,
    which quantile bins of a fraud model (97 % of scores under 0.05) count as a big shift.
    """
    cuts = np.linspace(0.1, 0.9, 9).tolist()
    expected, actual = bin_shares(reference, cuts) + 1e-4, bin_shares(live, cuts) + 1e-4
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def shadow_check(registry: ModelRegistry, name: str, candidate_version: str,
                 sample: Sample | None = None, *,
                 tolerances: Tolerances = Tolerances()) -> ShadowReport:
    """Score ``sample`` (default :meth:`Sample.example`) with the candidate and production.

    A candidate that cannot be loaded or fails to score fails the check (it is not raised).

    >>> shadow_check(registry, "fraud-primary", "v2").passed
    True
    """
    mv = registry.get(name, candidate_version)  # ModelNotFoundError for a version never made
    sample = sample if sample is not None else Sample.example()
    labels = np.asarray(sample.labels, dtype=bool)
    current = registry.production(name)
    base: dict[str, Any] = {"name": name, "rows": len(labels), "positives": int(labels.sum()),
                            "tolerances": tolerances}
    try:
        scores = ModelScorer.from_registry(registry, name, mv.version).score(sample.matrix)
    except (ScoringError, FeatureMismatchError, ModelArtifactError) as exc:
        nan = float("nan")
        broken = Side(mv.version, mv.threshold, nan, nan, nan, nan, nan)
        return ShadowReport(**base, candidate=broken, production=None, agreement=None,
                            score_psi=None, failures=(f"the candidate does not score: {exc}",))
    cand = _side(mv.version, scores, labels, mv.threshold)
    if current is None:
        return ShadowReport(**base, candidate=cand, production=None, agreement=None,
                            score_psi=None)
    live = ModelScorer.from_registry(registry, name, current.version).score(sample.matrix)
    prod = _side(current.version, live, labels, current.threshold)
    agreement = float(np.mean((scores >= cand.threshold) == (live >= prod.threshold)))
    psi = _psi(live, scores)
    tol, failures = tolerances, []
    for metric, limit in (("roc_auc", tol.max_auc_drop), ("accuracy", tol.max_accuracy_drop)):
        drop = getattr(prod, metric) - getattr(cand, metric)
        if limit is not None and not drop <= limit:
            failures.append(f"{metric} {getattr(cand, metric):.4f} is {drop:.4f} below "
                            f"production's (tolerance {limit:g})")
    if tol.min_agreement is not None and agreement < tol.min_agreement:
        failures.append(f"agreement {agreement:.4f} < {tol.min_agreement:g}")
    if tol.max_score_psi is not None and psi > tol.max_score_psi:
        failures.append(f"score PSI {psi:.4f} > {tol.max_score_psi:g}")
    return ShadowReport(**base, candidate=cand, production=prod, agreement=agreement,
                        score_psi=psi, failures=tuple(failures))

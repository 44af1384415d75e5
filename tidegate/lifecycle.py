"""Model lifecycle: shadow-check a candidate beside production, promote it, roll back.

:func:`shadow_check` scores a labelled sample (default: generated traffic neither model saw)
with the candidate and production and compares ROC AUC, accuracy at each model's threshold,
agreement of their decisions and the score distribution (PSI) against :class:`Tolerances`.
:func:`promote` and :func:`rollback` change the registry, then issue the command that pins the
version in running inference stages (a restarted stage recovers it from the compacted control
topic). :func:`issue_command` is how the CLI and the monitoring stage send any command.

Example::

    train_candidates(registry)                      # fraud-primary v2 waits as a candidate
    print("\n".join(shadow_check(registry, "fraud-primary", "v2").lines()))
    promote(settings, "fraud-primary", "v2", reason="retrained", issuer="alice")
    rollback(settings, "fraud-primary", reason="alert rate doubled", issuer="alice")
"""

from __future__ import annotations

import getpass
import json
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import Producer

from tidegate.cluster import client_config
from tidegate.codec import Codec
from tidegate.control import command, command_key
from tidegate.errors import (
    BrokerError,
    ConfigError,
    FeatureMismatchError,
    ModelArtifactError,
    ScoringError,
    TidegateError,
)
from tidegate.registry import ModelRegistry, ModelVersion, bin_shares
from tidegate.scoring import ModelScorer
from tidegate.settings import Settings
from tidegate.topics import CATALOG, by_key

__all__ = [
    "SHADOW_EVENTS", "Promotion", "PromotionRefusedError", "Rollback", "Sample", "ShadowReport",
    "Side", "Tolerances", "issue_command", "promote", "rollback", "shadow_check",
    "train_candidates",
]

SHADOW_EVENTS = 20_000
SHADOW_SEED = 104_729  # not a training seed: traffic neither model has seen
Send = Callable[[dict[str, Any]], None]


class PromotionRefusedError(TidegateError):
    """The candidate failed its shadow check; ``report`` says why (``--force`` overrides)."""

    code = "PROMOTION_REFUSED"

    def __init__(self, report: ShadowReport) -> None:
        super().__init__(f"{report.name} {report.candidate.version} failed the shadow check "
                         f"({'; '.join(report.failures)}); --force promotes anyway")
        self.report = report


def issue_command(settings: Settings, record: Mapping[str, Any], *,
                  audit: Mapping[str, Any] | None = None, timeout: float = 15.0) -> None:
    """Produce a :func:`tidegate.control.command` record to the compacted control topic and a
    JSON copy (plus ``audit``) to the audit topic; BrokerError unless both are acknowledged.

    >>> issue_command(settings, command("inference", "restore", reason="fixed", issuer="bob"))
    """
    codec = Codec(registry_url=settings.schema_registry_url)
    topic = by_key("control").name(settings.topic_prefix)
    producer = Producer(client_config(settings, acks="all", log_level=3))
    failures: list[str] = []

    def delivered(err: Any, _message: Any) -> None:
        failures.extend([str(err)] if err else [])

    producer.produce(topic, key=command_key(record), on_delivery=delivered,
                     value=codec.encode("tidegate.ControlCommand", record, topic=topic))
    spec = next((spec for spec in CATALOG if spec.key == "audit"), None)
    if spec is not None:  # the control topic is compacted; the audit topic keeps every command
        body = {"kind": "control", **record, **(audit or {})}
        producer.produce(spec.name(settings.topic_prefix), key=b"control",
                         value=json.dumps(body).encode(), on_delivery=delivered)
    if producer.flush(timeout) or failures:
        why = failures[0] if failures else f"no acknowledgement within {timeout:g} s"
        raise BrokerError(f"the {record['action']} command was not delivered: {why}")


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
        from tidegate.training import example_dataset

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


@dataclass(frozen=True)
class Promotion:
    """What :func:`promote` did: the live version, its check, the command (None: not served)."""

    version: ModelVersion
    report: ShadowReport | None
    command: dict[str, Any] | None


@dataclass(frozen=True)
class Rollback:
    """What :func:`rollback` did: the version now live, the one it replaced, the command."""

    version: ModelVersion
    previous: str
    command: dict[str, Any] | None


def _served(name: str) -> bool:
    """Whether inference serves ``name`` as its primary: a command pins that model's version."""
    from tidegate.training import PRIMARY

    return name == PRIMARY


def _send(settings: Settings, send: Send | None, record: dict[str, Any],
          audit: Mapping[str, Any], live: ModelVersion) -> None:
    try:
        (send or (lambda rec: issue_command(settings, rec, audit=audit)))(record)
    except BrokerError as exc:
        raise BrokerError(f"{exc}; the registry already has {live.name} {live.version} in "
                          f"production: `tidegate model promote {live.name} {live.version} "
                          f"--force` sends the command again") from exc


def promote(settings: Settings, name: str, version: str, *, reason: str,
            issuer: str | None = None, force: bool = False,
            tolerances: Tolerances = Tolerances(), sample: Sample | None = None,
            registry: ModelRegistry | None = None, send: Send | None = None) -> Promotion:
    """Shadow check (skipped with ``force``), make ``version`` production, then tell inference.

    PromotionRefusedError (registry untouched) when the check fails. Only the model inference
    serves as primary gets a ``promote`` command; others take effect when inference restarts.

    >>> promote(settings, "fraud-primary", "v2", reason="retrained", issuer="alice").command
    {'action': 'promote', 'parameters': {'version': 'v2', 'model': 'fraud-primary'}, ...}
    """
    registry = registry or ModelRegistry(settings.registry_dir)
    issuer = issuer or getpass.getuser()
    record = command("inference", "promote", parameters={"version": version, "model": name},
                     reason=reason, issuer=issuer)  # a bad reason fails before any change
    registry.get(name, version)
    report = None if force else shadow_check(registry, name, version, sample,
                                             tolerances=tolerances)
    if report is not None and not report.passed:
        raise PromotionRefusedError(report)
    live = registry.promote(name, version, reason=f"{issuer}: {reason}")
    if not _served(name):
        return Promotion(live, report, None)
    audit = {"model": name, "forced": force, "shadow": report.as_dict() if report else None}
    _send(settings, send, record, audit, live)
    return Promotion(live, report, record)


def rollback(settings: Settings, name: str, *, reason: str, issuer: str | None = None,
             registry: ModelRegistry | None = None, send: Send | None = None) -> Rollback:
    """Return ``name`` to its last good version in the registry, then pin it in inference.

    >>> rollback(settings, "fraud-primary", reason="alert rate doubled").version.version
    'v1'
    """
    registry = registry or ModelRegistry(settings.registry_dir)
    issuer = issuer or getpass.getuser()
    if not reason.strip():
        raise ConfigError("a rollback needs a reason, for the audit trail")
    previous = registry.require_production(name).version
    live = registry.rollback(name, reason=f"{issuer}: {reason}")
    if not _served(name):
        return Rollback(live, previous, None)
    record = command("inference", "rollback", reason=reason, issuer=issuer,
                     parameters={"version": live.version, "model": name})
    _send(settings, send, record, {"model": name, "from": previous}, live)
    return Rollback(live, previous, record)


def train_candidates(registry: ModelRegistry, *, events: int = 60_000,
                     seed: int = 7) -> tuple[ModelVersion, ...]:
    """Retrain the example models and register them as candidates: production is unchanged.

    >>> [mv.stage for mv in train_candidates(registry, events=20_000, seed=8)]
    ['candidate', 'candidate']
    """
    from tidegate.training import train_example

    registered = []
    with tempfile.TemporaryDirectory(prefix="tidegate-train-") as scratch:
        trained = ModelRegistry(Path(scratch))
        for mv in train_example(trained, events=events, seed=seed):
            current = registry.production(mv.name) if registry.root.is_dir() else None
            registered.append(registry.register(
                mv.name, trained.load(mv.name, mv.version), metrics=mv.metrics,
                feature_names=mv.feature_names, threshold=mv.threshold, reference=mv.reference,
                parent=current.version if current else None, params=mv.params))
    return tuple(registered)

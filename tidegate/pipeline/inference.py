"""Inference logic without Faust: the fallback chain, the served model, prediction records.

The chain tries the primary model, then the fallback model, then a static answer, and says
which path produced each batch. The breakers of a later layer decide which links to skip.
Each call is a ``score`` trace span, a child of the stage's batch span (the runtime makes that
span current while the handler runs; without a tracer provider the span is a no-op).
:class:`PrimarySwitch` keeps the primary on the version a promote or rollback command pinned
(else the registry's production version) and applies a threshold command to it.

Example::

    chain = ScoringChain.from_registry(ModelRegistry(root))
    result = chain.score(matrix)          # ScoreResult(scores, path="primary", ...)
    switch = PrimarySwitch(registry, chain)
    version = switch.sync(mode)           # per batch: None, or a newly pinned version to load
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from opentelemetry import trace

from tidegate.batches import Batch
from tidegate.breaker import BreakerOpenError, CircuitBreaker
from tidegate.control import StageMode
from tidegate.errors import ModelUnavailableError, ScoringError
from tidegate.models.registry import FALLBACK, PRIMARY, ModelRegistry
from tidegate.models.scoring import ModelScorer, Scorer, StaticScorer

__all__ = [
    "Path", "PrimarySwitch", "ScoreResult", "ScoringChain", "pinned_version",
    "prediction_columns", "predictions", "shed_columns",
]

log = logging.getLogger(__name__)

Path = Literal["primary", "fallback", "static", "shed"]

_tracer = trace.get_tracer(__name__)  # follows the process's provider once it is installed


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

    def score(self, matrix: np.ndarray, *, skip: Sequence[Path] = (),
              defer: bool = False) -> ScoreResult:
        """Scores from the first link that answers; the static answer always does.

        ``defer``: a transient failure of the primary (``ModelUnavailableError``, after its
        breaker counted it) is raised instead of falling back, so the caller can try the
        primary again later (retry topics). An open breaker still falls back: a long outage
        degrades rather than piling up retries.

        Traced as a ``score`` span: the path taken, the model version and the rows; a link
        that failed or whose breaker was open is an event on the span.
        """
        with _tracer.start_as_current_span(
                "score", attributes={"tidegate.model.rows": len(matrix)}) as span:
            result = self._score(matrix, skip, defer, span)
            span.set_attributes({"tidegate.model.path": result.path,
                                 "tidegate.model.version": result.version})
            return result

    def _score(self, matrix: np.ndarray, skip: Sequence[Path], defer: bool,
               span: trace.Span) -> ScoreResult:
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
                span.add_event("breaker open", {"tidegate.model.path": path})
                continue  # open: the next link answers without trying this one
            except ModelUnavailableError as exc:
                if defer and path == "primary":
                    raise
                log.warning("%s scorer unavailable, falling back: %s", path, exc)
                span.record_exception(exc, {"tidegate.model.path": path})
            except ScoringError as exc:
                log.warning("%s scorer failed, falling back: %s", path, exc)
                span.record_exception(exc, {"tidegate.model.path": path})
        return ScoreResult(self.static.score(matrix), "static", self.static.version, 1.0)


def pinned_version(mode: StageMode, name: str = PRIMARY) -> str | None:
    """The version of ``name`` the newest promote/rollback command pinned, or None."""
    last = mode.last.get("model")
    named = last["parameters"].get("model", name) if last is not None else name
    return mode.model_version if named == name else None


class PrimarySwitch:
    """Keeps ``chain.primary`` on the pinned version, loading it outside the batch path.

    A version that cannot be loaded is logged, counted through ``on_error`` and retried after
    ``retry_after`` seconds; the current model goes on serving meanwhile.
    """

    def __init__(self, registry: ModelRegistry, chain: ScoringChain, *, name: str = PRIMARY,
                 retry_after: float = 30.0,
                 on_switch: Callable[[ModelScorer], None] = lambda scorer: None,
                 on_error: Callable[[str, Exception], None] = lambda version, exc: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.registry, self.chain, self.name = registry, chain, name
        primary = chain.primary
        self.served = primary.model_version.version if isinstance(primary, ModelScorer) else None
        self.threshold = chain.primary_threshold  # the served model's own
        self.override: float | None = None  # an operator's, from a threshold command
        self.retry_after, self.on_switch, self.on_error, self._clock = (
            retry_after, on_switch, on_error, clock)
        self._failed: dict[str, float] = {}  # version -> when it may be tried again
        self._loading: asyncio.Future[ModelScorer] | None = None

    def sync(self, mode: StageMode) -> str | None:
        """Cheap, per batch: apply the threshold command; return a pinned version to load."""
        self.override = mode.threshold
        self.chain.primary_threshold = self.override if self.override is not None else (
            self.threshold)
        wanted = pinned_version(mode, self.name)
        if wanted is None or wanted == self.served:
            return None
        if self._clock() < self._failed.get(wanted, float("-inf")):
            return None
        return wanted

    def load(self, version: str) -> ModelScorer:
        """The slow part: read, verify and unpickle ``version`` (safe in a worker thread)."""
        return ModelScorer.from_registry(self.registry, self.name, version)

    def install(self, scorer: ModelScorer) -> None:
        """Serve ``scorer`` from the next batch on."""
        self.chain.primary, self.threshold = scorer, scorer.threshold
        self.chain.primary_threshold = self.override if self.override is not None else (
            scorer.threshold)
        self.served = scorer.model_version.version
        self._failed.pop(self.served, None)
        log.warning("serving %s (threshold %.4f)", scorer.version, scorer.threshold)
        self.on_switch(scorer)

    def failed(self, version: str, exc: Exception) -> None:
        """Keep the current model; try ``version`` again after ``retry_after`` seconds."""
        self._failed[version] = self._clock() + self.retry_after
        log.error("cannot serve %s %s, still serving %s: %s", self.name, version,
                  self.served, exc)
        self.on_error(version, exc)

    def switch_now(self, mode: StageMode) -> None:
        """Load and install a pinned version in this thread (at start, before any batch)."""
        version = self.sync(mode)
        if version is not None:
            try:
                self.install(self.load(version))
            except Exception as exc:  # noqa: BLE001 -- a bad pin must not stop the stage
                self.failed(version, exc)

    def refresh(self, mode: StageMode) -> None:
        """Per batch, in the event loop: start loading a newly pinned version in a thread;
        the batch goes on with the current model and the new one serves once loaded."""
        version = self.sync(mode)
        if version is None or self._loading is not None:
            return
        self._loading = asyncio.get_running_loop().run_in_executor(None, self.load, version)

        def done(future: asyncio.Future[ModelScorer]) -> None:
            self._loading = None
            if future.cancelled():  # the stage is stopping
                return
            exc = future.exception()
            if exc is None:
                self.install(future.result())
            elif isinstance(exc, Exception):
                self.failed(version, exc)

        self._loading.add_done_callback(done)


def prediction_columns(batch: Batch, result: ScoreResult, *,
                       shed: bool = False) -> dict[str, list[Any]]:
    """The tidegate.Prediction records of ``batch``'s events, by field (each field one list
    entry per event): framed in one call (``Codec.columns_encoder``), no record per event."""
    n, now = len(batch), time.time() * 1000
    scores = result.scores
    return {
        "event_id": batch.event_ids, "trace_id": batch.trace_ids,
        "account_id": [account or None for account in batch.account_ids],
        "score": scores.tolist(), "label": (scores >= result.threshold).tolist(),
        "threshold": [result.threshold] * n, "model_version": [result.version] * n,
        "path": [result.path] * n, "latency_ms": (now - batch.ingested_at).tolist(),
        "event_time": batch.event_times.tolist(), "predicted_at": [int(now)] * n,
        "feature_quality": ["shed"] * n if shed else
        [flags or "ok" for flags in batch.feature_quality] if batch.feature_quality else
        ["ok"] * n,
        "shed": [shed] * n,
    }


def predictions(batch: Batch, result: ScoreResult) -> list[dict[str, Any]]:
    """One tidegate.Prediction record per event of ``batch`` (see ``prediction_columns``)."""
    columns = prediction_columns(batch, result)
    return [dict(zip(columns, row, strict=True)) for row in zip(*columns.values(), strict=True)]


def shed_columns(batch: Batch) -> dict[str, list[Any]]:
    """Predictions for events shed under load, by field: no model ran, and the record says so."""
    return prediction_columns(batch, ScoreResult(np.zeros(len(batch)), "shed", "shed", 1.0),
                              shed=True)

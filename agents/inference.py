"""inference: batched scoring through the fallback chain; one prediction per event out."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from tidegate.batches import Batch, unpack_messages
from tidegate.breaker import BreakerConfig, CircuitBreaker, State
from tidegate.deadletter import Code, DeadLetter
from tidegate.errors import FeatureShapeError, ModelUnavailableError
from tidegate.models.registry import ModelRegistry
from tidegate.models.scoring import ModelScorer, Scorer
from tidegate.monitoring.drift import DriftSketch
from tidegate.outputs import Outputs, forward, prediction_messages
from tidegate.pipeline.canary import CanarySlot, ScoreBins, score_canary
from tidegate.pipeline.feature import DRIFT_EXEMPT, FEATURE_NAMES
from tidegate.pipeline.inference import (
    Path,
    PrimarySwitch,
    ScoreResult,
    ScoringChain,
    prediction_columns,
)
from tidegate.redelivery import ATTEMPT_HEADER, Attempts, RetryPolicy, exhausted
from tidegate.runtime.stage import StageRuntime
from tidegate.settings import Settings

__all__ = ["SCORE_ROWS", "STAGE", "build"]

log = logging.getLogger(__name__)

STAGE = "inference"
SCORE_ROWS = 512  # rows per model call; batch predict is 200-460x cheaper per row than one row


def build(settings: Settings) -> StageRuntime:
    """The inference stage: ``features`` in, ``predictions`` and ``dlq.inference`` out; with
    ``TIDEGATE_RETRY_DELAYS`` set, a transient failure of the primary sends a chunk through
    the retry topics (``tidegate.redelivery``) instead of to the fallback."""
    runtime = StageRuntime(STAGE, settings)
    assert runtime.topics.sink is not None
    sink_name = runtime.name(runtime.topics.sink)
    registry = ModelRegistry(settings.registry_dir)
    chain = ScoringChain.from_registry(registry)
    new_breaker = _breakers(runtime, settings)
    chain.breakers = {path: new_breaker(path) for path in ("primary", "fallback")}
    encode = runtime.codec.columns_encoder("tidegate.Prediction", topic=sink_name)
    width = len(FEATURE_NAMES)
    runtime.metrics.model_version = chain.primary.version if chain.primary else None
    steering = runtime.follow_control()

    drift = _DriftReport(chain.primary)
    runtime.metrics.reporters.append(drift.report)

    def on_switch(scorer: ModelScorer) -> None:
        chain.breakers["primary"] = new_breaker("primary")  # a new model, a clean record
        runtime.metrics.model_version = scorer.version
        drift.follow(scorer)
        runtime.emit_health_soon()

    def on_error(version: str, exc: Exception) -> None:
        runtime.metrics.record_error()
        runtime.metrics.extra["model_error"] = f"{version}: {exc}"[:200]

    # a version pinned by a promote or rollback command (recovered from the control topic)
    switch = PrimarySwitch(registry, chain, on_switch=on_switch, on_error=on_error)
    switch.switch_now(steering.mode)

    def on_canary(scorer: ModelScorer | None) -> None:
        runtime.metrics.breakers.pop("model:canary", None)
        if scorer is None:
            runtime.metrics.extra.pop("canary", None)
            bins.version = None
        else:
            bins.version = scorer.version
            canary.breaker = new_breaker("canary")  # a new candidate, a clean record
            runtime.metrics.extra["canary"] = f"{scorer.version}@{canary.share:g}"
        runtime.emit_health_soon()

    # a candidate named by a canary command serves a stable share of the accounts
    canary = CanarySlot(registry, on_change=on_canary, on_error=on_error)
    bins = ScoreBins()  # the candidate's and production's scores, for monitoring to compare
    runtime.metrics.reporters.append(bins.report)
    skips: dict[str | None, tuple[Path, ...]] = {
        "fallback": ("primary",), "static": ("primary", "fallback")}

    policy = RetryPolicy(settings.retry_delay_seconds)
    retry_topics = [runtime.name(spec) for spec in runtime.topics.retry]

    async def score_features(events: Sequence[Any]) -> Outputs:
        switch.refresh(steering.mode)  # cheap; a newly pinned model loads in a thread meanwhile
        canary.refresh(steering.mode)
        outputs = Outputs()
        # the input's messages are all on attempt 1; a retry message carries its own history
        for attempts, group in _by_history(events):
            score_attempt(group, attempts, outputs)
        return outputs

    def score_attempt(events: Sequence[Any], attempts: Attempts, outputs: Outputs) -> None:
        batches, dead = unpack_messages(runtime.codec, events, stage=STAGE)
        usable: list[Batch] = []
        for part in batches:
            if part.features.shape[1] == width:
                usable.append(part)
                continue
            got = part.features.shape[1]
            dead += [DeadLetter.of(part.source(i), stage=STAGE, code=Code.FEATURE_SHAPE,
                                   error_class=FeatureShapeError.__name__,
                                   message=f"{got} features, the model needs {width}",
                                   event_id=part.event_ids[i], trace_id=part.trace_ids[i])
                     for i in range(len(part))]
        batch = Batch.concat(usable)
        outputs.dead += dead
        outputs.records_in += len(batch)
        # the batch span links to these; one group (the usual case) is passed without a copy
        outputs.traceparents = ([*outputs.traceparents, *batch.traceparents]
                                if outputs.traceparents else batch.traceparents)
        skip = skips.get(steering.mode.degraded_to, ())
        candidate = canary.active() if not skip else None  # a degraded stage serves no canary
        retried = [] if attempts.number == 1 else [(ATTEMPT_HEADER,
                                                    str(attempts.number).encode())]
        # one model call per SCORE_ROWS rows: a backlog makes batches bigger, and the slow-call
        # breaker must judge the model, not the size of the backlog
        for start in range(0, len(batch), SCORE_ROWS):
            chunk = batch.take(range(start, min(start + SCORE_ROWS, len(batch))))
            scored: list[tuple[Batch, ScoreResult]] = []
            if candidate is not None:
                tried, chunk = score_canary(chunk, candidate, canary.share,
                                            breaker=canary.breaker)
                if tried is not None:
                    scored.append(tried)
                    bins.add("candidate", tried[1].scores)
                    runtime.metrics.count("canary_predictions", len(tried[0]))
            if len(chunk):
                try:
                    result = chain.score(chunk.features, skip=skip, defer=policy.on)
                except ModelUnavailableError as exc:  # a blip: the primary's answer, later
                    defer(chunk, attempts.failed(exc, now_ms=int(time.time() * 1000)),
                          outputs)
                else:
                    if result.path == "primary":  # binned against the served model's reference
                        drift.add(chunk.features, result.scores)
                        if candidate is not None:
                            bins.add("production", result.scores)
                    scored.append((chunk, result))
                    runtime.metrics.extra["path"] = result.path
            for part, result in scored:
                made = prediction_columns(part, result)
                outputs.messages += prediction_messages(made, part.traceparents,
                                                        encode=encode, topic=sink_name,
                                                        headers=retried)
                outputs.records_out += len(part)
                outputs.latencies_ms += made["latency_ms"]
                runtime.metrics.count(f"predictions.{result.path}", len(part))
                runtime.metrics.count("predictions.flagged", sum(made["label"]))
                if retried:
                    runtime.metrics.count(f"retries.{result.path}", len(part))

    def defer(chunk: Batch, later: Attempts, outputs: Outputs) -> None:
        """To the retry topic of the next attempt, or, attempts spent, a dead letter each."""
        failed_at = later.failures[-1].at_ms
        retry = policy.route(later.number - 1)
        if retry is None or retry > len(retry_topics):
            outputs.dead += [exhausted(chunk.source(i), later, stage=STAGE,
                                       event_id=chunk.event_ids[i], trace_id=chunk.trace_ids[i])
                             for i in range(len(chunk))]
            runtime.metrics.count("retries.exhausted", len(chunk))
            return
        headers = later.headers(due_ms=policy.due_ms(retry, failed_at_ms=failed_at))
        outputs.messages += [replace(message, headers=headers) for message in forward(
            runtime.codec, chunk, topic=retry_topics[retry - 1], stage=STAGE)]
        runtime.metrics.count("retries.scheduled", len(chunk))

    runtime.consume(score_features, name="score_features")
    return runtime


def _by_history(events: Sequence[Any]) -> list[tuple[Attempts, list[Any]]]:
    """The messages grouped by their retry history (one group on the input topic)."""
    groups: dict[Attempts, list[Any]] = {}
    for event in events:
        groups.setdefault(Attempts.of(event.message.headers), []).append(event)
    return list(groups.items())


class _DriftReport:
    """Bins the primary's inputs and scores against its reference, for monitoring's drift checks.

    Health events carry the counts (``extra["drift"]``, JSON) and the version they were binned
    for (``extra["drift_version"]``): a few hundred bytes per interval instead of every vector.
    """

    def __init__(self, scorer: Scorer | None) -> None:
        self.sketch: DriftSketch | None = None
        self.version: str | None = None
        self.follow(scorer)

    def follow(self, scorer: Scorer | None) -> None:
        reference = {name: bins for name, bins in scorer.model_version.reference.items()
                     if name not in DRIFT_EXEMPT} if isinstance(scorer, ModelScorer) else {}
        self.sketch = DriftSketch(reference, FEATURE_NAMES) if reference else None
        self.version = scorer.version if self.sketch is not None and scorer else None

    def add(self, matrix: np.ndarray, scores: np.ndarray) -> None:
        if self.sketch is not None:
            self.sketch.add(matrix, scores)

    def report(self) -> dict[str, str]:
        if self.sketch is None or self.version is None:
            return {}
        counts = self.sketch.take()
        if not counts["n"]:
            return {}
        return {"drift": json.dumps(counts, separators=(",", ":")),
                "drift_version": self.version}


def _breakers(runtime: StageRuntime, settings: Settings) -> Callable[[str], CircuitBreaker]:
    """Makes a breaker for a model link; every transition is logged and sent as health now."""
    config = BreakerConfig(
        failure_rate_threshold=0.5, slow_call_rate_threshold=0.5,
        slow_call_duration=settings.breaker_slow_call_seconds, window="count",
        # the last 20 calls, or as many as the breaker must see before it judges
        window_size=max(20, settings.breaker_minimum_calls),
        minimum_calls=settings.breaker_minimum_calls, wait_duration=settings.breaker_wait_seconds,
        permitted_calls_in_half_open=1,  # one probe: a slow model blocks the stage while probed
    )

    def on_change(breaker: CircuitBreaker, old: State, new: State, reason: str) -> None:
        runtime.metrics.breakers[breaker.name] = str(new)
        log.warning("breaker %s: %s -> %s (%s)", breaker.name, old, new, reason)
        runtime.emit_health_soon()

    def make(path: str) -> CircuitBreaker:
        breaker = CircuitBreaker(f"model:{path}", config, listeners=[on_change])
        runtime.metrics.breakers[breaker.name] = str(breaker.state)
        return breaker

    return make

"""inference: batched scoring through the fallback chain; one prediction per event out."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from tidegate.batches import envelope_source
from tidegate.breaker import BreakerConfig, CircuitBreaker, State
from tidegate.deadletter import DeadLetter
from tidegate.features import FEATURE_NAMES
from tidegate.inference import Path, ScoringChain, predictions
from tidegate.registry import ModelRegistry
from tidegate.settings import Settings
from tidegate.stage import Outgoing, StageRuntime

__all__ = ["STAGE", "build"]

log = logging.getLogger("tidegate.inference")

STAGE = "inference"


def build(settings: Settings) -> StageRuntime:
    """The inference stage: ``features`` in, ``predictions`` and ``dlq.inference`` out."""
    runtime = StageRuntime(STAGE, settings)
    assert runtime.topics.sink is not None
    sink_name = runtime.name(runtime.topics.sink)
    chain = ScoringChain.from_registry(ModelRegistry(settings.registry_dir))
    chain.breakers = _breakers(runtime, settings)
    encode = runtime.codec.encoder("tidegate.Prediction", topic=sink_name)
    width = len(FEATURE_NAMES)
    size = 8 * width  # bytes of one float64 feature vector
    runtime.metrics.model_version = chain.primary.version if chain.primary else None
    steering = runtime.follow_control()
    skips: dict[str | None, tuple[Path, ...]] = {
        "fallback": ("primary",), "static": ("primary", "fallback")}

    async def score_features(events: Sequence[Any]) -> list[Outgoing]:
        unpacked, dead = runtime.unpack_batches(events)
        envelopes: list[dict[str, Any]] = []
        for _, envelope in unpacked:
            if len(envelope["feature_vector"]) == size:
                envelopes.append(envelope)
            else:
                got = len(envelope["feature_vector"]) // 8
                dead.append(DeadLetter.of(
                    envelope_source(envelope), stage=STAGE, code="FEATURE_SHAPE",
                    error_class="FeatureShapeError",
                    message=f"{got} features, the model needs {width}",
                    event_id=envelope["event_id"], trace_id=envelope["trace_id"]))
        out: list[Outgoing] = []
        if envelopes:
            joined = b"".join(env["feature_vector"] for env in envelopes)
            matrix = np.frombuffer(joined, dtype="<f8").reshape(len(envelopes), width)
            result = chain.score(matrix, skip=skips.get(steering.mode.degraded_to, ()))
            accounts = [env["account_id"] or None for env in envelopes]
            records = predictions(envelopes, result, accounts)
            out = [Outgoing(topic=sink_name, key=record["event_id"].encode(),
                            value=encode(record),
                            headers=[("traceparent", env["traceparent"].encode())])
                   for record, env in zip(records, envelopes, strict=True)]
            runtime.metrics.extra["path"] = result.path
            runtime.metrics.count(f"predictions.{result.path}", len(records))
            runtime.metrics.count("predictions.flagged", sum(r["label"] for r in records))
            runtime.metrics.record_batch(records_in=len(envelopes), records_out=len(records),
                                         latencies_ms=[r["latency_ms"] for r in records])
        return out + runtime.dead_letters(dead)

    runtime.run_batches(score_features, name="score_features")
    return runtime


def _breakers(runtime: StageRuntime, settings: Settings) -> dict[str, CircuitBreaker]:
    """A breaker per model link; every transition is logged and sent as a health event now."""
    config = BreakerConfig(
        failure_rate_threshold=0.5, slow_call_rate_threshold=0.5,
        slow_call_duration=settings.breaker_slow_call_seconds, window="count", window_size=20,
        minimum_calls=5, wait_duration=settings.breaker_wait_seconds,
        permitted_calls_in_half_open=1,  # one probe: a slow model blocks the stage while probed
    )

    def on_change(breaker: CircuitBreaker, old: State, new: State, reason: str) -> None:
        runtime.metrics.breakers[breaker.name] = str(new)
        log.warning("breaker %s: %s -> %s (%s)", breaker.name, old, new, reason)
        runtime.emit_health_soon()

    breakers = {path: CircuitBreaker(f"model:{path}", config, listeners=[on_change])
                for path in ("primary", "fallback")}
    for breaker in breakers.values():
        runtime.metrics.breakers[breaker.name] = str(breaker.state)
    return breakers

"""The fallback chain primary -> fallback -> static, and the prediction records it yields."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression

from tidegate.batches import Batch
from tidegate.breaker import BreakerConfig, CircuitBreaker, State
from tidegate.codec import Codec
from tidegate.control import StageMode, command
from tidegate.errors import ModelArtifactTamperedError, ModelUnavailableError, ScoringError
from tidegate.models.faults import FaultyModel
from tidegate.models.registry import ModelRegistry, ModelVersion
from tidegate.models.scoring import ModelScorer, Scorer, StaticScorer
from tidegate.models.training import FALLBACK, PRIMARY
from tidegate.pipeline.feature import FEATURE_NAMES
from tidegate.pipeline.inference import (
    Path as ChainPath,
)
from tidegate.pipeline.inference import (
    PrimarySwitch,
    ScoreResult,
    ScoringChain,
    pinned_version,
    predictions,
)

pytestmark = pytest.mark.unit

WIDTH = len(FEATURE_NAMES)
PREDICTION = "tidegate.Prediction"


class FixedScorer:
    """Answers with fixed scores and counts its calls."""

    def __init__(self, version: str, scores: Sequence[float]) -> None:
        self.version = version
        self.scores = np.asarray(scores, dtype=np.float64)
        self.calls = 0

    def score(self, matrix: np.ndarray) -> np.ndarray:
        self.calls += 1
        return self.scores[: len(matrix)]


class FailingScorer:
    """Always fails the way a broken model does."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.calls = 0

    def score(self, matrix: np.ndarray) -> np.ndarray:
        self.calls += 1
        raise ScoringError(f"{self.version}: model exploded on {len(matrix)} rows")


def chain(primary: Scorer | None, fallback: Scorer | None, *, static: float = 0.0
          ) -> ScoringChain:
    return ScoringChain(primary=primary, fallback=fallback, static=StaticScorer(static),
                        primary_threshold=0.7, fallback_threshold=0.4)


MATRIX = np.zeros((3, WIDTH))


def test_protocol_is_satisfied_by_the_fakes_and_the_shipped_scorers() -> None:
    assert isinstance(FixedScorer("a", [0.1]), Scorer)
    assert isinstance(FailingScorer("b"), Scorer)
    assert isinstance(StaticScorer(0.5), Scorer)


def test_primary_answers_when_it_works() -> None:
    primary, fallback = FixedScorer("p:v2", [0.9, 0.1, 0.7]), FixedScorer("f:v1", [0.5] * 3)
    result = chain(primary, fallback).score(MATRIX)
    assert result.path == "primary"
    assert result.version == "p:v2"
    assert result.threshold == 0.7
    assert result.scores.tolist() == [0.9, 0.1, 0.7]
    assert (primary.calls, fallback.calls) == (1, 0)


def test_a_failing_primary_falls_back() -> None:
    primary, fallback = FailingScorer("p:v2"), FixedScorer("f:v1", [0.2, 0.4, 0.6])
    result = chain(primary, fallback).score(MATRIX)
    assert result.path == "fallback"
    assert result.version == "f:v1"
    assert result.threshold == 0.4
    assert result.scores.tolist() == [0.2, 0.4, 0.6]
    assert (primary.calls, fallback.calls) == (1, 1)


def test_both_failing_gives_the_static_answer() -> None:
    primary, fallback = FailingScorer("p:v2"), FailingScorer("f:v1")
    result = chain(primary, fallback, static=0.25).score(MATRIX)
    assert result.path == "static"
    assert result.version == "static"
    assert result.threshold == 1.0
    assert result.scores.tolist() == [0.25] * 3
    assert (primary.calls, fallback.calls) == (1, 1)


def test_skip_passes_over_links_without_calling_them() -> None:
    primary, fallback = FixedScorer("p:v2", [0.9] * 3), FixedScorer("f:v1", [0.3] * 3)
    scoring = chain(primary, fallback)
    result = scoring.score(MATRIX, skip=("primary",))
    assert (result.path, result.version) == ("fallback", "f:v1")
    assert primary.calls == 0
    both: tuple[ChainPath, ...] = ("primary", "fallback")
    assert scoring.score(MATRIX, skip=both).path == "static"
    assert (primary.calls, fallback.calls) == (0, 1)


def test_missing_links_are_passed_over() -> None:
    fallback = FixedScorer("f:v1", [0.3] * 3)
    assert chain(None, fallback).score(MATRIX).path == "fallback"
    assert chain(None, None).score(MATRIX).path == "static"


class UnavailableScorer:
    """A model server that throttles every call: a transient failure."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.calls = 0

    def score(self, matrix: np.ndarray) -> np.ndarray:
        self.calls += 1
        raise ModelUnavailableError(f"{self.version}: throttled")


def test_a_transient_primary_failure_is_deferred_only_when_asked() -> None:
    fallback = FixedScorer("f:v1", [0.2] * 3)
    scoring = chain(UnavailableScorer("p:v2"), fallback)
    assert scoring.score(MATRIX).path == "fallback"  # retry topics off: falls back as before
    with pytest.raises(ModelUnavailableError):
        scoring.score(MATRIX, defer=True)
    assert fallback.calls == 1  # the deferred chunk took no fallback answer


def test_deferring_still_falls_back_for_other_failures_and_an_open_breaker() -> None:
    fallback = FixedScorer("f:v1", [0.2] * 3)
    assert chain(FailingScorer("p:v2"), fallback).score(MATRIX, defer=True).path == "fallback"
    # a transient failure of the fallback is not deferred: the static answer follows
    both = chain(UnavailableScorer("p:v2"), UnavailableScorer("f:v1"), static=0.1)
    assert both.score(MATRIX, skip=("primary",), defer=True).path == "static"
    primary = UnavailableScorer("p:v2")
    scoring = chain(primary, fallback)
    breaker = CircuitBreaker("model:primary", BreakerConfig(
        window="count", window_size=4, minimum_calls=2, wait_duration=60.0))
    scoring.breakers = {"primary": breaker}
    for _ in range(2):  # the breaker counts the deferred failures and opens
        with pytest.raises(ModelUnavailableError):
            scoring.score(MATRIX, defer=True)
    assert breaker.state == State.OPEN
    result = scoring.score(MATRIX, defer=True)  # open: the fallback answers, no retry
    assert result.path == "fallback" and primary.calls == 2


def test_a_model_timing_out_is_unavailable_not_broken() -> None:
    class TimingOut:
        classes_ = np.array([0, 1])

        def predict_proba(self, matrix: np.ndarray) -> np.ndarray:
            raise TimeoutError("model server did not answer in 2 s")

    version = ModelVersion(name="p", version="v1", created_ms=0, stage="production",
                           metrics={}, feature_names=FEATURE_NAMES, threshold=0.5, reference={})
    with pytest.raises(ModelUnavailableError, match="TimeoutError"):
        ModelScorer(version, TimingOut()).score(MATRIX)


def test_the_faulty_model_fails_transiently_for_a_count_of_calls(tmp_path: Path) -> None:
    x = np.random.default_rng(1).normal(size=(50, WIDTH))
    model = LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))
    switch = tmp_path / "fault"
    faulty = FaultyModel(model, switch=switch)
    switch.write_text("unavailable 2")
    outcomes = []
    for _ in range(4):
        try:
            faulty.predict_proba(x[:3])
            outcomes.append("ok")
        except ModelUnavailableError:
            outcomes.append("unavailable")
    assert outcomes == ["unavailable", "unavailable", "ok", "ok"]
    switch.write_text("unavailable")
    with pytest.raises(ModelUnavailableError):
        faulty.predict_proba(x[:3])
    switch.write_text("")
    assert faulty.predict_proba(x[:3]).shape == (3, 2)


@pytest.fixture(scope="module")
def sklearn_chain() -> ScoringChain:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, WIDTH))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)

    def version(name: str, threshold: float) -> ModelVersion:
        return ModelVersion(name=name, version="v1", created_ms=0, stage="production",
                            metrics={}, feature_names=FEATURE_NAMES, threshold=threshold,
                            reference={})

    # logistic regression refuses NaN; the gradient-boosted fallback handles it natively
    primary = ModelScorer(version("primary", 0.6), LogisticRegression(max_iter=500).fit(x, y))
    fallback = ModelScorer(version("fallback", 0.3),
                           HistGradientBoostingClassifier(max_iter=20).fit(x, y))
    return ScoringChain(primary=primary, fallback=fallback, static=StaticScorer(0.0),
                        primary_threshold=primary.threshold,
                        fallback_threshold=fallback.threshold)


def test_fitted_models_score_through_the_chain(sklearn_chain: ScoringChain) -> None:
    matrix = np.zeros((5, WIDTH))
    matrix[:, 0] = [-3.0, -1.0, 0.0, 1.0, 3.0]
    result = sklearn_chain.score(matrix)
    assert (result.path, result.version, result.threshold) == ("primary", "primary:v1", 0.6)
    assert result.scores.shape == (5,)
    assert np.all((result.scores >= 0) & (result.scores <= 1))
    assert np.all(np.diff(result.scores) > 0)  # monotone in the deciding feature


def test_a_model_failure_in_sklearn_falls_back(sklearn_chain: ScoringChain) -> None:
    matrix = np.zeros((4, WIDTH))
    matrix[1, 3] = np.nan
    result = sklearn_chain.score(matrix)
    assert (result.path, result.version, result.threshold) == ("fallback", "fallback:v1", 0.3)
    assert result.scores.shape == (4,) and np.all(np.isfinite(result.scores))
    wrong_width = sklearn_chain.score(np.zeros((2, WIDTH - 1)))
    assert wrong_width.path == "static"
    assert wrong_width.scores.tolist() == [0.0, 0.0]


def envelopes(n: int, *, age_ms: float = 250.0, accounts: Sequence[str] = ()) -> Batch:
    ingested = int(time.time() * 1000 - age_ms)
    return Batch.from_envelopes([
        {"event_id": f"e-{i}", "trace_id": f"{i:032x}", "traceparent": f"00-{i:032x}-{i:016x}-01",
         "event_time": 1_700_000_000_000 + i, "ingested_at": ingested,
         "account_id": accounts[i] if accounts else f"acct-{i}", "fields": b"{}",
         "source_topic": "events", "source_partition": 0, "source_offset": i,
         "source_timestamp": -1, "key": None, "value": b"{}", "headers": [],
         "feature_quality": "" if i % 2 == 0 else "imputed:age"}
        for i in range(n)])


def test_prediction_records_describe_the_answer() -> None:
    result = ScoreResult(np.array([0.1, 0.5, 0.9]), "fallback", "f:v4", 0.5)
    envs = envelopes(3, accounts=["acct-1", "", "acct-3"])
    before = time.time() * 1000
    records = predictions(envs, result)
    after = time.time() * 1000
    assert [r["event_id"] for r in records] == ["e-0", "e-1", "e-2"]
    assert [r["trace_id"] for r in records] == envs.trace_ids
    assert [r["account_id"] for r in records] == ["acct-1", None, "acct-3"]
    assert [r["score"] for r in records] == [0.1, 0.5, 0.9]
    assert [r["label"] for r in records] == [False, True, True]  # score >= threshold
    assert {r["threshold"] for r in records} == {0.5}
    assert {r["path"] for r in records} == {"fallback"}
    assert {r["model_version"] for r in records} == {"f:v4"}
    assert [r["event_time"] for r in records] == envs.event_times.tolist()
    assert [r["feature_quality"] for r in records] == ["ok", "imputed:age", "ok"]
    assert not any(r["shed"] for r in records)
    for record, ingested_at in zip(records, envs.ingested_at.tolist(), strict=True):
        assert before - 1 <= record["predicted_at"] <= after
        assert record["latency_ms"] >= 250.0
        assert record["latency_ms"] == pytest.approx(
            record["predicted_at"] - ingested_at, abs=1.0)


def test_static_predictions_are_never_flagged_at_threshold_one() -> None:
    result = chain(FailingScorer("p"), FailingScorer("f"), static=0.0).score(np.zeros((2, 3)))
    records = predictions(envelopes(2), result)
    assert [(r["path"], r["model_version"], r["label"]) for r in records] == [
        ("static", "static", False)] * 2


def test_every_prediction_fits_the_schema(sklearn_chain: ScoringChain) -> None:
    codec = Codec()
    matrix = np.random.default_rng(1).normal(size=(6, WIDTH))
    for skip in ((), ("primary",), ("primary", "fallback")):
        result = sklearn_chain.score(matrix, skip=skip)
        records = predictions(envelopes(6), result)
        for record in records:
            assert codec.decode(codec.encode(PREDICTION, record)) == record


def test_predictions_need_one_score_per_event() -> None:
    result = ScoreResult(np.array([0.1, 0.2]), "primary", "p:v1", 0.5)
    with pytest.raises(ValueError):
        predictions(envelopes(3), result)


class SwitchableScorer(FixedScorer):
    """Fails while ``broken`` is set, answers otherwise."""

    broken = True

    def score(self, matrix: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.broken:
            raise ScoringError(f"{self.version}: down")
        return self.scores[: len(matrix)]


def test_an_open_breaker_skips_the_primary_then_probes_and_closes() -> None:
    now = [0.0]
    primary = SwitchableScorer("p:v1", [0.9, 0.9, 0.9])
    fallback = FixedScorer("f:v1", [0.1, 0.1, 0.1])
    scoring = chain(primary, fallback)
    config = BreakerConfig(minimum_calls=4, window_size=10, wait_duration=5.0,
                           permitted_calls_in_half_open=2)
    scoring.breakers = {"primary": CircuitBreaker("model:primary", config,
                                                  clock=lambda: now[0])}
    paths = [scoring.score(MATRIX).path for _ in range(10)]
    assert paths == ["fallback"] * 10
    assert primary.calls == 4, "after the breaker opened the broken model was not called"
    opened = scoring.breakers["primary"].state
    assert opened == State.OPEN
    primary.broken = False
    now[0] = 6.0  # past wait_duration: half-open lets trial calls through
    assert [scoring.score(MATRIX).path for _ in range(3)] == ["primary"] * 3
    assert scoring.breakers["primary"].state == State.CLOSED


# --- the served primary: pinned by promote/rollback commands, threshold by command -----------


@pytest.fixture
def switch_registry(tmp_path: Path) -> ModelRegistry:
    """Primary v1 (production) and v2 (candidate, scores differently), fallback v1."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, WIDTH))
    y = (x[:, 0] > 0).astype(int)
    registry = ModelRegistry(tmp_path / "models")
    for name, weight, threshold in ((PRIMARY, 1.0, 0.6), (PRIMARY, -1.0, 0.3),
                                    (FALLBACK, 1.0, 0.5)):
        model = LogisticRegression(max_iter=500).fit(weight * x, y)
        mv = registry.register(name, model, metrics={}, feature_names=FEATURE_NAMES,
                               threshold=threshold, reference={})
        if mv.version == "v1":
            registry.promote(name, "v1")
    return registry


def _mode(*records: dict[str, Any]) -> StageMode:
    mode = StageMode(stage="inference")
    for record in records:
        mode.apply(record)
    return mode


def _pin(action: str, version: str, **extra: str) -> dict[str, Any]:
    return command("inference", action, parameters={"version": version, **extra},
                   reason="test", issuer="t")


def test_pinned_version_follows_the_newest_model_command_for_the_served_model() -> None:
    assert pinned_version(_mode()) is None
    assert pinned_version(_mode(_pin("promote", "v2"))) == "v2"
    assert pinned_version(_mode(_pin("promote", "v2"), _pin("rollback", "v1"))) == "v1"
    assert pinned_version(_mode(_pin("promote", "v2", model=PRIMARY))) == "v2"
    assert pinned_version(_mode(_pin("promote", "v2", model=FALLBACK))) is None


def test_the_switch_serves_the_pinned_version_and_the_threshold_command(
        switch_registry: ModelRegistry) -> None:
    scoring = ScoringChain.from_registry(switch_registry)
    switched: list[str] = []
    switch = PrimarySwitch(switch_registry, scoring, on_switch=lambda s: switched.append(s.version))
    assert switch.served == "v1" and switch.sync(_mode()) is None
    matrix = np.random.default_rng(3).normal(size=(4, WIDTH))
    before = scoring.score(matrix)
    switch.switch_now(_mode(_pin("promote", "v2")))
    after = scoring.score(matrix)
    assert switched == [f"{PRIMARY}:v2"] and switch.served == "v2"
    assert (before.version, after.version) == (f"{PRIMARY}:v1", f"{PRIMARY}:v2")
    assert (before.threshold, after.threshold) == (0.6, 0.3)
    assert not np.allclose(before.scores, after.scores)
    threshold = command("inference", "threshold", parameters={"value": "0.45"}, reason="t",
                        issuer="t")
    mode = _mode(_pin("promote", "v2"), threshold)
    assert switch.sync(mode) is None and scoring.score(matrix).threshold == 0.45
    records = predictions(envelopes(4), scoring.score(matrix))
    assert {(r["model_version"], r["threshold"]) for r in records} == {(f"{PRIMARY}:v2", 0.45)}
    switch.switch_now(_mode(_pin("promote", "v2"), _pin("rollback", "v1"), threshold))
    assert scoring.score(matrix).version == f"{PRIMARY}:v1"
    assert scoring.score(matrix).threshold == 0.45  # an operator's threshold outlives a switch
    assert scoring.score(matrix, skip=("primary",)).threshold == 0.5  # not the fallback's


def test_a_missing_version_keeps_the_current_model_counts_an_error_and_retries_later(
        switch_registry: ModelRegistry) -> None:
    scoring = ScoringChain.from_registry(switch_registry)
    now = [0.0]
    errors: list[str] = []
    switch = PrimarySwitch(switch_registry, scoring, retry_after=30.0, clock=lambda: now[0],
                           on_error=lambda version, exc: errors.append(version))
    mode = _mode(_pin("promote", "v9"))
    switch.switch_now(mode)
    assert errors == ["v9"] and switch.served == "v1"
    assert scoring.score(np.zeros((2, WIDTH))).version == f"{PRIMARY}:v1"
    assert switch.sync(mode) is None, "retried at once instead of after retry_after"
    now[0] = 31.0
    assert switch.sync(mode) == "v9"


def _tamper(registry: ModelRegistry, name: str, version: str) -> None:
    artifact = registry.root / name / version / "model.joblib"
    artifact.write_bytes(artifact.read_bytes() + b"\0")  # one byte more: still a pickle


def test_a_tampered_pinned_version_is_a_failed_load_and_the_current_model_serves(
        switch_registry: ModelRegistry, caplog: pytest.LogCaptureFixture) -> None:
    scoring = ScoringChain.from_registry(switch_registry)
    errors: list[tuple[str, Exception]] = []
    switch = PrimarySwitch(switch_registry, scoring,
                           on_error=lambda version, exc: errors.append((version, exc)))
    _tamper(switch_registry, PRIMARY, "v2")
    matrix = np.zeros((3, WIDTH))
    with caplog.at_level(logging.ERROR, logger="tidegate.pipeline.inference"):
        switch.switch_now(_mode(_pin("promote", "v2")))
    assert [(v, type(e)) for v, e in errors] == [("v2", ModelArtifactTamperedError)]
    assert "checksum mismatch" in caplog.text and "still serving v1" in caplog.text
    result = scoring.score(matrix)  # every event still gets its prediction, from v1
    assert (switch.served, result.version, result.path) == ("v1", f"{PRIMARY}:v1", "primary")
    assert len(predictions(envelopes(3), result)) == 3


def test_a_tampered_production_model_stops_the_stage_at_start_with_one_line(
        switch_registry: ModelRegistry) -> None:
    _tamper(switch_registry, FALLBACK, "v1")
    # fatal like any unloadable production model: the stage exits before it consumes, so no
    # event is read, committed or lost; the supervisor restarts it and alerts
    with pytest.raises(ModelArtifactTamperedError, match="checksum mismatch") as info:
        ScoringChain.from_registry(switch_registry)
    assert "\n" not in str(info.value)


def test_refresh_loads_in_a_thread_while_the_current_model_goes_on_serving(
        switch_registry: ModelRegistry) -> None:
    scoring = ScoringChain.from_registry(switch_registry)
    errors: list[str] = []
    switch = PrimarySwitch(switch_registry, scoring,
                           on_error=lambda version, exc: errors.append(version))
    matrix = np.zeros((2, WIDTH))

    async def batches(mode: StageMode) -> list[str]:
        served = []
        for _ in range(200):
            switch.refresh(mode)  # one load at a time, however many batches ask
            served.append(scoring.score(matrix).version)
            await asyncio.sleep(0.01)
            if served[-1] != served[0]:
                break
        return served

    served = asyncio.run(batches(_mode(_pin("promote", "v2"))))
    assert served[0] == f"{PRIMARY}:v1" and served[-1] == f"{PRIMARY}:v2"
    served = asyncio.run(batches(_mode(_pin("promote", "v7"))))
    assert set(served) == {f"{PRIMARY}:v2"} and errors == ["v7"]


def test_a_model_call_is_a_score_span_naming_the_path_and_the_failed_link(
        spans: InMemorySpanExporter) -> None:
    result = chain(FailingScorer("fraud-primary:v2"), FixedScorer("fraud-fallback:v1",
                                                                  [0.1, 0.2, 0.3])).score(MATRIX)
    assert result.path == "fallback"
    [span] = spans.get_finished_spans()
    assert span.name == "score"
    assert dict(span.attributes or {}) == {"tidegate.model.rows": 3,
                                            "tidegate.model.path": "fallback",
                                            "tidegate.model.version": "fraud-fallback:v1"}
    [failed] = span.events
    assert failed.name == "exception"
    assert (failed.attributes or {})["tidegate.model.path"] == "primary"
    assert (failed.attributes or {})["exception.type"] == "tidegate.errors.ScoringError"

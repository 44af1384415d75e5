"""Canary release without a broker: the commands, the account split, the candidate's scoring, the
score bins inference reports, and the judge that promotes or ends the canary."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, cast

import numpy as np
import pytest

from tests.unit.test_analyst import CFG, REF, T0, V1, V2, commands, predictions_and_labels
from tests.unit.test_batches import batch_of
from tests.unit.test_inference import FailingScorer, FixedScorer
from tidegate.batches import Batch
from tidegate.breaker import BreakerConfig, CircuitBreaker
from tidegate.control import StageMode, command
from tidegate.errors import ConfigError
from tidegate.models.scoring import ModelScorer
from tidegate.monitoring.accuracy import LabelJoin
from tidegate.monitoring.analyst import Analyst
from tidegate.monitoring.canary import CanaryJudge
from tidegate.pipeline.canary import SCORE_CUTS, ScoreBins, canary_rows, score_canary

pytestmark = pytest.mark.unit

ACCOUNTS = [f"acct-{i}" for i in range(20_000)]


def canary_command(version: str = "v2", share: str = "0.2") -> dict[str, Any]:
    return command("inference", "canary", parameters={"version": version, "share": share},
                   reason="try v2", issuer="alice")


def test_canary_commands_are_validated_and_set_the_mode() -> None:
    for params, why in (({"share": "0.1"}, "version"), ({"version": "v2"}, "share"),
                        ({"version": "v2", "share": "0.6"}, "at most 0.5"),
                        ({"version": "v2", "share": "0"}, "above 0")):
        with pytest.raises(ConfigError, match=why):
            command("inference", "canary", parameters=params, reason="r", issuer="a")
    with pytest.raises(ConfigError, match="target inference"):
        command("feature", "canary", parameters={"version": "v2", "share": "0.1"}, reason="r",
                issuer="a")
    mode = StageMode(stage="inference")
    assert mode.apply(canary_command())
    assert (mode.canary_version, mode.canary_share) == ("v2", 0.2)
    assert mode.label() == "canary=v2@0.2"
    assert mode.apply(command("inference", "end_canary", reason="done", issuer="alice"))
    assert (mode.canary_version, mode.canary_share, mode.label()) == (None, 0.0, "normal")
    other = StageMode(stage="feature")
    assert other.apply(canary_command()) is False


def test_the_split_is_stable_nested_and_close_to_the_share() -> None:
    tenth, fifth = canary_rows(ACCOUNTS, 0.1), canary_rows(ACCOUNTS, 0.2)
    assert np.array_equal(tenth, canary_rows(list(ACCOUNTS), 0.1))  # the same every time
    assert not np.any(tenth & ~fifth)  # a larger share keeps every account of a smaller one
    assert abs(tenth.mean() - 0.1) < 0.01 and abs(fifth.mean() - 0.2) < 0.01
    assert not canary_rows(ACCOUNTS, 0.0).any()
    assert canary_rows([], 0.3).shape == (0,)
    # an account's events all go one way, whatever batch they arrive in
    repeated = canary_rows(["acct-7"] * 5 + ["acct-8"] * 5, 0.5)
    assert len(set(repeated[:5].tolist())) == 1 and len(set(repeated[5:].tolist())) == 1


def _batch(accounts: list[str]) -> Batch:
    batch = batch_of(len(accounts), width=3)
    return dataclasses.replace(batch, account_ids=accounts)


def _scorer(fake: Any) -> ModelScorer:
    fake.threshold = 0.7
    return cast(ModelScorer, fake)


def test_the_candidate_scores_its_rows_and_leaves_the_others_to_the_chain() -> None:
    accounts = ACCOUNTS[:400]
    mine = canary_rows(accounts, 0.3)
    candidate = FixedScorer("fraud-primary:v2", [0.9] * 400)
    tried, rest = score_canary(_batch(accounts), _scorer(candidate), 0.3)
    assert tried is not None
    part, result = tried
    assert part.account_ids == [a for a, m in zip(accounts, mine, strict=True) if m]
    assert rest.account_ids == [a for a, m in zip(accounts, mine, strict=True) if not m]
    assert (result.path, result.version, result.threshold) == ("primary", "fraud-primary:v2",
                                                               0.7)
    assert len(result.scores) == len(part) == int(mine.sum())


def test_a_failing_candidate_leaves_every_row_to_the_chain() -> None:
    batch = _batch(ACCOUNTS[:200])
    failing = FailingScorer("fraud-primary:v2")
    breaker = CircuitBreaker("model:canary", BreakerConfig(window_size=2, minimum_calls=2,
                                                           wait_duration=60.0))
    for _ in range(2):
        tried, rest = score_canary(batch, _scorer(failing), 0.5, breaker=breaker)
        assert tried is None and rest is batch
    assert str(breaker.state) == "open"
    tried, rest = score_canary(batch, _scorer(failing), 0.5, breaker=breaker)
    assert tried is None and rest is batch and failing.calls == 2  # open: not called again


def test_score_bins_report_the_interval_then_start_again() -> None:
    bins = ScoreBins()
    bins.add("candidate", np.array([0.01, 0.5, 0.95]))
    assert bins.report() == {}  # no canary version: nothing to report
    bins.version = V2
    bins.add("candidate", np.array([0.01, 0.5, 0.95]))
    bins.add("production", np.array([0.02]))
    report = json.loads(bins.report()["canary_bins"])
    assert report["version"] == V2
    assert len(report["candidate"]) == len(SCORE_CUTS) + 1
    assert report["candidate"][0] == 1 and report["candidate"][5] == 1
    assert report["candidate"][-1] == 1 and sum(report["production"]) == 1
    assert bins.report() == {}


def _bins(judge: CanaryJudge, candidate: list[float], production: list[float],
          version: str = V2, breaker: str = "closed") -> None:
    bins = ScoreBins()
    bins.version = version
    bins.add("candidate", np.asarray(candidate))
    bins.add("production", np.asarray(production))
    judge.on_health({"stage": "inference", "breakers": {"model:canary": breaker},
                     "extra": bins.report()})


def _labelled(join: LabelJoin, version: str, n: int, correct: int, prefix: str) -> None:
    for i in range(n):
        outcome = i % 2 == 0
        score = 0.9 if outcome == (i < correct) else 0.1
        join.on_prediction({"event_id": f"{prefix}{i}", "model_version": version,
                            "score": score, "label": score >= 0.5, "path": "primary"})
        join.on_label({"event_id": f"{prefix}{i}", "label": outcome})


SCORES = np.linspace(0.0, 1.0, 600).tolist()


def test_the_judge_promotes_a_candidate_as_good_as_production_once() -> None:
    judge, join = CanaryJudge(min_labels=50, min_scores=500), LabelJoin(window=100)
    judge.on_command(canary_command())
    _bins(judge, SCORES, SCORES)
    _labelled(join, V1, 60, 57, "p")
    assert judge.judge(join, V1) is None  # the candidate has no labels yet
    _labelled(join, V2, 60, 56, "c")
    verdict = judge.judge(join, V1)
    assert verdict is not None and verdict.action == "promote" and verdict.version == "v2"
    assert verdict.details["accuracy"] == f"{56 / 60:.6f}"
    assert judge.judge(join, V1) is None  # one verdict per canary


def test_the_judge_ends_a_less_accurate_or_shifted_or_failing_candidate() -> None:
    join = LabelJoin(window=100)
    _labelled(join, V1, 60, 57, "p")
    _labelled(join, V2, 60, 40, "c")
    worse = CanaryJudge(min_labels=50, min_scores=500)
    worse.on_command(canary_command())
    _bins(worse, SCORES, SCORES)
    verdict = worse.judge(join, V1)
    assert verdict is not None and verdict.action == "end" and "worse" in verdict.reason

    shifted = CanaryJudge(min_labels=50, min_scores=500)
    shifted.on_command(canary_command())
    _bins(shifted, [1.0 - s for s in SCORES[:300]] * 2, [s / 4 for s in SCORES])
    verdict = shifted.judge(LabelJoin(), V1)  # no labels needed to see the scores move
    assert verdict is not None and verdict.action == "end" and "PSI" in verdict.reason

    failing = CanaryJudge()
    failing.on_command(canary_command())
    _bins(failing, [0.5], [0.5], breaker="open")
    verdict = failing.judge(LabelJoin(), V1)
    assert verdict is not None and verdict.action == "end" and "breaker" in verdict.reason


def test_the_judge_ignores_other_versions_and_forgets_an_ended_canary() -> None:
    judge = CanaryJudge(min_scores=10)
    judge.on_command(canary_command())
    _bins(judge, SCORES, SCORES, version="fraud-primary:v9")
    assert judge.score_shift() is None
    _bins(judge, SCORES, SCORES)
    assert judge.score_shift() == pytest.approx(0.0)
    judge.on_command(command("inference", "end_canary", reason="done", issuer="alice"))
    assert judge.run is None and judge.snapshot() is None


def test_the_analyst_promotes_then_ends_the_canary() -> None:
    analyst = Analyst(dataclasses.replace(CFG, canary_min_scores=500))
    analyst.set_reference(V1, REF, {V1: 0.96}, previous_version=None)
    analyst.on_command(canary_command())
    _bins(analyst.canary, SCORES, SCORES)
    predictions_and_labels(analyst, V1, 60, 57, "p")
    predictions_and_labels(analyst, V2, 60, 57, "c")
    sent = commands([analyst.assess(T0)])
    assert [(c["action"], c["parameters"]) for c in sent] == [
        ("promote", {"version": "v2", "model": "fraud-primary"}), ("end_canary", {})]
    assert all("inference/canary/fraud-primary:v2" in c["reason"] for c in sent)
    assert analyst.snapshot(T0)["canary"]["verdict"] == "promote"
    assert commands([analyst.assess(T0 + 2)]) == []

"""The analyst end to end, without Kafka: health, predictions and labels in; alerts, levels and
control commands out. Time is injected; every command is checked against the control contract.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from tidegate.control import command, validate
from tidegate.monitoring.analyst import ISSUER, Analyst, AnalystConfig, Assessment
from tidegate.monitoring.anomaly import WatchConfig

pytestmark = pytest.mark.unit

T0 = 1_700_000_000.0
V1, V2 = "fraud-primary:v1", "fraud-primary:v2"
REF = {"amount": {"cuts": [0.5], "shares": [0.5, 0.5]}, "score": {"cuts": [0.5],
                                                                   "shares": [0.9, 0.1]}}
CFG = AnalystConfig(stale_after=30.0, resolve_after=10.0, restore_after=60.0, command_grace=5.0,
                    breaker_degrade_after=0.0,
                    min_labels=50, accuracy_window=100, drift_min_events=100,
                    watch=WatchConfig(anomaly_min_baseline=5))  # fmt: skip


def health(stage: str, instance: str = "i-1", **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "stage": stage, "instance": instance, "time": 0, "interval_seconds": 2.0,
        "records_in": 1000, "records_out": 1000, "dead_lettered": 0, "dead_letters_by_code": {},
        "errors": 0, "latency_p50_ms": 5.0, "latency_p95_ms": 8.0, "latency_p99_ms": 10.0,
        "lag": 0, "mode": "normal", "breakers": {}, "paused": False, "pause_reason": None,
        "model_version": None, "extra": {},
    }
    event.update(fields)
    return event


def all_healthy(analyst: Analyst, now: float, **inference: Any) -> None:
    for stage in ("ingest", "validation", "feature"):
        analyst.on_health(health(stage), now)
    analyst.on_health(health("inference", **inference), now)


def run(analyst: Analyst, start: float, stop: float, step: float = 2.0,
        **inference: Any) -> list[Assessment]:  # fmt: skip
    """Healthy reports from every stage, and an assessment, every ``step`` seconds."""
    out, now = [], start
    while now <= stop:
        all_healthy(analyst, now, **inference)
        out.append(analyst.assess(now))
        now += step
    return out


def commands(assessments: list[Assessment]) -> list[dict[str, Any]]:
    issued = [c for a in assessments for c in a.commands]
    for record in issued:
        validate(record)  # every stage could apply it
        assert record["issuer"] == ISSUER and record["reason"].startswith("alert ")
    return issued


OPEN = {"model:primary": "open", "model:fallback": "closed"}


def test_open_primary_breaker_degrades_once_then_restores_after_normal_hold() -> None:
    analyst = Analyst(CFG)
    first = run(analyst, T0, T0 + 4, breakers=OPEN)
    (degrade,) = commands(first)
    assert (degrade["target"], degrade["action"], degrade["parameters"]) == (
        "inference", "degrade", {"to": "fallback"})  # fmt: skip
    assert "inference/breaker/model:primary" in degrade["reason"]
    assert degrade["time"] == int(T0 * 1000)
    assert first[0].levels["inference"] == "CRITICAL" and first[0].levels["system"] == "CRITICAL"
    assert [a.key for a in first[0].alerts] == ["inference/breaker/model:primary"]
    # degraded: the primary is skipped, its breaker state is stale and ignored
    later = run(analyst, T0 + 6, T0 + 200, mode="fallback", breakers=OPEN)
    (restore,) = commands(later)
    assert restore["action"] == "restore" and restore["target"] == "inference"
    resolved = [a for s in later for a in s.alerts]
    assert [(a.key, a.status) for a in resolved] == [("inference/breaker/model:primary",
                                                      "resolved")]  # fmt: skip
    restored_at = next(i for i, s in enumerate(later) if s.commands)
    calm_since = next(i for i, s in enumerate(later) if s.levels["inference"] == "NORMAL")
    assert (restored_at - calm_since) * 2.0 == pytest.approx(60.0)
    assert [c["action"] for c in analyst.actions] == ["degrade", "restore"]


def test_a_breaker_that_closes_within_the_grace_leaves_inference_alone() -> None:
    analyst = Analyst(replace(CFG, breaker_degrade_after=60.0))
    short = run(analyst, T0, T0 + 40, breakers=OPEN)  # the breaker copes: fallback answers
    assert commands(short) == []
    assert short[-1].levels["inference"] == "CRITICAL"
    closed = {"model:primary": "closed", "model:fallback": "closed"}
    assert commands(run(analyst, T0 + 42, T0 + 100, breakers=closed)) == []
    lasting = run(analyst, T0 + 102, T0 + 170, breakers=OPEN)
    (degrade,) = commands(lasting)
    assert degrade["action"] == "degrade"
    opened = next(i for i, a in enumerate(lasting) if a.levels["inference"] == "CRITICAL")
    issued = next(i for i, a in enumerate(lasting) if a.commands)
    assert (issued - opened) * 2.0 == pytest.approx(60.0)


def test_a_lasting_warning_does_not_keep_inference_degraded_but_critical_does() -> None:
    analyst = Analyst(CFG)
    analyst.set_reference(V2, REF, {})
    drifted = drift_extra([0, 200], 200)
    commands(run(analyst, T0, T0 + 4, breakers=OPEN, extra=drifted))
    later = run(analyst, T0 + 6, T0 + 200, mode="fallback", breakers=OPEN, extra=drifted)
    assert {s.levels["inference"] for s in later[10:]} == {"WARNING"}  # drift, for good
    assert [c["action"] for c in commands(later)] == ["restore"]
    both = Analyst(CFG)
    commands(run(both, T0, T0 + 4, breakers=OPEN))
    fallback_down = {"model:primary": "open", "model:fallback": "open"}
    stuck = run(both, T0 + 6, T0 + 300, mode="fallback", breakers=fallback_down)
    assert stuck[-1].levels["inference"] == "CRITICAL" and commands(stuck) == []


def test_primary_still_failing_after_restore_is_a_new_condition() -> None:
    analyst = Analyst(CFG)
    # an operator degraded before the primary broke: its breaker is stale, nothing to do
    assert commands(run(analyst, T0, T0 + 200, mode="fallback", breakers=OPEN)) == []
    assert not analyst.actions and analyst.book.active() == []
    analyst2 = Analyst(CFG)
    commands(run(analyst2, T0, T0 + 4, breakers=OPEN))
    commands(run(analyst2, T0 + 6, T0 + 200, mode="fallback", breakers=OPEN))
    again = commands(run(analyst2, T0 + 202, T0 + 230, breakers=OPEN))
    assert [c["action"] for c in again] == ["degrade"]
    assert [c["action"] for c in analyst2.actions] == ["degrade", "restore", "degrade"]


def test_an_operator_restore_is_never_fought() -> None:
    analyst = Analyst(CFG)
    assert len(commands(run(analyst, T0, T0 + 4, breakers=OPEN))) == 1
    operator = command("inference", "restore", reason="testing the primary", issuer="alice")
    operator["time"] = int((T0 + 5) * 1000)
    analyst.on_command(operator)
    assert commands(run(analyst, T0 + 6, T0 + 60, breakers=OPEN)) == []  # same episode
    assert commands(run(analyst, T0 + 62, T0 + 300)) == []  # and no restore of theirs


def test_an_operator_mode_change_seen_in_health_hands_over() -> None:
    analyst = Analyst(CFG)
    commands(run(analyst, T0, T0 + 2, breakers=OPEN))
    # the operator degraded further to static; monitoring must not restore that
    assert commands(run(analyst, T0 + 4, T0 + 300, mode="static", breakers=OPEN)) == []


def test_monitoring_commands_of_its_own_do_not_hand_over() -> None:
    analyst = Analyst(CFG)
    (degrade,) = commands(run(analyst, T0, T0 + 2, breakers=OPEN))
    analyst.on_command(degrade)  # its own command read back from the control topic
    restores = commands(run(analyst, T0 + 4, T0 + 200, mode="fallback"))
    assert [c["action"] for c in restores] == ["restore"]


def test_critical_error_rate_anomaly_at_inference_degrades() -> None:
    analyst = Analyst(CFG)
    assert commands(run(analyst, T0, T0 + 20, errors=1)) == []  # a baseline of 0.1%
    all_healthy(analyst, T0 + 22, errors=45)  # 4.5%: under the rate threshold, 4.4 std up
    result = analyst.assess(T0 + 22)
    assert result.levels["inference"] == "CRITICAL"
    (degrade,) = commands([result])
    assert "inference/error_rate_anomaly" in degrade["reason"]


def test_a_fallback_breaker_or_anomaly_elsewhere_is_no_reason_to_degrade() -> None:
    analyst = Analyst(CFG)
    first = run(analyst, T0, T0 + 4, breakers={"model:primary": "closed",
                                               "model:fallback": "open"})  # fmt: skip
    assert first[-1].levels["inference"] == "CRITICAL" and commands(first) == []
    for t in range(12):
        analyst.on_health(health("validation", errors=0), T0 + 10 + t)
    analyst.on_health(health("validation", errors=45), T0 + 30)
    result = analyst.assess(T0 + 30)
    assert {a.kind: a.severity for a in result.alerts} == {"error_rate_anomaly": "warning"}
    assert result.levels["validation"] == "WARNING" and result.commands == []


def test_silent_stages_go_critical_and_two_of_them_pause_ingest_once() -> None:
    analyst = Analyst(CFG)
    analyst.on_health(health("monitoring"), T0)  # monitoring's own health is not judged
    commands(run(analyst, T0, T0 + 10))
    assert analyst.assess(T0 + 10).levels["system"] == "NORMAL"
    for t in range(12, 42, 2):  # validation and feature fall silent
        analyst.on_health(health("ingest"), T0 + t)
        analyst.on_health(health("inference"), T0 + t)
    result = analyst.assess(T0 + 42)
    assert result.levels["validation"] == result.levels["feature"] == "CRITICAL"
    assert result.levels["system"] == "EMERGENCY" and "monitoring" not in result.levels
    (pause,) = commands([result])
    assert (pause["target"], pause["action"]) == ("ingest", "pause")
    assert "feature/liveness" in pause["reason"] and "validation/liveness" in pause["reason"]
    assert commands([analyst.assess(T0 + 44), analyst.assess(T0 + 46)]) == []  # once
    # back, then down again: a new emergency, a new pause; monitoring never resumes
    back = run(analyst, T0 + 48, T0 + 70)
    assert back[-1].levels["system"] == "NORMAL" and commands(back) == []
    for t in range(72, 104, 2):
        analyst.on_health(health("ingest"), T0 + t)
        analyst.on_health(health("inference"), T0 + t)
    assert [c["action"] for c in commands([analyst.assess(T0 + 104)])] == ["pause"]


def test_an_emergency_of_latency_alone_does_not_pause_ingest() -> None:
    analyst = Analyst(CFG)
    results = []
    for t in range(0, 20, 2):  # an input spike: two stages far over their latency objective
        for stage in ("ingest", "inference"):
            analyst.on_health(health(stage), T0 + t)
        for stage in ("validation", "feature"):
            analyst.on_health(health(stage, latency_p99_ms=60_000.0), T0 + t)
        results.append(analyst.assess(T0 + t))
    assert results[-1].levels["validation"] == results[-1].levels["feature"] == "CRITICAL"
    assert results[-1].levels["system"] == "EMERGENCY"
    assert commands(results) == [], "busy is not broken: ingest keeps taking events"


def test_a_stage_never_seen_is_not_down() -> None:
    analyst = Analyst(CFG)
    analyst.on_health(health("ingest"), T0)
    result = analyst.assess(T0 + 1000)
    assert result.levels == {"ingest": "CRITICAL", "validation": "NORMAL", "feature": "NORMAL",
                             "inference": "NORMAL", "system": "CRITICAL"}  # fmt: skip


def predictions_and_labels(analyst: Analyst, version: str, n: int, correct: int,
                           prefix: str) -> None:  # fmt: skip
    for i in range(n):
        outcome = i % 2 == 0
        score = 0.9 if outcome == (i < correct) else 0.1
        analyst.on_prediction({"event_id": f"{prefix}{i}", "model_version": version,
                               "score": score, "label": score >= 0.5, "threshold": 0.5,
                               "path": "primary", "shed": False})  # fmt: skip
        analyst.on_label({"event_id": f"{prefix}{i}", "label": outcome, "labelled_at": 0})


def test_accuracy_loss_rolls_back_once_to_the_previous_version() -> None:
    analyst = Analyst(CFG)
    analyst.set_reference(V2, REF, {V1: 0.96, V2: 0.95}, previous_version=V1)
    predictions_and_labels(analyst, V2, 49, 30, "a")
    assert commands([analyst.assess(T0)]) == []  # 49 labelled < min_labels
    predictions_and_labels(analyst, V2, 1, 1, "b")
    result = analyst.assess(T0 + 2)
    (rollback,) = commands([result])
    assert rollback["action"] == "rollback" and rollback["parameters"] == {"version": "v1"}
    assert f"inference/accuracy/{V2}" in rollback["reason"]
    (alert,) = result.alerts
    assert alert.kind == "accuracy" and alert.severity == "critical"
    assert alert.details["baseline"] == "0.950000" and alert.details["labelled"] == "50"
    assert commands([analyst.assess(T0 + 4 + i) for i in range(5)]) == []
    # the rollback took effect: v1 is production, v2's alert resolves after the hold
    analyst.set_reference(V1, REF, {V1: 0.96, V2: 0.95}, previous_version=None)
    assert analyst.assess(T0 + 20).alerts == []
    resolved = analyst.assess(T0 + 31).alerts
    assert [(a.key, a.status) for a in resolved] == [(f"inference/accuracy/{V2}", "resolved")]


def test_accuracy_loss_without_a_previous_version_alerts_only() -> None:
    analyst = Analyst(CFG)
    analyst.set_reference(V2, REF, {V2: 0.95})
    predictions_and_labels(analyst, V2, 60, 30, "a")
    result = analyst.assess(T0)
    assert [a.kind for a in result.alerts] == ["accuracy"] and result.commands == []


def test_a_good_model_within_its_baseline_is_left_alone() -> None:
    analyst = Analyst(CFG)
    analyst.set_reference(V2, REF, {V2: 0.95}, previous_version=V1)
    predictions_and_labels(analyst, V2, 100, 93, "a")
    result = analyst.assess(T0)
    assert result.alerts == [] and result.commands == []
    snap = analyst.snapshot(T0)
    assert snap["accuracy"][V2]["accuracy"] == pytest.approx(0.93)
    assert set(snap["accuracy"][V2]) >= {"labelled", "accuracy", "precision", "recall", "brier",
                                         "ece"}  # fmt: skip


def drift_extra(counts: list[int], n: int, version: str = V2) -> dict[str, str]:
    taken = {"features": {"amount": counts}, "score": [n * 9 // 10, n - n * 9 // 10], "n": n}
    return {"drift": json.dumps(taken), "drift_version": version}


def test_drift_is_a_warning_and_never_a_command() -> None:
    analyst = Analyst(CFG)
    analyst.set_reference(V2, REF, {}, previous_version=V1)
    analyst.on_health(health("inference", extra=drift_extra([0, 60], 60)), T0)
    assert analyst.assess(T0).alerts == []  # 60 events < drift_min_events
    analyst.on_health(health("inference", extra=drift_extra([0, 60], 60)), T0 + 2)
    result = analyst.assess(T0 + 2)
    (alert,) = result.alerts
    assert (alert.key, alert.kind, alert.severity) == ("inference/drift", "drift", "warning")
    assert alert.details["drifted"] == "amount" and result.commands == []
    assert result.levels["inference"] == "WARNING"
    snap = analyst.snapshot(T0 + 2)
    assert snap["drift"]["version"] == V2 and snap["drift"]["events"] == 120


def test_drift_counts_of_another_version_or_unreadable_are_skipped() -> None:
    analyst = Analyst(CFG)
    analyst.on_health(health("inference", extra=drift_extra([0, 500], 500)), T0)  # no reference
    analyst.set_reference(V2, REF, {})
    analyst.on_health(health("inference", extra=drift_extra([0, 500], 500, V1)), T0)
    analyst.on_health(health("inference", extra={"drift": "{not json", "drift_version": V2}), T0)
    analyst.on_health(health("inference", extra={"drift": "[1, 2]", "drift_version": V2}), T0)
    assert analyst.counts == {"drift_other_version": 2, "drift_unreadable": 2}
    assert analyst.assess(T0).alerts == [] and analyst.snapshot(T0)["drift"]["events"] == 0
    # the same version again keeps its window; a new version starts a new one
    analyst.on_health(health("inference", extra=drift_extra([50, 50], 100)), T0 + 1)
    analyst.set_reference(V2, REF, {})
    assert analyst.snapshot(T0 + 1)["drift"]["events"] == 100
    analyst.set_reference(V1, REF, {})
    assert analyst.snapshot(T0 + 1)["drift"]["events"] == 0


def test_snapshot_shape_and_bounded_actions() -> None:
    analyst = Analyst(AnalystConfig(max_actions=2, resolve_after=0.0, restore_after=0.0,
                                    breaker_degrade_after=0.0,
                                    command_grace=0.0))  # fmt: skip
    assert analyst.snapshot(T0)["drift"] == {"version": None}
    for cycle in range(3):
        base = T0 + 100 * cycle
        run(analyst, base, base, breakers=OPEN)
        run(analyst, base + 2, base + 4, mode="fallback")
    snap = analyst.snapshot(T0 + 1000)
    assert [c["action"] for c in snap["actions"]] == ["degrade", "restore"]  # the last two
    assert json.loads(json.dumps(snap)) == snap
    assert set(snap) == {"crisis", "alerts", "drift", "accuracy", "actions", "canary"}
    run(analyst, T0 + 2000, T0 + 2000, breakers=OPEN)
    snap = analyst.snapshot(T0 + 2000)
    assert snap["crisis"] == {"system": "CRITICAL", "stages": {
        "ingest": "NORMAL", "validation": "NORMAL", "feature": "NORMAL", "inference": "CRITICAL"}}
    (alert,) = snap["alerts"]
    assert alert["since"] == T0 + 2000 and alert["status"] == "firing"
    assert alert["key"] == "inference/breaker/model:primary"


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="min_labels"):
        AnalystConfig(min_labels=5000, accuracy_window=100)
    with pytest.raises(ValueError, match="degrade_to"):
        AnalystConfig(degrade_to="imputed")


def test_stale_instances_are_forgotten() -> None:
    analyst = Analyst(CFG)
    analyst.on_health(health("inference", "old", breakers=OPEN), T0)
    for t in range(0, 62, 2):
        analyst.on_health(health("inference", "new"), T0 + t)
    result = analyst.assess(T0 + 60)
    assert "inference/breaker/model:primary" not in {a.key for a in analyst.book.active()}
    assert result.levels["inference"] == "NORMAL"

"""Shadow checks, promotion and rollback on a temporary registry, and their CLI, without Kafka."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from tidegate.cli.main import main
from tidegate.errors import ConfigError, RollbackUnavailableError
from tidegate.models.faults import register_bad_version
from tidegate.models.lifecycle import (
    PromotionRefusedError,
    Sample,
    Tolerances,
    issue_command,
    promote,
    rollback,
    shadow_check,
    train_candidates,
)
from tidegate.models.registry import ModelRegistry
from tidegate.models.training import FALLBACK, PRIMARY, train_example
from tidegate.settings import Settings, load_settings

pytestmark = pytest.mark.unit

EVENTS = 12_000


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Production v1 of both example models, v2 of both retrained as candidates (seed 8) and
    v3 of the primary, inverted."""
    root = tmp_path_factory.mktemp("lifecycle") / "models"
    registry = ModelRegistry(root)
    train_example(registry, events=EVENTS, seed=7)
    candidates = train_candidates(registry, events=8000, seed=8)
    assert [(mv.name, mv.version, mv.stage, mv.parent) for mv in candidates] == [
        (PRIMARY, "v2", "candidate", "v1"), (FALLBACK, "v2", "candidate", "v1")]
    assert register_bad_version(registry, PRIMARY).version == "v3"
    return root


@pytest.fixture(scope="module")
def sample() -> Sample:
    return Sample.example(events=8000, seed=11)


@pytest.fixture
def settings(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A private copy of the trained registry under this test's data dir."""
    monkeypatch.setenv("TIDEGATE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9")
    settings = load_settings()
    shutil.copytree(trained, settings.registry_dir)
    return settings


def test_a_retrained_model_passes_the_shadow_check(trained: Path, sample: Sample) -> None:
    report = shadow_check(ModelRegistry(trained), PRIMARY, "v2", sample)
    print("\n" + "\n".join(report.lines()))
    assert report.passed, report.failures
    assert report.production is not None and report.production.version == "v1"
    assert report.candidate.roc_auc > 0.95
    assert report.agreement is not None and report.agreement > 0.97
    assert (report.rows, report.positives) == (len(sample.labels), int(sample.labels.sum()))
    assert report.lines()[-1] == "verdict: pass"


def test_the_inverted_model_fails_every_comparison(trained: Path, sample: Sample) -> None:
    report = shadow_check(ModelRegistry(trained), PRIMARY, "v3", sample)
    print("\n" + "\n".join(report.lines()))
    assert not report.passed
    assert report.candidate.roc_auc < 0.1 and report.candidate.accuracy < 0.5
    assert [f.split()[0] for f in report.failures] == ["roc_auc", "accuracy", "agreement",
                                                       "score"]
    assert report.lines()[-1].startswith("verdict: FAIL: roc_auc")
    lenient = Tolerances(max_auc_drop=None, max_accuracy_drop=None, min_agreement=None,
                         max_score_psi=None)
    assert shadow_check(ModelRegistry(trained), PRIMARY, "v3", sample, tolerances=lenient).passed


def test_a_candidate_that_cannot_score_fails_and_without_production_nothing_compares(
        settings: Settings, sample: Sample) -> None:
    registry = ModelRegistry(settings.registry_dir)
    current = registry.require_production(PRIMARY)
    odd = registry.register(PRIMARY, registry.load(PRIMARY, "v1"), metrics={},
                            feature_names=current.feature_names[::-1],
                            threshold=0.5, reference={})
    report = shadow_check(registry, PRIMARY, odd.version, sample)
    assert not report.passed and "does not score" in report.failures[0]
    lone = ModelRegistry(settings.data_dir / "lone")
    lone.register(PRIMARY, registry.load(PRIMARY, "v2"), metrics={},
                  feature_names=current.feature_names, threshold=0.3, reference={})
    alone = shadow_check(lone, PRIMARY, "v1", sample)
    assert alone.passed and alone.production is None and alone.agreement is None


def test_a_sample_needs_both_classes_and_a_label_per_row() -> None:
    with pytest.raises(ConfigError):
        Sample(np.zeros((3, 2)), np.zeros(3, dtype=bool))
    with pytest.raises(ConfigError):
        Sample(np.zeros((3, 2)), np.array([True, False]))


def test_promote_checks_then_switches_and_rollback_pins_the_previous_version(
        settings: Settings, sample: Sample) -> None:
    sent: list[dict[str, Any]] = []
    registry = ModelRegistry(settings.registry_dir)
    done = promote(settings, PRIMARY, "v2", reason="retrained", issuer="alice", sample=sample,
                   send=sent.append)
    assert done.report is not None and done.report.passed
    assert registry.require_production(PRIMARY).version == "v2"
    assert registry.get(PRIMARY, "v1").stage == "archived"
    assert done.command is not None and sent == [done.command]
    assert {k: done.command[k] for k in ("target", "action", "parameters", "reason", "issuer")} \
        == {"target": "inference", "action": "promote", "reason": "retrained", "issuer": "alice",
            "parameters": {"version": "v2", "model": PRIMARY}}

    back = rollback(settings, PRIMARY, reason="alerts doubled", issuer="bob", send=sent.append)
    assert (back.previous, back.version.version) == ("v2", "v1")
    assert registry.require_production(PRIMARY).version == "v1"
    assert registry.get(PRIMARY, "v2").rolled_back
    assert back.command is not None and sent[-1] == back.command
    assert back.command["action"] == "rollback"
    assert back.command["parameters"] == {"version": "v1", "model": PRIMARY}
    assert [e["action"] for e in registry.history()][-2:] == ["promote", "rollback"]
    with pytest.raises(RollbackUnavailableError):
        rollback(settings, PRIMARY, reason="again", send=sent.append)
    assert len(sent) == 2


def test_a_failing_candidate_is_refused_unless_forced(settings: Settings,
                                                      sample: Sample) -> None:
    sent: list[dict[str, Any]] = []
    registry = ModelRegistry(settings.registry_dir)
    with pytest.raises(PromotionRefusedError) as refused:
        promote(settings, PRIMARY, "v3", reason="drill", sample=sample, send=sent.append)
    assert not refused.value.report.passed and "--force" in str(refused.value)
    assert registry.require_production(PRIMARY).version == "v1" and sent == []
    forced = promote(settings, PRIMARY, "v3", reason="drill", force=True, send=sent.append)
    assert forced.report is None and forced.version.version == "v3"
    assert [c["parameters"]["version"] for c in sent] == ["v3"]
    assert rollback(settings, PRIMARY, reason="drill over", send=sent.append).version.version \
        == "v1"


def test_only_the_served_primary_gets_a_command_and_a_reason_is_required(
        settings: Settings, sample: Sample) -> None:
    sent: list[dict[str, Any]] = []
    done = promote(settings, FALLBACK, "v2", reason="retrained", sample=sample, send=sent.append)
    assert done.command is None and sent == []
    assert ModelRegistry(settings.registry_dir).require_production(FALLBACK).version == "v2"
    with pytest.raises(ConfigError):
        promote(settings, PRIMARY, "v2", reason=" ", force=True, send=sent.append)
    with pytest.raises(ConfigError):
        rollback(settings, PRIMARY, reason="", send=sent.append)
    assert ModelRegistry(settings.registry_dir).require_production(PRIMARY).version == "v1"


class FakeProducer:
    """Records what would be produced and acknowledges everything."""

    produced: ClassVar[list[tuple[str, bytes, bytes]]] = []

    def __init__(self, config: dict[str, Any]) -> None:
        self.callbacks: list[Any] = []

    def produce(self, topic: str, *, key: bytes, value: bytes, on_delivery: Any) -> None:
        self.produced.append((topic, key, value))
        self.callbacks.append(on_delivery)

    def flush(self, timeout: float) -> int:
        for callback in self.callbacks:
            callback(None, None)
        return 0


def test_issue_command_writes_the_control_topic_and_an_audit_copy(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from tidegate.codec import Codec
    from tidegate.control import command

    FakeProducer.produced = []
    monkeypatch.setattr("tidegate.models.lifecycle.Producer", FakeProducer)
    record = command("inference", "threshold", parameters={"value": "0.3"}, reason="r",
                     issuer="a")
    issue_command(settings, record, audit={"note": "x"})
    (control, key, value), (audit, _, body) = FakeProducer.produced
    prefix = settings.topic_prefix
    assert (control, key, audit) == (f"{prefix}control", b"inference/threshold", f"{prefix}audit")
    unsigned = {**record, "key_id": None, "signature": None}  # no TIDEGATE_CONTROL_KEY
    assert Codec().decode(value) == unsigned
    assert json.loads(body) == {"kind": "control", **unsigned, "note": "x"}


def test_issue_command_signs_with_the_first_control_key(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from tidegate.codec import Codec
    from tidegate.control import command
    from tidegate.settings import load_settings
    from tidegate.signing import CommandGate

    FakeProducer.produced = []
    monkeypatch.setattr("tidegate.models.lifecycle.Producer", FakeProducer)
    monkeypatch.setenv("TIDEGATE_CONTROL_KEY", "k2:0123456789abcdef,k1:fedcba9876543210")
    keyed = load_settings()
    issue_command(keyed, command("ingest", "pause", reason="r", issuer="a"))
    (_, _, value), _ = FakeProducer.produced
    sent = Codec().decode(value)
    assert sent["key_id"] == "k2"
    assert CommandGate(keyed.control_keys).check(sent, offset=0, logged_ms=sent["time"]) is None


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_promote_prints_the_report_and_rollback_switches_back(
        settings: Settings, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr("tidegate.models.lifecycle.issue_command",
                        lambda settings, record, **kw: sent.append(record))
    code, out, _ = _run(["model", "promote", PRIMARY, "v2", "--reason", "retrained",
                         "--sample-events", "6000"], capsys)
    assert code == 0 and "verdict: pass" in out and f"{PRIMARY}:v2 is production" in out
    code, out, err = _run(["model", "promote", PRIMARY, "v3", "--reason", "drill",
                           "--sample-events", "6000"], capsys)
    assert code == 1 and "verdict: FAIL" in out
    assert err.count("\n") == 1 and "failed the shadow check" in err
    code, out, _ = _run(["model", "rollback", PRIMARY, "--reason", "drill"], capsys)
    assert code == 0 and f"{PRIMARY}: v2 -> v1 is production" in out
    assert [(c["action"], c["parameters"]["version"]) for c in sent] == [
        ("promote", "v2"), ("rollback", "v1")]


@pytest.mark.parametrize(("argv", "exit_code"), [
    (["model", "promote", PRIMARY, "v99", "--reason", "r"], 1),
    (["model", "promote", "no such model!", "v1", "--reason", "r", "--force"], 1),
    (["model", "promote", PRIMARY, "v2"], 2),
    (["model", "rollback", FALLBACK, "--reason", "r"], 1),  # nothing earlier to go back to
    (["control", "threshold", "1.5", "--reason", "r"], 2),
    (["control", "threshold", "nan", "--reason", "r"], 2),
    (["control", "threshold", "0.3", "--reason", " "], 2),
])
def test_cli_bad_arguments_are_one_line_and_non_zero(
        settings: Settings, capsys: pytest.CaptureFixture[str], argv: list[str],
        exit_code: int) -> None:
    code, _, err = _run(argv, capsys)
    assert code == exit_code and err.count("\n") == 1 and "Traceback" not in err, err


def test_cli_train_bad_registers_an_inverted_candidate(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["model", "train", "--bad"], capsys)
    assert code == 0 and f"{PRIMARY}:v4 candidate" in out and "drill" in out
    registry = ModelRegistry(settings.registry_dir)
    assert registry.get(PRIMARY, "v4").params["fault_injection"] is True

"""The pipeline on a secured broker: SASL_SSL with SCRAM-SHA-512, ACLs, one principal per stage.

The module starts its own secure embedded broker (its own data dir and ports) next to the
session's plaintext one. Every client that is refused must say why in one line, quickly.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import _embedded_settings
from tests.integration.pipeline import (
    STAGE_NAMES,
    expectations,
    free_port,
    produce,
    running_pipeline,
    wait_for_outputs,
    wait_until_healthy,
)
from tidegate.cli.main import main
from tidegate.errors import DeliveryError
from tidegate.example.stream import example_messages
from tidegate.kafka.acls import apply_acls, pipeline_acls
from tidegate.kafka.admin import ensure_topics
from tidegate.kafka.broker import BrokerState, secure_dir, start_broker, stop_broker
from tidegate.kafka.producer import Outbox
from tidegate.kafka.secure import ADMIN, OPERATOR, SecureMaterial, load_material
from tidegate.settings import ClientConfig, Settings, load_settings
from tidegate.topics import CATALOG

pytestmark = pytest.mark.integration

EVENTS = 5_000
REFUSED_WITHIN = 15.0  # seconds: a refusal is an answer, not a timeout


@dataclass(frozen=True)
class SecureCluster:
    state: BrokerState
    material: SecureMaterial
    data_dir: Path


@pytest.fixture(scope="module")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureCluster]:
    data_dir = tmp_path_factory.mktemp("secure-kafka")
    settings = _embedded_settings(data_dir)
    state = start_broker(settings, die_with_parent=True, secure=True)
    material = load_material(secure_dir(settings))
    assert material is not None
    try:
        yield SecureCluster(state=state, material=material, data_dir=data_dir)
    finally:
        stop_broker(settings)


def _environment(monkeypatch: pytest.MonkeyPatch, security: dict[str, str]) -> None:
    """Exactly ``security`` as the KAFKA_* variables, whatever the outer environment holds."""
    for name in list(os.environ):
        if name.startswith(("KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_", "KAFKA_SSL_")):
            monkeypatch.delenv(name)
    for name, value in security.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def secure_settings(secure_kafka: SecureCluster, prefix: str, tmp_path: Path,
                    monkeypatch: pytest.MonkeyPatch) -> Settings:
    """This test's prefix on the secure broker, its ACLs granted; the test runs as operator."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", secure_kafka.state.bootstrap)
    monkeypatch.setenv("TIDEGATE_TOPIC_PREFIX", prefix)
    monkeypatch.setenv("TIDEGATE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TIDEGATE_STATUS_PORT", str(free_port()))
    monkeypatch.setenv("TIDEGATE_HEALTH_INTERVAL", "1.0")
    _environment(monkeypatch, secure_kafka.material.environment(OPERATOR))
    settings = load_settings()
    admin: ClientConfig = {"bootstrap.servers": secure_kafka.state.bootstrap,
             **secure_kafka.material.client_security(ADMIN)}
    apply_acls(admin, pipeline_acls(settings))
    return settings


@pytest.mark.parametrize(("reader", "guarantee"), [
    ("librdkafka", "at_least_once"), ("faust", "at_least_once"), ("librdkafka", "exactly_once")])
def test_every_event_ends_in_one_place_with_a_principal_per_stage(
        secure_settings: Settings, secure_kafka: SecureCluster, reader: str, guarantee: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With the Faust reader too (its app's groups, leader topic and table changelog), and
    exactly once (transactional ids, offsets sent to the transaction)."""
    monkeypatch.setenv("TIDEGATE_READER", reader)
    monkeypatch.setenv("TIDEGATE_PROCESSING_GUARANTEE", guarantee)
    material = secure_kafka.material
    messages = list(example_messages(EVENTS, seed=23, bad_rate=0.05, events_per_second=5_000))
    stage_env = {stage: material.environment(stage) for stage in STAGE_NAMES}
    with running_pipeline(secure_settings, child_env=stage_env) as supervisor:
        ready = wait_until_healthy(secure_settings)
        began = time.monotonic()
        sent = produce(secure_settings, messages)
        outputs = wait_for_outputs(secure_settings, len(sent), supervisor=supervisor)
        took = time.monotonic() - began
        restarts = {name: child.restarts for name, child in supervisor.children.items()}
    predicted, dead = expectations(sent)
    assert restarts == dict.fromkeys(restarts, 0), f"a stage crashed: {restarts}"
    assert outputs.predictions == predicted, (
        f"{len(set(predicted) - set(outputs.predictions))} good events without a prediction, "
        f"{sum((outputs.predictions - predicted).values())} repeated")
    assert outputs.dead == dead, "dead letters differ from the bad records sent"
    print(f"\nsecure pipeline ({reader} readers, {guarantee}): {len(sent)} events accounted "
          f"for in {took:.1f} s (stages ready after {ready:.1f} s)")


def _refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    began = time.monotonic()
    code = main(list(argv))
    took = time.monotonic() - began
    err = capsys.readouterr().err.strip()
    assert code == 1, f"exit {code}: {err}"
    assert len(err.splitlines()) == 1, f"not one line: {err!r}"
    assert "Traceback" not in err
    assert took < REFUSED_WITHIN, f"refused after {took:.1f} s: {err}"
    return err


@pytest.mark.parametrize(("case", "cause"), [
    ("no credentials, no TLS", "expects TLS"),
    ("TLS without credentials", "expects SASL credentials"),
    ("wrong password", "authentication failed"),
    ("credentials without TLS", "expects TLS"),
    ("TLS without the CA", "TLS handshake failed"),
])
def test_a_refused_client_says_why_in_one_line(
        secure_settings: Settings, secure_kafka: SecureCluster, case: str, cause: str,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    good = secure_kafka.material.environment("ingest")
    security = {
        "no credentials, no TLS": {},
        "TLS without credentials": {"KAFKA_SECURITY_PROTOCOL": "SSL",
                                    "KAFKA_SSL_CA_LOCATION": good["KAFKA_SSL_CA_LOCATION"]},
        "wrong password": {**good, "KAFKA_SASL_PASSWORD": "not-the-password"},
        "credentials without TLS": {
            **{k: v for k, v in good.items() if k != "KAFKA_SSL_CA_LOCATION"},
            "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"},
        "TLS without the CA": {k: v for k, v in good.items() if k != "KAFKA_SSL_CA_LOCATION"},
    }[case]
    _environment(monkeypatch, security)
    error = _refused(capsys, "topics", "list")
    assert cause in error, error


def test_a_stage_principal_cannot_write_what_it_has_no_acl_for(
        secure_settings: Settings, secure_kafka: SecureCluster,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    config = secure_settings.client_config(str(secure_settings.kafka_bootstrap_servers))
    ensure_topics(config, CATALOG, prefix=secure_settings.topic_prefix, replication=1)
    control = secure_settings.topic_prefix + "control"
    _environment(monkeypatch, secure_kafka.material.environment("ingest"))
    error = _refused(capsys, "control", "pause", "ingest", "--reason", "not allowed")
    assert f"user 'ingest' is not authorized to write {control}" in error, error
    # the stage's own producer: an ACL refusal is a non-retriable delivery error, at once
    stage: ClientConfig = {"bootstrap.servers": str(secure_settings.kafka_bootstrap_servers),
             **secure_kafka.material.client_security("ingest")}
    outbox = Outbox(stage)
    began = time.monotonic()
    try:
        with pytest.raises(DeliveryError, match=r"[Aa]uthorization") as refused:
            asyncio.run(outbox.send_all([(control, b"k", b"v", None, None)]))
    finally:
        outbox.close(1.0)
    assert not refused.value.retriable
    assert time.monotonic() - began < REFUSED_WITHIN


def test_tidegate_commands_on_the_secure_embedded_broker_run_as_operator(
        secure_kafka: SecureCluster, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    _environment(monkeypatch, {})
    monkeypatch.setenv("TIDEGATE_DATA_DIR", str(secure_kafka.data_dir))
    monkeypatch.setenv("TIDEGATE_TOPIC_PREFIX", "embedded.")
    assert main(["broker", "status"]) == 0
    assert "answering" in capsys.readouterr().out
    # a new prefix has no ACLs yet: even the operator is refused, and told so
    assert main(["topics", "create"]) == 1
    assert "user 'operator' is not authorized to create topic" in capsys.readouterr().err
    # init on the secure embedded broker grants them as admin, then creates the topics
    assert main(["init"]) == 0
    out = capsys.readouterr().out
    assert "acls: " in out and "granted to 6 principals" in out, out
    assert main(["topics", "list"]) == 0
    assert "missing" not in capsys.readouterr().out
    assert main(["init", "--acls", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "User:operator ALLOW WRITE topic embedded. (prefixed)" in lines
    assert main(["broker", "start"]) == 1  # a plain start of a secure broker is refused
    assert "with --secure" in capsys.readouterr().err

"""The secure broker's configuration and the refusal messages, without a broker."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest
from confluent_kafka import KafkaError

from tidegate.errors import AuthenticationError, AuthorizationError, InsecureConnectionError
from tidegate.kafka.broker_config import server_properties
from tidegate.kafka.refusal import Refusals, authorization_error
from tidegate.kafka.secure import ADMIN, PRINCIPALS, SecureMaterial, load_material

pytestmark = pytest.mark.unit


@pytest.fixture
def material(tmp_path: Path) -> SecureMaterial:
    return SecureMaterial(directory=tmp_path, passwords={ADMIN: "adm1n", "ingest": "1ngest"},
                          keystore_password="store")


def parse(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines())


def test_the_plain_broker_is_unchanged(tmp_path: Path) -> None:
    props = parse(server_properties(9092, 9093, tmp_path))
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert props["listener.security.protocol.map"] == "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    assert not any(key.startswith(("ssl.", "sasl.", "authorizer", "super")) for key in props)


def test_the_secure_broker_authenticates_and_authorizes(tmp_path: Path,
                                                        material: SecureMaterial) -> None:
    props = parse(server_properties(9092, 9093, tmp_path, secure=material))
    assert props["advertised.listeners"] == "CLIENT://127.0.0.1:9092"
    assert props["listener.security.protocol.map"] == "CLIENT:SASL_SSL,CONTROLLER:SASL_PLAINTEXT"
    assert props["inter.broker.listener.name"] == "CLIENT"
    assert props["listener.name.client.sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert props["authorizer.class.name"] == (
        "org.apache.kafka.metadata.authorizer.StandardAuthorizer")
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["super.users"] == "User:admin"
    assert 'username="admin" password="adm1n"' in props[
        "listener.name.client.scram-sha-512.sasl.jaas.config"]
    # the controller listener knows only the admin: no anonymous super user on loopback
    assert props["listener.name.controller.plain.sasl.jaas.config"].endswith(
        'user_admin="adm1n";')
    assert props["ssl.keystore.location"] == str(tmp_path / "broker.p12")
    assert props["ssl.truststore.location"] == str(tmp_path / "ca.pem")


def test_a_principal_as_client_settings_and_environment(material: SecureMaterial) -> None:
    assert material.client_security("ingest") == {
        "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "ingest", "sasl.password": "1ngest",
        "ssl.ca.location": str(material.ca)}
    env = material.environment("ingest")
    assert env["KAFKA_SASL_USERNAME"] == "ingest"
    assert env["KAFKA_SSL_CA_LOCATION"] == str(material.ca)
    assert set(PRINCIPALS) == {"ingest", "validation", "feature", "inference", "monitoring",
                               "operator"}


def test_no_material_is_none(tmp_path: Path) -> None:
    assert load_material(tmp_path) is None
    (tmp_path / "credentials.json").write_text("{not json")
    assert load_material(tmp_path) is None


def test_the_credentials_are_private(tmp_path: Path) -> None:
    from tidegate.kafka.secure import write_private

    write_private(tmp_path / "secret", "x")
    assert stat.S_IMODE((tmp_path / "secret").stat().st_mode) == 0o600


def _log(refusals: Refusals, line: str) -> None:
    logger: logging.Logger = refusals.hooks()["logger"]
    logger.info(line)


@pytest.mark.parametrize(("config", "line", "expected", "words"), [
    ({}, "FAIL ...: Disconnected: connection closed by peer: receive 0 after POLLIN "
     "(after 1ms in state APIVERSION_QUERY)", InsecureConnectionError, "expects TLS"),
    ({"security.protocol": "SSL"}, "FAIL ...: Disconnected: SSL connection closed by peer "
     "(after 1ms in state UP)", InsecureConnectionError, "expects SASL credentials"),
    ({"security.protocol": "SASL_SSL"}, "Connection refused", None, ""),
])
def test_a_hang_up_names_the_missing_layer(config: dict[str, str], line: str,
                                           expected: type[Exception] | None,
                                           words: str) -> None:
    refusals = Refusals(config)
    _log(refusals, line)
    cause = refusals.cause()
    if expected is None:
        assert cause is None
    else:
        assert isinstance(cause, expected) and words in str(cause)


def test_wrong_credentials_and_acl_refusals_say_who() -> None:
    config = {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
              "sasl.username": "ingest"}
    refusals = Refusals(config)
    refusals.hooks()["error_cb"](KafkaError(KafkaError._AUTHENTICATION, "invalid credentials"))
    cause = refusals.cause()
    assert isinstance(cause, AuthenticationError)
    assert "user 'ingest'" in str(cause) and "SCRAM-SHA-512" in str(cause)
    refused = authorization_error(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED), config,
                                  "write shop.control")
    assert isinstance(refused, AuthorizationError)
    assert str(refused).startswith("user 'ingest' is not authorized to write shop.control")
    assert refused.code == "AUTHORIZATION"
    other = refusals.explain(None, KafkaError(KafkaError._TIMED_OUT, "timed out"))
    assert isinstance(other, AuthenticationError)  # the cause heard wins over the symptom

"""Settings from the environment, Faust credentials, and the CLI's exit codes and errors."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import faust
import pydantic
import pytest

from tidegate.cli.main import main
from tidegate.errors import ConfigError
from tidegate.runtime.app import credentials
from tidegate.settings import load_settings, security_config

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No tidegate or Kafka setting leaks in from the machine running the tests."""
    for name in list(os.environ):
        if name.startswith(("TIDEGATE_", "KAFKA_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("TIDEGATE_DATA_DIR", str(tmp_path / "data"))


def one_line(text: str) -> str:
    assert text.endswith("\n")
    assert text.count("\n") == 1, text
    assert "Traceback" not in text
    return text.rstrip("\n")


# --- settings -------------------------------------------------------------------------------


def test_defaults_work_for_the_embedded_run(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    monkeypatch.delenv("TIDEGATE_DATA_DIR")
    settings = load_settings()
    assert settings.kafka_bootstrap_servers is None
    assert settings.topic_prefix == "tidegate."
    assert settings.replication_factor == 1
    assert settings.data_dir == Path(".tidegate")
    assert settings.broker_dir == Path(".tidegate") / "broker"
    assert settings.registry_dir == Path(".tidegate") / "models"
    assert settings.cache_dir == tmp_path / "cache" / "tidegate"
    assert (settings.broker_port, settings.controller_port) == (0, 0)
    assert settings.schema_registry_url is None
    assert (settings.log_format, settings.log_level) == ("text", "INFO")
    assert (settings.batch_size, settings.batch_within) == (2000, 0.05)
    assert settings.rules_file is None
    assert settings.security == {}
    assert settings.client_config("localhost:9092") == {"bootstrap.servers": "localhost:9092"}


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("TIDEGATE_TOPIC_PREFIX", "shop-1.")
    monkeypatch.setenv("TIDEGATE_BATCH_SIZE", "64")
    monkeypatch.setenv("TIDEGATE_LOG_FORMAT", "json")
    settings = load_settings()
    assert settings.kafka_bootstrap_servers == "k1:9092,k2:9092"
    assert settings.topic_prefix == "shop-1."
    assert settings.batch_size == 64
    assert settings.log_format == "json"
    assert settings.data_dir == tmp_path / "data"


def test_settings_are_immutable() -> None:
    settings = load_settings()
    with pytest.raises(pydantic.ValidationError):
        settings.batch_size = 1


def test_security_settings_pass_through_to_every_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker:9093")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "alice")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "s3cret")
    monkeypatch.setenv("KAFKA_SSL_CA_LOCATION", "/etc/ca.pem")
    monkeypatch.setenv("KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM", "https")
    monkeypatch.setenv("KAFKA_CLIENT_ID", "not a security setting")
    settings = load_settings()
    assert settings.client_config("broker:9093") == {
        "bootstrap.servers": "broker:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "alice",
        "sasl.password": "s3cret",
        "ssl.ca.location": "/etc/ca.pem",
        "ssl.endpoint.identification.algorithm": "https",
    }


def test_security_config_maps_names() -> None:
    assert security_config({"KAFKA_SASL_MECHANISM": "PLAIN", "HOME": "/",
                            "KAFKA_BOOTSTRAP_SERVERS": "x"}) == {"sasl.mechanism": "PLAIN"}


def test_security_settings_are_fixed_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "PLAIN")
    settings = load_settings()
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "GSSAPI")
    assert settings.client_config("b:1")["sasl.mechanism"] == "PLAIN"


@pytest.mark.parametrize(("name", "value"), [
    ("TIDEGATE_BROKER_PORT", "abc"),
    ("TIDEGATE_BROKER_PORT", "70000"),
    ("TIDEGATE_BATCH_SIZE", "0"),
    ("TIDEGATE_LOG_LEVEL", "LOUD"),
    ("TIDEGATE_TOPIC_PREFIX", "bad prefix!"),
    ("TIDEGATE_BROKER_HEAP", "lots"),
    ("TIDEGATE_RETRY_DELAYS", "1,soon"),
    ("TIDEGATE_RETRY_DELAYS", "1,0"),
    ("TIDEGATE_RETRY_DELAYS", "1,2,3,4"),
    ("TIDEGATE_BREAKER_MINIMUM_CALLS", "0"),
])
def test_a_bad_value_is_a_one_line_config_error_naming_the_variable(
        monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"invalid setting {name}: ")


def test_retry_delays(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().retry_delay_seconds == ()  # off by default
    monkeypatch.setenv("TIDEGATE_RETRY_DELAYS", "0.5, 10,60")
    assert load_settings().retry_delay_seconds == (0.5, 10.0, 60.0)
    monkeypatch.setenv("TIDEGATE_READER", "faust")  # only the librdkafka reader reads them
    with pytest.raises(ConfigError, match="TIDEGATE_RETRY_DELAYS needs TIDEGATE_READER"):
        load_settings()


# --- Faust credentials ----------------------------------------------------------------------


def test_plaintext_needs_no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    assert credentials(load_settings()) is None
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "plaintext")
    assert credentials(load_settings()) is None


def test_sasl_plaintext_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "sasl_plaintext")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "bob")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "pw")
    found = credentials(load_settings())
    assert isinstance(found, faust.SASLCredentials)
    assert (found.username, found.password) == ("bob", "pw")
    assert found.mechanism.value == "SCRAM-SHA-256"
    assert found.ssl_context is None
    assert found.protocol.value == "SASL_PLAINTEXT"


def test_sasl_defaults_to_plain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    found = credentials(load_settings())
    assert isinstance(found, faust.SASLCredentials)
    assert found.mechanism.value == "PLAIN"


def test_ssl_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SSL")
    found = credentials(load_settings())
    assert isinstance(found, faust.SSLCredentials)
    assert isinstance(found.context, ssl.SSLContext)
    assert found.context.verify_mode == ssl.CERT_REQUIRED
    assert found.protocol.value == "SSL"


def test_sasl_ssl_credentials_carry_a_context(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "carol")
    found = credentials(load_settings())
    assert isinstance(found, faust.SASLCredentials)
    assert isinstance(found.ssl_context, ssl.SSLContext)
    assert found.username == "carol"


def test_an_unknown_protocol_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "CARRIER_PIGEON")
    with pytest.raises(ConfigError, match="KAFKA_SECURITY_PROTOCOL"):
        credentials(load_settings())


def test_a_missing_ca_file_is_a_config_error(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("KAFKA_SSL_CA_LOCATION", str(tmp_path / "missing-ca.pem"))
    with pytest.raises(ConfigError, match="KAFKA_SSL_CA_LOCATION"):
        credentials(load_settings())


# --- the CLI --------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["no-such-command"],
    ["broker", "no-such-subcommand"],
    ["broker", "status", "--no-such-option"],
    ["topics", "list", "extra-argument"],
    ["broker", "logs", "--lines", "zero"],
    ["stage", "run", "no-such-stage"],
], ids=["command", "subcommand", "option", "argument", "option-value", "choice"])
def test_usage_errors_exit_2_with_one_line(argv: list[str],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    line = one_line(err)
    assert line.startswith("tidegate")
    assert "error:" in line


def test_a_bad_setting_exits_2_with_one_line(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TIDEGATE_BROKER_PORT", "abc")
    assert main(["broker", "status"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    line = one_line(err)
    assert line.startswith("tidegate: error: invalid setting TIDEGATE_BROKER_PORT:")


def test_exactly_once_with_the_faust_reader_exits_2_with_one_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TIDEGATE_PROCESSING_GUARANTEE", "exactly_once")
    monkeypatch.setenv("TIDEGATE_READER", "faust")
    assert main(["stage", "run", "ingest"]) == 2
    line = one_line(capsys.readouterr().err)
    assert line == ("tidegate: error: invalid settings: TIDEGATE_PROCESSING_GUARANTEE=exactly_once "
                    "needs TIDEGATE_READER=librdkafka")


def test_broker_status_without_a_broker_exits_1(capsys: pytest.CaptureFixture[str],
                                                tmp_path: Path) -> None:
    empty = tmp_path / "data"
    empty.mkdir()
    assert main(["broker", "status"]) == 1
    out, err = capsys.readouterr()
    assert out == "broker not running\n"
    assert err == ""
    assert list(empty.iterdir()) == []  # asking does not start or create anything


def test_broker_status_json_without_a_broker(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["broker", "status", "--json"]) == 1
    out, _ = capsys.readouterr()
    assert '"running": false' in out and '"answers": false' in out


def test_topics_list_without_any_cluster_is_one_line_and_exit_1(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topics", "list"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    line = one_line(err)
    assert line.startswith("tidegate: error: no Kafka cluster")
    assert "KAFKA_BOOTSTRAP_SERVERS" in line


def test_help_and_version_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out, _ = capsys.readouterr()
    assert "broker" in out and "topics" in out
    assert main(["--version"]) == 0
    out, _ = capsys.readouterr()
    assert "0.1.0" in out

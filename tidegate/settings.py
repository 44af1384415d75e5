"""One settings object, read from the environment once and immutable afterwards.

Every setting has a default that works for the embedded run. ``KAFKA_BOOTSTRAP_SERVERS`` points
every client at an external cluster instead of the embedded broker, and the standard client
security settings pass through to every client from ``KAFKA_SECURITY_PROTOCOL``,
``KAFKA_SASL_*`` and ``KAFKA_SSL_*`` (``KAFKA_SASL_MECHANISM`` becomes ``sasl.mechanism``).

Example::

    settings = load_settings()
    producer = confluent_kafka.Producer(settings.client_config())
"""

from __future__ import annotations

import math
import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from tidegate.errors import ConfigError
from tidegate.signing import ControlKeys
from tidegate.topics import DATA_STAGES, MAX_RETRIES

__all__ = ["ClientConfig", "LogFormat", "Settings", "load_settings", "security_config"]

ClientConfig = dict[str, str | int | float | bool]
LogFormat = Literal["text", "json"]
Reader = Literal["librdkafka", "faust"]
Guarantee = Literal["at_least_once", "exactly_once"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]

_SECURITY_PREFIXES = ("KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_", "KAFKA_SSL_")


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tidegate"


def security_config(environ: Mapping[str, str]) -> dict[str, str]:
    """Client security settings from the environment, as librdkafka property names.

    >>> security_config({"KAFKA_SASL_MECHANISM": "PLAIN", "HOME": "/"})
    {'sasl.mechanism': 'PLAIN'}
    """
    config: dict[str, str] = {}
    for name, value in environ.items():
        if name.startswith(_SECURITY_PREFIXES):
            config[name.removeprefix("KAFKA_").lower().replace("_", ".")] = value
    return config


class Settings(BaseSettings):
    """Everything tidegate reads from its environment. Names are ``TIDEGATE_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="TIDEGATE_", frozen=True, extra="ignore")
    _security: dict[str, str] = PrivateAttr(default_factory=lambda: security_config(os.environ))

    kafka_bootstrap_servers: str | None = Field(
        default=None, validation_alias="KAFKA_BOOTSTRAP_SERVERS"
    )
    topic_prefix: str = "tidegate."
    replication_factor: int = Field(default=1, ge=1)
    data_dir: Path = Path(".tidegate")
    cache_dir: Path = Field(default_factory=_default_cache_dir)
    kafka_version: str = "4.3.1"
    broker_port: int = Field(default=0, ge=0, le=65535)
    controller_port: int = Field(default=0, ge=0, le=65535)
    broker_heap: str = Field(default="512m", pattern=r"^[0-9]+[kmgKMG]$")
    broker_jvm_options: str = ""  # more JVM flags for the embedded broker, shell-quoted
    broker_start_timeout: float = Field(default=90.0, gt=0)
    broker_stop_timeout: float = Field(default=20.0, gt=0)
    schema_registry_url: str | None = None
    log_format: LogFormat = "text"
    log_level: LogLevel = "INFO"
    reader: Reader = "librdkafka"
    processing_guarantee: Guarantee = "at_least_once"
    worker: int = Field(default=0, ge=0, le=999)
    transaction_timeout: float = Field(default=10.0, ge=1, le=900)
    feature_state_max_accounts: int = Field(default=50_000, ge=1)
    batch_size: int = Field(default=2000, ge=1, le=100_000)
    batch_within: float = Field(default=0.05, gt=0, le=10)
    batch_linger: float = Field(default=0.04, ge=0, le=10)
    hop_linger: float = Field(default=0.004, ge=0, le=10)
    commit_interval: float = Field(default=0.5, ge=0, le=3600)
    health_interval: float = Field(default=2.0, gt=0, le=60)
    delivery_deadline: float = Field(default=60.0, gt=0)
    status_host: str = "127.0.0.1"
    status_port: int = Field(default=8088, ge=1, le=65535)
    rules_file: Path | None = None
    stall_seconds: float = Field(default=30.0, gt=0)
    breaker_wait_seconds: float = Field(default=10.0, gt=0)
    breaker_minimum_calls: int = Field(default=5, ge=1, le=100_000)
    # retry topics: seconds each attempt waits, "1,10,60"; empty: a failing model falls back
    retry_delays: str = ""
    backpressure_high: int = Field(default=200, ge=1)
    backpressure_low: int = Field(default=50, ge=0)
    # The guard is for storms: a threshold near a normal bad-record rate, or a handful of
    # records, would pause healthy ingestion on noise, so neither may be set that low.
    dead_letter_rate_threshold: float = Field(default=0.5, ge=0.05, le=1)
    dead_letter_rate_window: float = Field(default=10.0, gt=0)
    dead_letter_rate_minimum: int = Field(default=200, ge=20)
    dead_letter_rate_wait: float = Field(default=10.0, gt=0)
    breaker_slow_call_seconds: float = Field(default=1.0, gt=0)
    dedupe_window_seconds: float = Field(default=3600.0, gt=0)
    max_future_seconds: float = Field(default=300.0, ge=0)
    auto_actions: bool = True
    compute_threads: int = Field(default=1, ge=1, le=256)
    # allocations between collections of the cyclic GC's youngest generation in a stage process
    # (Python's default: 700); 0 keeps Python's default
    gc_threshold: int = Field(default=50_000, ge=0, le=10_000_000)
    accuracy_min_labels: int = Field(default=500, ge=1, le=2000)
    drift_min_events: int = Field(default=1000, ge=1)
    control_key: SecretStr | None = None  # ID:SECRET[,ID:SECRET...]; unset: unauthenticated
    control_max_age: float = Field(default=300.0, gt=0, le=86_400)
    # a chaos drill: "<stage>:<partition>" freezes that input partition once (models.faults)
    fault_freeze_partition: str = ""

    @field_validator("topic_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        if not set(value) <= allowed:
            raise ValueError("may hold only letters, digits, '.', '_' and '-'")
        return value

    @field_validator("control_key")
    @classmethod
    def _check_control_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            try:
                ControlKeys.parse(value.get_secret_value())
            except ConfigError as exc:
                raise ValueError(str(exc)) from exc
        return value

    @field_validator("retry_delays")
    @classmethod
    def _check_retry_delays(cls, value: str) -> str:
        _parse_delays(value)
        return value

    @field_validator("fault_freeze_partition")
    @classmethod
    def _check_freeze(cls, value: str) -> str:
        stage, _, partition = value.partition(":")
        if value and (stage not in DATA_STAGES or not partition.isdigit()):
            raise ValueError(f"must be <stage>:<partition>, the stage one of "
                             f"{', '.join(DATA_STAGES)}")
        return value

    @field_validator("broker_jvm_options")
    @classmethod
    def _check_jvm_options(cls, value: str) -> str:
        try:
            flags = shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot split it into flags: {exc}") from exc
        if any(not flag.startswith("-") for flag in flags):
            raise ValueError("JVM options must each start with '-'")
        return value

    @model_validator(mode="after")
    def _check_guarantee(self) -> Settings:
        if self.processing_guarantee == "exactly_once" and self.reader != "librdkafka":
            # transactions commit the input offsets of a librdkafka consumer's group
            raise ValueError("TIDEGATE_PROCESSING_GUARANTEE=exactly_once needs "
                             "TIDEGATE_READER=librdkafka")
        if self.retry_delays.strip() and self.reader != "librdkafka":
            # the retry topics are read by a second librdkafka consumer beside the input's
            raise ValueError("TIDEGATE_RETRY_DELAYS needs TIDEGATE_READER=librdkafka")
        return self

    @property
    def retry_delay_seconds(self) -> tuple[float, ...]:
        """The wait before each retry attempt; empty when retry topics are off."""
        return _parse_delays(self.retry_delays)

    @property
    def exactly_once(self) -> bool:
        """Whether stages commit outputs and input offsets in one Kafka transaction."""
        return self.processing_guarantee == "exactly_once"

    @property
    def control_keys(self) -> ControlKeys:
        """The keys control commands are signed and verified with (none: unauthenticated)."""
        key = self.control_key
        return ControlKeys.parse(key.get_secret_value() if key is not None else None)

    @property
    def broker_dir(self) -> Path:
        """Where the embedded broker keeps its storage, log and state file."""
        return self.data_dir / "broker"

    @property
    def registry_dir(self) -> Path:
        """The model registry: versioned artifacts and their metadata."""
        return self.data_dir / "models"

    @property
    def security(self) -> dict[str, str]:
        """The client security settings, as read from the environment at load."""
        return dict(self._security)

    def client_config(self, bootstrap_servers: str) -> ClientConfig:
        """librdkafka configuration for any client: bootstrap servers plus security settings."""
        return {"bootstrap.servers": bootstrap_servers, **self.security}


def _parse_delays(value: str) -> tuple[float, ...]:
    """``"1,10,60"`` -> ``(1.0, 10.0, 60.0)``; at most one delay per retry topic."""
    if not value.strip():
        return ()
    try:
        delays = tuple(float(part) for part in value.split(","))
    except ValueError:
        raise ValueError(f"expected seconds separated by commas, like 1,10,60, got {value!r}"
                         ) from None
    if any(not math.isfinite(delay) or delay <= 0 or delay > 86_400 for delay in delays):
        raise ValueError(f"each delay must be over 0 and at most 86400 seconds, got {value!r}")
    if len(delays) > MAX_RETRIES:
        raise ValueError(f"at most {MAX_RETRIES} delays (one per retry topic), "
                         f"got {len(delays)}")
    return delays


def load_settings() -> Settings:
    """Read and validate the settings once; a bad value is a ConfigError with one line."""
    try:
        return Settings()
    except ValidationError as exc:
        error = exc.errors()[0]
        if not error["loc"]:  # a rule across settings
            raise ConfigError(f"invalid settings: {error['msg'].removeprefix('Value error, ')}"
                              ) from exc
        field = str(error["loc"][0])
        name = field if field.isupper() else "TIDEGATE_" + field.upper()
        message = error["msg"].removeprefix("Value error, ")
        raise ConfigError(f"invalid setting {name}: {message}") from exc

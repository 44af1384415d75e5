"""The exception tree: one root, leaves that mean something to an operator.

Every leaf carries a stable ``code`` that operators filter and replay by.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "AuthorizationError",
    "BadMagicError",
    "BrokerError",
    "BrokerNotRunningError",
    "BrokerStartError",
    "CodecError",
    "ConfigError",
    "DeliveryError",
    "EmptyValueError",
    "EncodeError",
    "EnvelopeError",
    "FeatureMismatchError",
    "FeatureShapeError",
    "IncompatibleSchemaError",
    "InsecureConnectionError",
    "InvalidJsonError",
    "InvalidSchemaError",
    "InvalidUtf8Error",
    "KafkaSecurityError",
    "MalformedAvroError",
    "ModelArtifactError",
    "ModelArtifactTamperedError",
    "ModelNotFoundError",
    "ModelUnavailableError",
    "NotAnObjectError",
    "RegistryError",
    "RegistryNotFoundError",
    "RollbackUnavailableError",
    "RulesFileError",
    "SchemaRegistryRejectedError",
    "SchemaRegistryUnavailableError",
    "ScoringError",
    "TidegateError",
    "ToolMissingError",
    "TopicMismatchError",
    "TrailingBytesError",
    "TruncatedAvroError",
    "UnknownSchemaError",
    "ValidationError",
]


class TidegateError(Exception):
    """Root of every error tidegate raises on purpose."""

    code = "TIDEGATE"


class ConfigError(TidegateError):
    """A setting or argument is invalid; fix the configuration and run again."""

    code = "CONFIG"


class ToolMissingError(TidegateError):
    """A program tidegate needs (java, mvn) is not installed."""

    code = "TOOL_MISSING"


class BrokerError(TidegateError):
    """The embedded Kafka broker could not be managed."""

    code = "BROKER"


class BrokerStartError(BrokerError):
    """The embedded broker did not become ready."""

    code = "BROKER_START"


class BrokerNotRunningError(BrokerError):
    """No broker is configured or running."""

    code = "BROKER_NOT_RUNNING"


class KafkaSecurityError(BrokerError):
    """The cluster refused a client: its credentials, its transport or its permissions."""

    code = "KAFKA_SECURITY"


class AuthenticationError(KafkaSecurityError):
    """The cluster refused the client's SASL credentials (unknown user or wrong password)."""

    code = "AUTHENTICATION"


class InsecureConnectionError(KafkaSecurityError):
    """The client and the listener disagree on TLS or SASL (KAFKA_SECURITY_PROTOCOL is wrong)."""

    code = "SECURITY_PROTOCOL"


class AuthorizationError(KafkaSecurityError):
    """The principal has no ACL for what it tried (a topic, group or transactional id)."""

    code = "AUTHORIZATION"


class TopicMismatchError(TidegateError):
    """An existing topic differs from the catalog."""

    code = "TOPIC_MISMATCH"


class CodecError(TidegateError):
    """A record could not be encoded or decoded."""

    code = "CODEC"


class EmptyValueError(CodecError):
    """The record value is empty or missing (a tombstone where an event was expected)."""

    code = "EMPTY_VALUE"


class BadMagicError(CodecError):
    """The first bytes are neither an Avro framing (0xC3 0x01 or 0x00) nor JSON."""

    code = "BAD_MAGIC"


class UnknownSchemaError(CodecError):
    """The writer schema (fingerprint, registry id or name) is not known."""

    code = "UNKNOWN_SCHEMA"


class TruncatedAvroError(CodecError):
    """The Avro header or body ends before the schema says it should."""

    code = "TRUNCATED_AVRO"


class MalformedAvroError(CodecError):
    """The Avro body is corrupt (bad union index, bad varint, invalid UTF-8 in a string)."""

    code = "MALFORMED_AVRO"


class TrailingBytesError(CodecError):
    """Bytes are left over after the Avro body; the writer used a different schema."""

    code = "TRAILING_BYTES"


class IncompatibleSchemaError(CodecError):
    """The writer schema cannot be resolved into the reader schema."""

    code = "INCOMPATIBLE_SCHEMA"


class InvalidUtf8Error(CodecError):
    """A JSON value is not valid UTF-8."""

    code = "INVALID_UTF8"


class InvalidJsonError(CodecError):
    """A value that looks like JSON does not parse."""

    code = "INVALID_JSON"


class NotAnObjectError(CodecError):
    """A JSON value parses but is not an object."""

    code = "NOT_AN_OBJECT"


class EncodeError(CodecError):
    """A record does not fit the schema it is being encoded with."""

    code = "ENCODE_FAILED"


class InvalidSchemaError(ConfigError):
    """An Avro schema file or definition cannot be read or parsed."""

    code = "INVALID_SCHEMA"


class SchemaRegistryRejectedError(ConfigError):
    """The schema registry refused a request (incompatible schema, bad credentials)."""

    code = "SCHEMA_REGISTRY_REJECTED"


class SchemaRegistryUnavailableError(TidegateError):
    """The schema registry did not answer or failed; transient, retry with backoff."""

    code = "SCHEMA_REGISTRY_UNAVAILABLE"


class RegistryError(TidegateError):
    """The model registry could not be read or written."""

    code = "REGISTRY"


class RegistryNotFoundError(RegistryError):
    """The model registry directory does not exist; train a model into it first."""

    code = "REGISTRY_NOT_FOUND"


class ModelNotFoundError(RegistryError):
    """The registry holds no such model, version or production version."""

    code = "MODEL_NOT_FOUND"


class ModelArtifactError(RegistryError):
    """A model artifact or its metadata is corrupt or cannot be loaded."""

    code = "MODEL_ARTIFACT"


class ModelArtifactTamperedError(ModelArtifactError):
    """An artifact is not the registered one: hash differs or is missing, or its path escapes."""

    code = "MODEL_ARTIFACT_TAMPERED"


class RollbackUnavailableError(RegistryError):
    """No earlier good production version exists to roll back to."""

    code = "ROLLBACK_UNAVAILABLE"


class FeatureMismatchError(ConfigError):
    """A model expects other features than the pipeline computes."""

    code = "FEATURE_MISMATCH"


class ScoringError(TidegateError):
    """A model failed on a batch or returned invalid scores; the fallback takes over."""

    code = "SCORING"


class ModelUnavailableError(ScoringError):
    """A model server timed out or throttled the call: the same call may answer later."""

    code = "MODEL_UNAVAILABLE"


class RulesFileError(ConfigError):
    """A validation rules file is missing, unreadable or invalid."""

    code = "RULES_FILE"


class DeliveryError(TidegateError):
    """The broker refused or timed out a message of a produced batch."""

    code = "DELIVERY"

    def __init__(self, message: str, *, retriable: bool = False, fatal: bool = False) -> None:
        super().__init__(message)
        self.retriable = retriable
        self.fatal = fatal


class EnvelopeError(TidegateError):
    """An input event's envelope is refused: its event id or event time is missing or wrong."""

    code = "ENVELOPE"

    def __init__(self, code: str, message: str, event_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.event_id = event_id


class ValidationError(TidegateError):
    """A record broke one or more validation rules (the code names the first)."""

    code = "VALIDATION"


class FeatureShapeError(TidegateError):
    """A feature vector does not have the width the served model needs."""

    code = "FEATURE_SHAPE"

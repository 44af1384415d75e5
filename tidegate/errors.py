"""The exception tree: one root, leaves that mean something to an operator.

Every leaf carries a stable ``code`` that operators filter and replay by.
"""

from __future__ import annotations

__all__ = [
    "BrokerError",
    "BrokerNotRunningError",
    "BrokerStartError",
    "CodecError",
    "ConfigError",
    "TidegateError",
    "ToolMissingError",
    "TopicMismatchError",
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


class TopicMismatchError(TidegateError):
    """An existing topic differs from the catalog."""

    code = "TOPIC_MISMATCH"


class CodecError(TidegateError):
    """A record could not be encoded or decoded."""

    code = "CODEC"

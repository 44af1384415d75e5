"""Why the cluster refused a client, in one line an operator can act on.

librdkafka reports a refused connection as a generic transport failure of the request at hand
("Failed to get metadata: Local: Broker transport failure") once its timeout runs out. The cause
arrives elsewhere: wrong credentials and TLS failures through ``error_cb``, a listener that
hung up on the first bytes (TLS expected, or SASL expected) only in the client's log. A
``Refusals`` hears both and turns them into a :class:`KafkaSecurityError`.

Example::

    refusals = Refusals(config)
    admin = AdminClient({**config, **refusals.hooks()})
    try:
        admin.list_topics(timeout=10)
    except KafkaException as exc:
        raise refusals.explain(admin, exc.args[0]) from exc
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from confluent_kafka import KafkaError, KafkaException

from tidegate.errors import (
    AuthenticationError,
    AuthorizationError,
    BrokerError,
    InsecureConnectionError,
    KafkaSecurityError,
)

__all__ = ["Refusals", "authorization_error", "flush_or_raise"]

T = TypeVar("T")

_AUTHORIZATION = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED: "topic",
    KafkaError.GROUP_AUTHORIZATION_FAILED: "consumer group",
    KafkaError.CLUSTER_AUTHORIZATION_FAILED: "cluster",
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED: "transactional id",
}


class _Polled(Protocol):
    def poll(self, timeout: float = ...) -> Any: ...


class _Flushed(Protocol):
    def flush(self, timeout: float = ...) -> int: ...


def _principal(config: Mapping[str, Any]) -> str:
    user = config.get("sasl.username")
    return f"user {user!r}" if user else "this client"


def authorization_error(error: KafkaError, config: Mapping[str, Any],
                        doing: str) -> AuthorizationError | None:
    """An AuthorizationError when ``error`` is an ACL refusal, else None.

    >>> authorization_error(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED), {
    ...     "sasl.username": "ingest"}, "write t.control")   # doctest: +ELLIPSIS
    AuthorizationError("user 'ingest' is not authorized to write t.control ...")
    """
    resource = _AUTHORIZATION.get(error.code())
    if resource is None:
        return None
    return AuthorizationError(
        f"{_principal(config)} is not authorized to {doing} (no ACL for that {resource}; "
        "`tidegate init --acls --dry-run` lists what each principal may do)")


class Refusals:
    """Collects librdkafka's reasons for refused connections of one client."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self._config = dict(config)
        self.causes: list[KafkaSecurityError] = []
        self._logger = logging.Logger(f"librdkafka.{id(self)}", logging.INFO)
        self._logger.addHandler(_Heard(self._on_log))
        self._logger.propagate = False

    def hooks(self) -> dict[str, Any]:
        """Client settings that route errors and connection logs here (served by ``poll``).

        The client logs at info level, to this object only: that is where a hang-up during
        the handshake shows up; nothing reaches the terminal.
        """
        return {"error_cb": self._on_error, "logger": self._logger, "log_level": 6}

    @property
    def protocol(self) -> str:
        return str(self._config.get("security.protocol", "PLAINTEXT")).upper()

    def _on_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._AUTHENTICATION:
            mechanism = self._config.get("sasl.mechanism", "PLAIN")
            self._add(AuthenticationError(
                f"authentication failed: the cluster refused the credentials of "
                f"{_principal(self._config)} (SASL {mechanism}); check KAFKA_SASL_USERNAME "
                "and KAFKA_SASL_PASSWORD"))
        elif error.code() == KafkaError._SSL:
            detail = error.str().split(": ", 1)[-1].split(" (after")[0]
            self._add(InsecureConnectionError(
                f"TLS handshake failed: {detail}; check KAFKA_SSL_CA_LOCATION"))

    def _on_log(self, line: str) -> None:
        if "closed by peer" not in line:
            return
        if "SSL" not in self.protocol:  # a TLS listener hangs up on a plaintext hello
            self._add(InsecureConnectionError(
                f"the cluster closed the connection during the handshake: it expects TLS, "
                f"this client speaks {self.protocol} (set KAFKA_SECURITY_PROTOCOL=SASL_SSL "
                "and KAFKA_SSL_CA_LOCATION)"))
        elif "SASL" not in self.protocol:  # a SASL listener hangs up on a request unsigned
            self._add(InsecureConnectionError(
                "the cluster closed the connection after TLS: it expects SASL credentials "
                "(set KAFKA_SECURITY_PROTOCOL=SASL_SSL, KAFKA_SASL_MECHANISM, "
                "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD)"))

    def _add(self, cause: KafkaSecurityError) -> None:
        if len(self.causes) < 20:  # a client retries forever: keep the first few
            self.causes.append(cause)

    def cause(self, client: _Polled | None = None) -> KafkaSecurityError | None:
        """The first security cause heard, after serving the client's pending callbacks."""
        if client is not None and not self.causes:
            client.poll(0.2)
        return self.causes[0] if self.causes else None

    def request(self, client: _Polled, call: Callable[[float], T], *, timeout: float,
                doing: str = "reach the cluster") -> T:
        """``call(step_timeout)`` in steps of a couple of seconds until ``timeout``: a refused
        client fails at the first step with its cause, not after the whole timeout."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return call(max(0.1, min(2.0, deadline - time.monotonic())))
            except KafkaException as exc:
                if self.cause(client) is not None or time.monotonic() >= deadline:
                    raise self.explain(client, exc.args[0], doing) from exc

    def explain(self, client: _Polled | None, error: KafkaError,
                doing: str = "reach the cluster") -> BrokerError:
        """The error to raise for a failed request: the refusal behind it, if one was heard."""
        return (authorization_error(error, self._config, doing) or self.cause(client)
                or BrokerError(f"cannot {doing}: {error.str()}"))


def flush_or_raise(producer: _Flushed, refusals: Refusals, timeout: float) -> int:
    """Flush, second by second; raise the refusal as soon as one is heard (a producer with
    wrong credentials would otherwise wait out the whole timeout). Returns what is left."""
    deadline = time.monotonic() + timeout
    while True:
        left = producer.flush(max(0.0, min(1.0, deadline - time.monotonic())))
        if left == 0:
            return 0
        if refusals.causes:
            raise refusals.causes[0]
        if time.monotonic() >= deadline:
            return left


class _Heard(logging.Handler):
    def __init__(self, on_line: Any) -> None:
        super().__init__(logging.INFO)
        self._on_line = on_line

    def emit(self, record: logging.LogRecord) -> None:
        self._on_line(record.getMessage())

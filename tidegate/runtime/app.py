"""The Faust app of one stage. Stage modules build theirs here; this module imports no stage.

Every stage runs in its own process with its own consumer group (the app id), the aiokafka
transport, raw bytes on every topic (stages decode themselves, so a bad record can be
dead-lettered instead of crashing the deserializer), and acks=all on the producer.
"""

from __future__ import annotations

import ssl

import faust

from tidegate.errors import ConfigError
from tidegate.kafka.clients import bootstrap_servers, client_security
from tidegate.settings import Settings

__all__ = ["create_app", "credentials", "input_group"]


def credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    """Faust credentials from the same security settings every librdkafka client gets.

    SCRAM-SHA-512 over TLS, as on the secure embedded broker, becomes aiokafka's SASL_SSL with
    an SSL context that trusts ``KAFKA_SSL_CA_LOCATION``.
    """
    security = client_security(settings)
    protocol = security.get("security.protocol", "PLAINTEXT").upper()
    if protocol == "PLAINTEXT":
        return None
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        variable = "KAFKA_SSL_CA_LOCATION"
        try:
            context = ssl.create_default_context(cafile=security.get("ssl.ca.location"))
            if "ssl.certificate.location" in security:
                variable = "KAFKA_SSL_CERTIFICATE_LOCATION / KAFKA_SSL_KEY_LOCATION"
                context.load_cert_chain(security["ssl.certificate.location"],
                                        security.get("ssl.key.location"),
                                        security.get("ssl.key.password"))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"invalid setting {variable}: {exc}") from exc
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        return faust.SASLCredentials(
            username=security.get("sasl.username"), password=security.get("sasl.password"),
            mechanism=security.get("sasl.mechanism", "PLAIN"), ssl_context=context,
        )
    raise ConfigError(f"invalid setting KAFKA_SECURITY_PROTOCOL: unknown protocol {protocol}")


def input_group(stage: str, settings: Settings) -> str:
    """The consumer group that reads ``stage``'s input (and whose lag backpressure watches).

    The Faust app's group (``<prefix><stage>``) with the Faust reader; with the librdkafka
    reader a group of its own, so the app's group only follows the control topic.
    """
    group = f"{settings.topic_prefix}{stage}"
    return f"{group}-input" if settings.reader == "librdkafka" else group


def create_app(stage: str, settings: Settings, *, partitions: int = 6) -> faust.App:
    """The Faust app for ``stage``; its id is the stage's consumer group."""
    servers = [f"kafka://{server}" for server in bootstrap_servers(settings).split(",")]
    datadir = settings.data_dir / "faust" / stage
    datadir.mkdir(parents=True, exist_ok=True)
    return faust.App(
        f"{settings.topic_prefix}{stage}",
        broker=servers,
        broker_credentials=credentials(settings),
        store="memory://",
        datadir=str(datadir),
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=partitions,
        topic_replication_factor=settings.replication_factor,
        producer_acks=-1,
        producer_linger_ms=5,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        # A killed worker's partitions move to its replacement after the session timeout.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
        stream_wait_empty=False,
        # Bounded buffers: an internal message holds a whole micro-batch (up to 512 KiB).
        stream_buffer_maxsize=128,
        consumer_max_fetch_size=1024 * 1024,
        web_enabled=stage == "monitoring",
        web_bind=settings.status_host,
        web_port=settings.status_port,
        web_in_thread=False,
    )

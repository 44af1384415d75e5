"""Which Kafka cluster tidegate talks to: KAFKA_BOOTSTRAP_SERVERS, else the embedded broker.

Security comes from the environment (``KAFKA_SECURITY_PROTOCOL``, ``KAFKA_SASL_*``,
``KAFKA_SSL_*``). When none is set and the embedded broker runs with ``--secure``, commands
connect as its ``operator`` principal; only ``admin_config`` (creating ACLs) uses ``admin``.
"""

from __future__ import annotations

from tidegate.errors import BrokerNotRunningError
from tidegate.kafka.broker import read_state, secure_dir
from tidegate.kafka.secure import ADMIN, OPERATOR, SecureMaterial, load_material
from tidegate.settings import ClientConfig, Settings

__all__ = [
    "BATCH_PRODUCER", "BULK_FETCH", "CONSUMER_DEFAULTS", "HOP_FETCH", "INTERNAL_FETCH",
    "PRODUCER_DEFAULTS", "admin_config",
    "bootstrap_servers", "client_config", "client_security", "embedded_material", "hop_fetch",
]

# Every producer of stage outputs: acknowledged by all in-sync replicas, idempotent, lz4 batches,
# and a bounded queue (librdkafka's default is 1 GiB).
PRODUCER_DEFAULTS: ClientConfig = {
    "acks": "all", "enable.idempotence": True, "linger.ms": 2, "compression.type": "lz4",
    "queue.buffering.max.kbytes": 65536, "log_level": 3,
}
# A producer whose every message is a whole batch (a stage writing an internal topic): no
# linger. librdkafka sends one produce request per partition whatever it waits for, so the
# linger only delayed each hop by 2 ms.
BATCH_PRODUCER: ClientConfig = {"linger.ms": 0}
# Every consumer: offsets committed by tidegate (after delivery), never automatically, and
# librdkafka's log at errors only (its warnings repeat what the caller reports). Fetches keep
# librdkafka's defaults (answered at the first byte, else held 500 ms): an idle follower asks
# twice a second, a scan reads to the end without waiting.
CONSUMER_DEFAULTS: ClientConfig = {"enable.auto.commit": False, "log_level": 3}
# The readers of a hop of single records (ingest's input, a consumer of predictions): a fetch
# returns a batch, not a record: the broker holds it until 64 KiB are there or 10 ms have
# passed. With the defaults, a stream of small produce requests became as many fetches.
HOP_FETCH: ClientConfig = {"fetch.min.bytes": 65536, "fetch.wait.max.ms": 10}
# The readers of internal topics keep the defaults: every message there is a whole micro-batch,
# so a fetch answered at the first byte already returns a batch, at once; held for 64 KiB or
# 10 ms, each hop waited up to 10 ms and each reader fetched 100 times a second.
INTERNAL_FETCH: ClientConfig = {}
# A reader of a busy topic that nothing waits on (monitoring's follower of the predictions
# topic, one record per event): fetches held for 256 KiB or 200 ms, so it fetches a few times a
# second, not once for every batch written.
BULK_FETCH: ClientConfig = {"fetch.min.bytes": 262_144, "fetch.wait.max.ms": 200}


def hop_fetch(internal: bool) -> ClientConfig:
    """The fetch settings of a reader of an internal topic, or of a topic of single records."""
    return INTERNAL_FETCH if internal else HOP_FETCH


def bootstrap_servers(settings: Settings) -> str:
    """The bootstrap address of the configured cluster or of the running embedded broker."""
    if settings.kafka_bootstrap_servers:
        return settings.kafka_bootstrap_servers
    state = read_state(settings.broker_dir.resolve())
    if state is None:
        raise BrokerNotRunningError(
            "no Kafka cluster: start the embedded one with `tidegate broker start` "
            "(or `tidegate up`), or set KAFKA_BOOTSTRAP_SERVERS"
        )
    return state.bootstrap


def client_security(settings: Settings, *, user: str = OPERATOR) -> dict[str, str]:
    """The security settings of a client: the environment's, else those of ``user`` on the
    secure embedded broker, else none (a plaintext broker).

    >>> client_security(load_settings())["sasl.username"]   # on `broker start --secure`
    'operator'
    """
    if settings.security or settings.kafka_bootstrap_servers:
        return settings.security
    material = embedded_material(settings)
    return material.client_security(user) if material is not None else {}


def embedded_material(settings: Settings) -> SecureMaterial | None:
    """The secure embedded broker's principals, when tidegate talks to one."""
    if settings.kafka_bootstrap_servers:
        return None
    state = read_state(settings.broker_dir.resolve())
    return load_material(secure_dir(settings)) if state and state.secure else None


def client_config(settings: Settings, **extra: str | int | float | bool) -> ClientConfig:
    """librdkafka settings for any client: bootstrap servers, security, then ``extra``."""
    return {"bootstrap.servers": bootstrap_servers(settings), **client_security(settings),
            **extra}


def admin_config(settings: Settings) -> ClientConfig:
    """Settings for what needs the super user (ACLs): the environment's principal on an
    external cluster, the embedded secure broker's ``admin`` otherwise."""
    return {"bootstrap.servers": bootstrap_servers(settings),
            **client_security(settings, user=ADMIN)}

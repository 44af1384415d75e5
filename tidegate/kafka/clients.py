"""Which Kafka cluster tidegate talks to: KAFKA_BOOTSTRAP_SERVERS, else the embedded broker."""

from __future__ import annotations

from tidegate.errors import BrokerNotRunningError
from tidegate.kafka.broker import read_state
from tidegate.settings import ClientConfig, Settings

__all__ = [
    "CONSUMER_DEFAULTS", "HOP_FETCH", "PRODUCER_DEFAULTS", "bootstrap_servers", "client_config",
]

# Every producer of stage outputs: acknowledged by all in-sync replicas, idempotent, lz4 batches,
# and a bounded queue (librdkafka's default is 1 GiB).
PRODUCER_DEFAULTS: ClientConfig = {
    "acks": "all", "enable.idempotence": True, "linger.ms": 2, "compression.type": "lz4",
    "queue.buffering.max.kbytes": 65536, "log_level": 3,
}
# Every consumer: offsets committed by tidegate (after delivery), never automatically, and
# librdkafka's log at errors only (its warnings repeat what the caller reports). Fetches keep
# librdkafka's defaults (answered at the first byte, else held 500 ms): an idle follower asks
# twice a second, a scan reads to the end without waiting.
CONSUMER_DEFAULTS: ClientConfig = {"enable.auto.commit": False, "log_level": 3}
# The readers of a pipeline hop (a stage's input, a consumer of predictions): a fetch returns a
# batch, not a record: the broker holds it until 64 KiB are there or 10 ms have passed. With
# the defaults, a stream of small produce requests became as many fetches.
HOP_FETCH: ClientConfig = {"fetch.min.bytes": 65536, "fetch.wait.max.ms": 10}


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


def client_config(settings: Settings, **extra: str | int | float | bool) -> ClientConfig:
    """librdkafka settings for any client: bootstrap servers, security, then ``extra``."""
    return {**settings.client_config(bootstrap_servers(settings)), **extra}

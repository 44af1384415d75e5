"""Read a topic from the beginning (or the end) to its current end, or follow it.

Used by ``tidegate tail``, ``tidegate dlq`` and the tests: it assigns every partition itself,
so it joins no consumer group and commits nothing.

Example::

    for message in read_topic(config, "tidegate.predictions"):
        print(message.value())
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from tidegate.errors import BrokerError
from tidegate.kafka.clients import CONSUMER_DEFAULTS
from tidegate.kafka.refusal import Refusals, authorization_error
from tidegate.retry import retry_sync, stop_after_delay, wait_fixed
from tidegate.settings import ClientConfig

__all__ = ["Message", "read_topic"]


def read_topic(
    config: ClientConfig, topic: str, *, from_beginning: bool = True, follow: bool = False,
    limit: int | None = None, idle_timeout: float = 10.0, tail: int | None = None,
) -> Iterator[Message]:
    """Messages of ``topic``; without ``follow``, stop at the end it had when reading began.

    ``tail`` starts each partition that many messages before its end instead of at the
    beginning. ``idle_timeout`` bounds how long reading waits for a message it knows exists.
    """
    refusals = Refusals(config)
    consumer = Consumer({**CONSUMER_DEFAULTS, **config, "group.id": "tidegate-reader",
                         "enable.partition.eof": True, **refusals.hooks()})
    try:
        metadata = refusals.request(
            consumer, lambda step: consumer.list_topics(topic, timeout=step), timeout=10)
        info = metadata.topics.get(topic)
        if info is None or info.error is not None or not info.partitions:
            raise BrokerError(f"topic {topic} does not exist")
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        partitions = sorted(info.partitions)
        ends = {p: _watermarks(consumer, TopicPartition(topic, p)) for p in partitions}
        open_parts = {p for p, (low, high) in ends.items()
                      if follow or (high > low and from_beginning)}
        consumer.assign([TopicPartition(topic, p, start if tail is None or not from_beginning
                                        else max(ends[p][0], ends[p][1] - tail))
                         for p in partitions])
        yielded = 0
        quiet_since = time.monotonic()
        while open_parts or follow:
            if limit is not None and yielded >= limit:
                return
            message = consumer.poll(0.5)
            if message is None:
                if not follow and time.monotonic() - quiet_since > idle_timeout:
                    raise BrokerError(f"reading {topic} stalled for {idle_timeout:.0f} s")
                continue
            quiet_since = time.monotonic()
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    if not follow:
                        open_parts.discard(message.partition() or 0)
                    continue
                raise (authorization_error(error, config, f"read {topic}")
                       or BrokerError(f"reading {topic}: {error.str()}"))
            partition = message.partition() or 0
            offset = message.offset() or 0
            if not follow and offset >= ends[partition][1]:
                open_parts.discard(partition)
                continue
            yielded += 1
            yield message
            if not follow and offset + 1 >= ends[partition][1]:
                open_parts.discard(partition)
    finally:
        consumer.close()


def _watermarks(consumer: Consumer, tp: TopicPartition, *,
                timeout: float = 15.0) -> tuple[int, int]:
    """Low and high watermark; a new topic's leader may take a moment to be known."""
    try:
        # librdkafka does not flag NOT_LEADER_FOR_PARTITION as retriable, though a topic
        # created a moment ago answers with it until its leader is elected: retry any error
        low, high = retry_sync(lambda: consumer.get_watermark_offsets(tp, timeout=5),
                               stop=stop_after_delay(timeout), wait=wait_fixed(0.2),
                               retry_on=KafkaException)
    except KafkaException as exc:
        raise BrokerError(f"reading {tp.topic}: {exc.args[0].str()}") from exc
    return int(low), int(high)

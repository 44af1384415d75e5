"""Where a latency run's time goes: how old its events were when each stage wrote them.

Every internal batch message carries its events' event times and Kafka stamps the message when
the stage produces it, so reading the internal topics after a run gives each event's age at
each hop: ingest's start on its batch (its ``ingested_at`` stamp, after its linger), then the
writes of ingest, validation and the feature stage. The bench adds inference's write (the
prediction's timestamp) and the prediction reader's arrival. The difference between two
neighbours is what that hop added.

Example::

    ages = hop_ages(config, "bench1.", start_ms=run_start, end_ms=run_end)
    ages["validation"]["p99_ms"]      # event time to validation's write, 99th percentile
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from tidegate.batches import BadBatchError, unpack
from tidegate.codec import Codec
from tidegate.errors import BrokerError, CodecError
from tidegate.kafka.clients import CONSUMER_DEFAULTS
from tidegate.settings import ClientConfig
from tidegate.topics import by_key

__all__ = ["HOPS", "hop_ages", "hop_line", "percentiles"]

# (the point the age is taken at, the internal topic that shows it)
HOPS = (("ingest start", "ingested"), ("ingest", "ingested"), ("validation", "validated"),
        ("feature", "features"))


def _window(config: ClientConfig, topic: str, start_ms: int, timeout: float = 10.0
            ) -> list[Any]:
    """The messages of ``topic`` stamped from ``start_ms`` up to its end, every partition."""
    consumer = Consumer({**CONSUMER_DEFAULTS, **config, "group.id": "tidegate-hops",
                         "enable.partition.eof": True})
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=timeout).topics[topic].partitions)
        starts = _offsets_at(consumer, [TopicPartition(topic, p, start_ms) for p in partitions],
                             timeout)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1]
                for p in partitions}
        wanted = [tp for tp in starts if 0 <= tp.offset < ends[tp.partition]]
        if not wanted:
            return []
        consumer.assign(wanted)
        open_parts, messages = {tp.partition for tp in wanted}, []
        quiet_until = time.monotonic() + timeout
        while open_parts:
            # a short wait per call: consume(n, t) holds its answer until n arrive or t passes
            batch = consumer.consume(500, 0.2)
            if not batch:
                if time.monotonic() > quiet_until:
                    break  # the broker stopped answering: report what was read
                continue
            quiet_until = time.monotonic() + timeout
            for message in batch:
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        open_parts.discard(message.partition())
                    continue
                if (message.offset() or 0) >= ends[message.partition() or 0] - 1:
                    open_parts.discard(message.partition() or 0)
                messages.append(message)
        return messages
    finally:
        consumer.close()


def _offsets_at(consumer: Any, wanted: list[TopicPartition], timeout: float
                ) -> list[TopicPartition]:
    """The first offset at or after each partition's timestamp, asking again for ``timeout``
    seconds while the broker refuses (not the leader yet, on a topic created a moment ago)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found: list[TopicPartition] = consumer.offsets_for_times(wanted, timeout=timeout)
            return found
        except KafkaException as exc:
            if time.monotonic() > deadline:
                raise BrokerError(f"could not find {wanted[0].topic}'s offsets: {exc}") from exc
            time.sleep(0.2)


def percentiles(ages_ms: Any) -> dict[str, float]:
    """The count, median and 99th percentile of an array of ages in ms."""
    if not len(ages_ms):
        return {"events": 0}
    return {"events": len(ages_ms), "p50_ms": float(np.percentile(ages_ms, 50)),
            "p99_ms": float(np.percentile(ages_ms, 99))}


def hop_ages(config: ClientConfig, prefix: str, *, start_ms: int, end_ms: int
             ) -> dict[str, dict[str, float]]:
    """Percentiles of event time to each hop, for events with event times in the window."""
    codec = Codec()
    ages: dict[str, list[Any]] = {hop: [] for hop, _ in HOPS}
    read: dict[str, list[Any]] = {}
    for topic_key in dict.fromkeys(key for _, key in HOPS):
        for message in _window(config, by_key(topic_key).name(prefix), start_ms):
            try:
                batch = unpack(codec, message.value() or b"")
            except (BadBatchError, CodecError):
                continue
            times = batch.event_times
            keep = (times >= start_ms) & (times < end_ms)
            read.setdefault(topic_key, []).append((message.timestamp()[1], times[keep],
                                                   batch.ingested_at[keep]))
    for hop, topic_key in HOPS:
        for stamp, times, ingested in read.get(topic_key, []):
            ages[hop].append(ingested - times if hop == "ingest start" else stamp - times)
    return {hop: percentiles(np.concatenate(found) if found else np.zeros(0))
            for hop, found in ages.items()}


def hop_line(hops: dict[str, dict[str, float]]) -> str:
    """``event time to each hop, p50/p99 ms: ingest start 30/52, ingest 33/56, ...``."""
    parts = [f"{hop} {found['p50_ms']:.0f}/{found['p99_ms']:.0f}"
             for hop, found in hops.items() if found.get("events")]
    return "  event time to each hop, p50/p99 ms: " + (", ".join(parts) or "not measured")

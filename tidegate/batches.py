"""Internal micro-batches: many events per message on the internal topics, one per partition.

Public topics carry one record per message; between stages a message carries a whole
micro-batch (tidegate.internal.EventBatch), so per-message costs are paid once per batch.

Example::

    for partition, message in pack(routed, stage="ingest", partitions=6):
        send(topic, partition=partition, value=message)
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from aiokafka.partitioner import murmur2

from tidegate.codec import Codec, Record
from tidegate.deadletter import SourceRecord

__all__ = [
    "BATCH_SCHEMA", "MAX_BATCH_BYTES", "MAX_BATCH_EVENTS", "ages_ms", "envelope_source", "pack",
    "partition_for", "unpack",
]

BATCH_SCHEMA = "tidegate.internal.EventBatch"
MAX_BATCH_EVENTS = 2000
MAX_BATCH_BYTES = 512 * 1024  # the broker refuses messages over 1 MiB by default
_ENVELOPE_OVERHEAD = 200  # ids, trace context, timestamps, source position, headers


def partition_for(key: str, partitions: int) -> int:
    """Kafka's default partitioner (murmur2 of the UTF-8 key), as every Kafka client computes it.

    Routing by it keeps an account on the same partition number as Faust's table changelog.
    """
    return int(murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def pack(
    codec: Codec, envelopes: Sequence[tuple[int, dict[str, Any]]], *, stage: str
) -> Iterator[tuple[int, bytes]]:
    """One encoded EventBatch per (partition, chunk) of ``(partition, envelope)`` pairs."""
    groups: defaultdict[int, list[dict[str, Any]]] = defaultdict(list)
    for partition, envelope in envelopes:
        # Fields added after the first version; bytes defaults must be bytes for the writer.
        envelope.setdefault("feature_vector", b"")
        envelope.setdefault("account_id", "")
        groups[partition].append(envelope)
    now = int(time.time() * 1000)
    for partition, events in groups.items():
        for chunk in _chunks(events):
            batch = {"batch_id": uuid.uuid4().hex, "stage": stage, "created_at": now,
                     "events": chunk}
            yield partition, codec.encode(BATCH_SCHEMA, batch)


def _chunks(events: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Slices that stay well under the broker's 1 MiB message limit, whatever the event size."""
    start, size = 0, 0
    for index, event in enumerate(events):
        estimate = (_ENVELOPE_OVERHEAD + len(event["value"]) + len(event["fields"])
                    + len(event.get("feature_vector", b"")))
        full = size + estimate > MAX_BATCH_BYTES or index - start >= MAX_BATCH_EVENTS
        if index > start and full:
            yield events[start:index]
            start, size = index, 0
        size += estimate
    if start < len(events):
        yield events[start:]


def unpack(codec: Codec, value: bytes) -> list[Record]:
    """The envelopes of one EventBatch message."""
    events: list[Record] = codec.decode(value, BATCH_SCHEMA)["events"]
    return events


def envelope_source(envelope: Record) -> SourceRecord:
    """The original input record an envelope carries, for a dead letter of a later stage."""
    return SourceRecord(
        topic=envelope["source_topic"], partition=envelope["source_partition"],
        offset=envelope["source_offset"], timestamp=envelope["source_timestamp"],
        key=envelope["key"], value=envelope["value"],
        headers=[(h["key"], h["value"]) for h in envelope["headers"]],
    )


def ages_ms(envelopes: Iterable[Record]) -> list[float]:
    """Milliseconds since each envelope was ingested: the latency so far."""
    now = time.time() * 1000
    return [now - envelope["ingested_at"] for envelope in envelopes]

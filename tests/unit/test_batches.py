"""Internal micro-batches: packing, chunking, Kafka's default partitioner, envelope sources."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner

from tidegate.batches import BATCH_SCHEMA, ages_ms, envelope_source, pack, partition_for, unpack
from tidegate.codec import Codec
from tidegate.deadletter import SourceRecord
from tidegate.ingestion import Dedupe, ingest_batch

pytestmark = pytest.mark.unit

NOW_MS = 1_800_000_000_000
BROKER_MESSAGE_LIMIT = 1024 * 1024

# Utils.murmur2 of these bytes, from the Java client's UtilsTest.testMurmur2.
JAVA_MURMUR2 = {
    "21": -973932308,
    "foobar": -790332482,
    "a-little-bit-long-string": -985981536,
    "a-little-bit-longer-string": -1486304829,
    "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    "abc": 479470107,
}


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec()


def envelope(index: int, *, value: bytes | None = None, key: bytes | None = b"k",
             features: list[float] | None = None) -> dict[str, Any]:
    return {
        "event_id": f"00000000-0000-4000-8000-{index:012d}", "trace_id": f"{index:032x}",
        "traceparent": f"00-{index:032x}-{index:016x}-01", "event_time": NOW_MS - index,
        "ingested_at": NOW_MS, "source_topic": "p.events", "source_partition": index % 6,
        "source_offset": index, "source_timestamp": NOW_MS - 1,
        "key": key, "value": value if value is not None else f"v{index}".encode(),
        "headers": [{"key": "h", "value": b"1"}, {"key": "none", "value": None}],
        "fields": json.dumps({"n": index}).encode(),
        "features": features if features is not None else [], "feature_quality": "",
    }


def test_pack_unpack_round_trip_per_partition(codec: Codec) -> None:
    pairs = [(i % 3, envelope(i, features=[float(i), 0.5])) for i in range(30)]
    before = int(time.time() * 1000)
    packed = list(pack(codec, pairs, stage="feature"))
    assert sorted(partition for partition, _ in packed) == [0, 1, 2]
    for partition, message in packed:
        assert unpack(codec, message) == [env for p, env in pairs if p == partition]
        batch = codec.decode(message, BATCH_SCHEMA)
        assert batch["stage"] == "feature"
        assert before <= batch["created_at"] <= int(time.time() * 1000)
        assert len(batch["batch_id"]) == 32
    ids = {codec.decode(message, BATCH_SCHEMA)["batch_id"] for _, message in packed}
    assert len(ids) == 3


def test_pack_of_nothing_yields_nothing(codec: Codec) -> None:
    assert list(pack(codec, [], stage="ingest")) == []


def test_chunks_hold_at_most_2000_events_in_order(codec: Codec) -> None:
    pairs = [(0, envelope(i)) for i in range(4_500)] + [(5, envelope(9_999))]
    packed = list(pack(codec, pairs, stage="ingest"))
    sizes = [(partition, len(unpack(codec, message))) for partition, message in packed]
    assert sizes == [(0, 2_000), (0, 2_000), (0, 500), (5, 1)]
    offsets = [env["source_offset"] for p, m in packed if p == 0 for env in unpack(codec, m)]
    assert offsets == list(range(4_500))


def test_exactly_2000_events_make_one_message(codec: Codec) -> None:
    packed = list(pack(codec, [(1, envelope(i)) for i in range(2_000)], stage="ingest"))
    assert len(packed) == 1


def test_large_events_are_chunked_under_the_broker_message_limit(codec: Codec) -> None:
    big = b"x" * 100_000
    pairs = [(2, envelope(i, value=big)) for i in range(40)]
    packed = list(pack(codec, pairs, stage="ingest"))
    assert len(packed) > 1
    assert all(len(message) < BROKER_MESSAGE_LIMIT for _, message in packed)
    events = [env for _, message in packed for env in unpack(codec, message)]
    assert [env["source_offset"] for env in events] == list(range(40))
    # one event larger than the budget still goes out, alone
    huge = list(pack(codec, [(0, envelope(0, value=b"y" * 700_000)), (0, envelope(1))],
                     stage="ingest"))
    assert [len(unpack(codec, message)) for _, message in huge] == [1, 1]


@pytest.mark.parametrize(("key", "java_hash"), JAVA_MURMUR2.items())
def test_partition_for_matches_the_java_client(key: str, java_hash: int) -> None:
    for partitions in (1, 3, 6, 7, 12, 100):
        assert partition_for(key, partitions) == (java_hash & 0x7FFFFFFF) % partitions


def test_partition_for_six_partitions_is_deterministic_stable_and_spread() -> None:
    keys = [f"acct-{i:06d}" for i in range(600)]
    first = [partition_for(key, 6) for key in keys]
    assert first == [partition_for(key, 6) for key in keys]
    assert set(first) == set(range(6))
    assert min(Counter(first).values()) > 60  # roughly 100 per partition
    assert partition_for("foobar", 6) == (-790332482 & 0x7FFFFFFF) % 6


def test_partition_for_agrees_with_aiokafkas_default_partitioner() -> None:
    partitioner = DefaultPartitioner()
    keys = [f"acct-{i:06d}" for i in range(300)]
    keys += [f"{i:08x}-4b1e-4c3a-9c4e-{i * 7919:012x}" for i in range(100)]
    keys += ["", "ä", "日本語のキー", "emoji-\U0001f600", " spaced key "]
    for partitions in (1, 3, 6, 12):
        for key in keys:
            expected = partitioner(key.encode(), list(range(partitions)), [])
            assert partition_for(key, partitions) == expected, (key, partitions)


def test_envelope_source_is_the_input_record(codec: Codec) -> None:
    original = SourceRecord(topic="p.events", partition=5, offset=77, timestamp=NOW_MS - 9,
                            key=None, value=b'{"event_id": "x"}',
                            headers=[("a", b"1"), ("none", None), ("a", b"2")])
    event = {"event_id": "8c5e0c1e-6f0a-4d8e-9a53-0c3f1c7b2a11", "event_time": NOW_MS - 1,
             "account_id": "acct-1"}
    record = SourceRecord(topic=original.topic, partition=original.partition,
                          offset=original.offset, timestamp=original.timestamp, key=original.key,
                          value=json.dumps(event).encode(), headers=original.headers)
    [(_, env)] = ingest_batch([record], codec=codec, dedupe=Dedupe(), now_ms=NOW_MS)[0]
    assert envelope_source(env) == record
    [(_, message)] = list(pack(codec, [(0, env)], stage="ingest"))
    assert envelope_source(unpack(codec, message)[0]) == record


def test_ages_are_milliseconds_since_ingest() -> None:
    now = time.time() * 1000
    envelopes = [{"ingested_at": now - 1_000}, {"ingested_at": now - 5}]
    ages = ages_ms(envelopes)
    assert len(ages) == 2
    assert 1_000 <= ages[0] < 61_000
    assert 5 <= ages[1] < 60_005
    assert ages[0] - ages[1] == pytest.approx(995)
    assert ages_ms([]) == []

"""Internal micro-batches: columns, packing and chunking, the legacy formats, Kafka's
partitioner."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import fields, replace
from typing import Any

import msgspec
import numpy as np
import pytest
from aiokafka.partitioner import DefaultPartitioner

from tidegate.batches import (
    BATCH_SCHEMA,
    LEGACY_BATCH_SCHEMA,
    MAX_BATCH_BYTES,
    MAX_BATCH_EVENTS,
    PACK_SCHEMA,
    BadBatchError,
    Batch,
    field_columns,
    pack,
    pack_whole,
    partition_for,
    unpack,
)
from tidegate.codec import Codec
from tidegate.deadletter import Headers, SourceRecord
from tidegate.errors import CodecError
from tidegate.pipeline.ingest import Dedupe, ingest_batch

pytestmark = pytest.mark.unit

NOW_MS = 1_800_000_000_000
BROKER_MESSAGE_LIMIT = 1024 * 1024
SPLIT_LIMIT = 900 * 1024  # an encoded chunk over this is sent in halves
COLUMNS = tuple(f.name for f in fields(Batch))
HEADERS: Headers = [("a", b"1"), ("none", None), ("a", b"2")]

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
             features: Sequence[float] = (), quality: str = "",
             ingested_at: int = NOW_MS) -> dict[str, Any]:
    """One event as the legacy EventBatch record carried it (ingest's envelope)."""
    account = f"acct-{index % 4}"
    return {
        "event_id": f"00000000-0000-4000-8000-{index:012d}", "trace_id": f"{index:032x}",
        "traceparent": f"00-{index:032x}-{index:016x}-01", "event_time": NOW_MS - index,
        "ingested_at": ingested_at, "source_topic": "p.events", "source_partition": index % 6,
        "source_offset": index, "source_timestamp": NOW_MS - 1,
        "key": key, "value": value if value is not None else f"v{index}".encode(),
        "headers": [{"key": "h", "value": b"1"}, {"key": "none", "value": None}],
        "fields": json.dumps({"n": index, "account_id": account}).encode(),
        "features": [], "feature_quality": quality,
        "feature_vector": np.asarray(features, dtype="<f8").tobytes(), "account_id": account,
    }


def batch_of(count: int, *, partitions: Sequence[int] | None = None, width: int = 0,
             start: int = 0) -> Batch:
    """``count`` events (offsets from ``start``), with ``width`` features each when width > 0."""
    envelopes = [envelope(i, features=[float(i) + j / 8 for j in range(width)],
                          quality="ok" if width else "")
                 for i in range(start, start + count)]
    return Batch.from_envelopes(envelopes, partitions=partitions)


def columns(batch: Batch) -> dict[str, Any]:
    """Every column, comparable with ==: an array as its dtype, shape and exact bytes."""
    out: dict[str, Any] = {}
    for name in COLUMNS:
        value = getattr(batch, name)
        out[name] = ((value.dtype.str, value.shape, value.tobytes())
                     if isinstance(value, np.ndarray) else value)
    return out


def rows(batch: Batch) -> list[dict[str, Any]]:
    """Event by event, each column's entry (None for an optional column the batch lacks; the
    fields as the event's map of them)."""
    def entry(column: Any, index: int) -> Any:
        if isinstance(column, np.ndarray):
            return column[index].tolist()
        if isinstance(column, dict):
            return {name: values[index] for name, values in column.items()} if column else None
        return column[index] if len(column) else None
    return [{name: entry(getattr(batch, name), i) for name in COLUMNS}
            for i in range(len(batch))]


def unpacked(codec: Codec, packed: Sequence[tuple[int, bytes]]) -> list[Batch]:
    return [unpack(codec, message, partition=partition) for partition, message in packed]


def offsets(batch: Batch) -> list[int]:
    found: list[int] = batch.source_offsets.tolist()
    return found


def source_record(index: int, *, payload: str = "", key: bytes | None = None) -> SourceRecord:
    """An input record ingest accepts: a JSON event with its own id and account."""
    event = {"event_id": f"8c5e0c1e-6f0a-4d8e-9a53-{index:012x}", "event_time": NOW_MS - 1,
             "account_id": f"acct-{index % 5}", "note": payload}
    return SourceRecord(topic="p.events", partition=index % 3, offset=1_000 + index,
                        timestamp=NOW_MS - 9, key=key, value=json.dumps(event).encode(),
                        headers=list(HEADERS))


def ingested(codec: Codec, records: Sequence[SourceRecord], *, partitions: int = 6) -> Batch:
    """The batch ingest sends on: every record accepted, routed by account."""
    batch, dead = ingest_batch(records, codec=codec, dedupe=Dedupe(), now_ms=NOW_MS,
                               partitions=partitions)
    assert dead == []
    return batch


def legacy_message(codec: Codec, envelopes: Sequence[dict[str, Any]]) -> bytes:
    return codec.encode(LEGACY_BATCH_SCHEMA, {"batch_id": "b" * 32, "stage": "feature",
                                              "created_at": NOW_MS, "events": list(envelopes)})


def column_record(count: int) -> dict[str, Any]:
    """An EventColumns record built by hand, every column ``count`` long (the fields one JSON
    object per event, as EventColumns first carried them)."""
    ints = np.arange(count, dtype="<i8").tobytes()
    return {
        "batch_id": "0" * 32, "stage": "test", "created_at": NOW_MS, "count": count,
        "event_ids": [f"e{i}" for i in range(count)], "trace_ids": ["t"] * count,
        "traceparents": ["tp"] * count, "account_ids": [""] * count,
        "event_times": ints, "ingested_at": ints,
        "fields": [json.dumps({"n": i}).encode() for i in range(count)],
        "source_topics": ["p.events"] * count,
        "source_partitions": np.zeros(count, dtype="<i4").tobytes(), "source_offsets": ints,
        "source_timestamps": ints, "keys": [None] * count, "values": [b"v"] * count,
        "headers": [[] for _ in range(count)], "feature_quality": [], "feature_width": 0,
        "features": b"",
    }


# pack and unpack


def test_pack_unpack_round_trip_per_partition(codec: Codec) -> None:
    batch = batch_of(30, partitions=[i % 3 for i in range(30)], width=2)
    before = int(time.time() * 1000)
    packed = list(pack(codec, batch, stage="feature"))
    assert [partition for partition, _ in packed] == [0, 1, 2]
    for partition, message in packed:
        want = batch.take(np.flatnonzero(batch.partitions == partition))
        assert columns(unpack(codec, message, partition=partition)) == columns(want)
        record = codec.decode(message, PACK_SCHEMA)
        assert record["stage"] == "feature"
        assert before <= record["created_at"] <= int(time.time() * 1000)
        assert (record["count"], record["feature_width"]) == (10, 2)
        assert len(record["batch_id"]) == 32


def test_batch_ids_are_unique(codec: Codec) -> None:
    batch = batch_of(12, partitions=[i % 4 for i in range(12)])
    packed = list(pack(codec, batch, stage="ingest")) + list(pack(codec, batch, stage="ingest"))
    ids = {codec.decode(message, PACK_SCHEMA)["batch_id"] for _, message in packed}
    assert len(packed) == 8
    assert len(ids) == 8


def test_pack_of_nothing_yields_nothing(codec: Codec) -> None:
    assert list(pack(codec, Batch.from_envelopes([]), stage="ingest")) == []
    assert list(pack(codec, batch_of(3).take([]), stage="ingest")) == []


def test_unpack_reads_the_partition_it_is_told(codec: Codec) -> None:
    [(partition, message)] = list(pack(codec, batch_of(4, partitions=[2] * 4), stage="ingest"))
    assert partition == 2
    assert unpack(codec, message, partition=5).partitions.tolist() == [5] * 4
    assert unpack(codec, message).partitions.tolist() == [0] * 4


def test_chunks_hold_at_most_2000_events_in_order(codec: Codec) -> None:
    batch = Batch.concat([batch_of(4_500, partitions=[0] * 4_500),
                          batch_of(1, partitions=[5], start=9_999)])
    batch.headers = [[] for _ in range(len(batch))]  # small events: the count limit decides
    packed = list(pack(codec, batch, stage="ingest"))
    again = unpacked(codec, packed)
    assert MAX_BATCH_EVENTS == 2_000
    assert [(p, len(b)) for (p, _), b in zip(packed, again, strict=True)] == [
        (0, 2_000), (0, 2_000), (0, 500), (5, 1)]
    assert [o for b in again[:3] for o in offsets(b)] == list(range(4_500))
    assert offsets(again[3]) == [9_999]


def test_exactly_2000_events_make_one_message(codec: Codec) -> None:
    packed = list(pack(codec, batch_of(2_000, partitions=[1] * 2_000), stage="ingest"))
    assert len(packed) == 1
    assert len(unpack(codec, packed[0][1])) == 2_000


def test_large_events_are_chunked_under_the_broker_message_limit(codec: Codec) -> None:
    big = b"x" * 100_000
    batch = Batch.from_envelopes([envelope(i, value=big) for i in range(40)],
                                 partitions=[2] * 40)
    packed = list(pack(codec, batch, stage="ingest"))
    assert len(packed) > 1
    assert all(len(message) < BROKER_MESSAGE_LIMIT for _, message in packed)
    assert [o for b in unpacked(codec, packed) for o in offsets(b)] == list(range(40))


def test_a_huge_event_goes_out_alone(codec: Codec) -> None:
    batch = Batch.from_envelopes([envelope(0, value=b"y" * 700_000), envelope(1)])
    packed = list(pack(codec, batch, stage="ingest"))
    assert [len(b) for b in unpacked(codec, packed)] == [1, 1]
    assert 700_000 < len(packed[0][1]) < BROKER_MESSAGE_LIMIT
    assert unpack(codec, packed[0][1]).values == [b"y" * 700_000]


def test_chunking_counts_keys_and_headers(codec: Codec) -> None:
    batch = batch_of(2_000)
    batch.headers = [[{"key": "trace", "value": b"t" * 600}] for _ in range(len(batch))]
    batch.keys = [b"k" * 100] * len(batch)
    packed = list(pack(codec, batch, stage="ingest"))
    assert len(packed) > 1
    assert all(len(message) <= MAX_BATCH_BYTES for _, message in packed)
    assert sum(len(b) for b in unpacked(codec, packed)) == 2_000


def test_chunking_counts_the_fields_as_well_as_the_value(codec: Codec) -> None:
    # ingest keeps the event twice, as the original value and as the decoded fields
    records = [source_record(i, payload="z" * 100_000) for i in range(30)]
    batch = ingested(codec, records, partitions=1)
    packed = list(pack(codec, batch, stage="ingest"))
    again = unpacked(codec, packed)
    assert all(len(b) > 1 for b in again)
    assert all(len(message) <= MAX_BATCH_BYTES for _, message in packed)
    assert [o for b in again for o in offsets(b)] == [r.offset for r in records]


def test_a_batch_without_fields_counts_each_value_once(codec: Codec) -> None:
    big = b"x" * 100_000
    carrying = Batch.from_envelopes([envelope(i, value=big) for i in range(40)])
    featured = carrying.with_features(np.zeros((40, 2)), ["ok"] * 40)
    with_fields = list(pack(codec, carrying, stage="ingest"))
    without = list(pack(codec, featured, stage="feature"))
    assert all(len(message) <= MAX_BATCH_BYTES for _, message in with_fields + without)
    # the value no longer counts twice once the decoded fields are gone: fuller messages
    assert len(without) < len(with_fields)
    assert [o for b in unpacked(codec, without) for o in offsets(b)] == list(range(40))


def test_a_chunk_the_estimate_got_wrong_is_split_in_halves(codec: Codec) -> None:
    # small values but large decoded fields: the estimate, which sees the values, takes all
    # 40 events for one chunk, some 2.4 MB once encoded
    batch = batch_of(40, partitions=[3] * 40)
    batch.fields = {"n": list(range(40)),
                    "blob": [chr(ord("a") + i % 26) * 60_000 for i in range(40)]}
    assert sum(map(len, batch.values)) < 1_000
    packed = list(pack(codec, batch, stage="ingest"))
    assert len(packed) > 1
    assert sum(len(message) for _, message in packed) > 2 * SPLIT_LIMIT
    assert all(len(message) <= SPLIT_LIMIT for _, message in packed)
    assert {partition for partition, _ in packed} == {3}
    again = Batch.concat(unpacked(codec, packed))
    assert offsets(again) == list(range(40))
    assert columns(again) == columns(batch)


def test_an_event_too_large_for_a_message_on_its_own_goes_out_alone(codec: Codec) -> None:
    batch = batch_of(3)
    batch.fields = {"blob": ["s", "L" * 1_000_000, "s"]}
    packed = list(pack(codec, batch, stage="ingest"))
    again = unpacked(codec, packed)
    assert [offsets(b) for b in again] == [[0], [1], [2]]
    assert again[1].fields == {"blob": ["L" * 1_000_000]}
    assert len(packed[1][1]) > SPLIT_LIMIT  # no half to split it into
    assert all(len(message) <= SPLIT_LIMIT for _, message in (packed[0], packed[2]))


def test_a_whole_pack_holds_every_partition_in_one_message_in_order(codec: Codec) -> None:
    # the feature stage's output: inference keeps no per-account order, so one message
    batch = batch_of(30, partitions=[i % 4 for i in range(30)], width=3)
    [message] = list(pack_whole(codec, batch, stage="feature"))
    again = unpack(codec, message, partition=1)
    assert columns(again) == columns(replace(batch, partitions=np.ones(30, dtype=np.int64)))
    # split by partition instead, the same events come out in the same columns
    split = Batch.concat(unpacked(codec, list(pack(codec, batch, stage="feature"))))
    order = np.argsort(offsets(split), kind="stable")
    assert columns(replace(split.take(order), partitions=batch.partitions)) == columns(batch)


def test_a_whole_chunk_the_estimate_got_wrong_is_split_in_halves(codec: Codec) -> None:
    batch = batch_of(40, partitions=[i % 3 for i in range(40)])
    batch.fields = {"n": list(range(40)),
                    "blob": [chr(ord("a") + i % 26) * 60_000 for i in range(40)]}
    packed = list(pack_whole(codec, batch, stage="ingest"))
    assert len(packed) > 2
    assert all(len(message) <= SPLIT_LIMIT for message in packed)
    again = Batch.concat([unpack(codec, message) for message in packed])
    assert offsets(again) == list(range(40))
    assert again.fields == batch.fields


def test_unpack_of_garbage_is_a_codec_error(codec: Codec) -> None:
    with pytest.raises(CodecError):
        unpack(codec, b"\xff not a batch")


def test_a_hand_built_column_record_unpacks(codec: Codec) -> None:
    batch = unpack(codec, codec.encode(BATCH_SCHEMA, column_record(3)), partition=1)
    assert batch.event_ids == ["e0", "e1", "e2"]
    assert batch.event_times.tolist() == [0, 1, 2]
    assert batch.features.shape == (3, 0)
    assert batch.fields == {"n": [0, 1, 2]}  # the per-event objects, as columns
    assert batch.records() == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert batch.feature_quality == []


DISAGREEING_COLUMNS: list[tuple[str, Any]] = [
    ("event_ids", ["e0", "e1"]),
    ("values", [b"v"] * 4),
    ("headers", [[]]),
    ("keys", []),
    ("fields", [b'{"n": 0}']),  # optional, so empty would do; one of three does not
    ("feature_quality", ["ok", "ok"]),
    ("event_times", np.arange(2, dtype="<i8").tobytes()),
    ("source_partitions", b"\x00" * 7),  # not a whole number of int32s
    ("features", b"\x00" * 8),  # width 0: no bytes at all
    ("feature_width", 2),  # but no features
]


@pytest.mark.parametrize(("column", "wrong"),
                         [pytest.param(c, w, id=c) for c, w in DISAGREEING_COLUMNS])
def test_columns_that_disagree_in_length_are_a_bad_batch(codec: Codec, column: str,
                                                          wrong: Any) -> None:
    record = column_record(3)
    record[column] = wrong
    message = codec.encode(BATCH_SCHEMA, record)
    with pytest.raises(BadBatchError) as raised:
        unpack(codec, message)
    assert raised.value.code == "BAD_BATCH"
    assert isinstance(raised.value, CodecError)


# the legacy per-event format


def test_a_legacy_event_batch_decodes_into_an_equal_batch(codec: Codec) -> None:
    envelopes = [envelope(i, features=[float(i), -0.0, 1e300], quality="ok") for i in range(5)]
    batch = unpack(codec, legacy_message(codec, envelopes), partition=4)
    assert columns(batch) == columns(Batch.from_envelopes(envelopes, partitions=[4] * 5))
    assert batch.features.shape == (5, 3)
    assert batch.features[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert batch.feature_quality == ["ok"] * 5
    assert batch.partitions.tolist() == [4] * 5
    # the same events in the columnar format decode alike
    [(_, message)] = list(pack(codec, Batch.from_envelopes(envelopes), stage="feature"))
    assert columns(unpack(codec, message, partition=4)) == columns(batch)


def repacked(codec: Codec, message: bytes, **changes: Any) -> bytes:
    """``message`` (an EventPack) with its MessagePack column map changed: a key set to None is
    left out."""
    record = codec.decode(message, PACK_SCHEMA)
    sent = msgspec.msgpack.decode(record["columns"])
    for key, value in changes.items():
        if value is None:
            del sent[key]
        else:
            sent[key] = value
    return codec.encode(PACK_SCHEMA, {**record, "columns": msgspec.msgpack.encode(sent)})


def test_an_event_pack_with_fields_per_event_still_unpacks(codec: Codec) -> None:
    sources = [source_record(i) for i in range(4)]
    batch = ingested(codec, sources, partitions=1)
    [(_, message)] = list(pack(codec, batch, stage="ingest"))
    # as a version before wrote it: one MessagePack map per event, no field columns
    old = repacked(codec, message, field_columns=None, fields=[
        msgspec.msgpack.encode(json.loads(source.value)) for source in sources])
    again = unpack(codec, old, partition=2)
    assert columns(again) == columns(unpack(codec, message, partition=2))
    assert again.fields == batch.fields
    assert again.records() == [json.loads(source.value) for source in sources]
    # events with different fields: None where one lacks a field
    maps = [{"a": 1, "b": "x"}, {"a": 2}, {"c": [1, 2]}, {"b": "y", "a": 4}]
    uneven = repacked(codec, message, field_columns=None,
                      fields=[msgspec.msgpack.encode(fields) for fields in maps])
    assert unpack(codec, uneven).fields == {
        "a": [1, 2, None, 4], "b": ["x", None, None, "y"], "c": [None, None, [1, 2], None]}
    # a version before, after the feature stage: no fields at all
    featured = batch.with_features(np.ones((4, 2)), ["ok"] * 4)
    [(_, message)] = list(pack(codec, featured, stage="feature"))
    bare = unpack(codec, repacked(codec, message, field_columns=None, fields=[]))
    assert columns(bare) == columns(unpack(codec, message))
    assert bare.fields == {}


def test_a_legacy_batch_before_features_has_width_zero(codec: Codec) -> None:
    envelopes = [envelope(i) for i in range(3)]
    batch = unpack(codec, legacy_message(codec, envelopes))
    assert columns(batch) == columns(Batch.from_envelopes(envelopes))
    assert batch.features.shape == (3, 0)
    assert batch.feature_quality == []
    assert [r["n"] for r in batch.records()] == [0, 1, 2]


def test_from_envelopes_with_mixed_feature_vector_sizes_is_a_bad_batch(codec: Codec) -> None:
    mixed = [envelope(0, features=[1.0, 2.0]), envelope(1, features=[1.0])]
    with pytest.raises(BadBatchError, match="mixed sizes"):
        Batch.from_envelopes(mixed)
    with pytest.raises(BadBatchError, match="mixed sizes"):
        unpack(codec, legacy_message(codec, mixed))
    ragged = envelope(0)
    ragged["feature_vector"] = b"\x00" * 12  # one and a half float64s
    with pytest.raises(BadBatchError):
        Batch.from_envelopes([ragged])


def test_from_envelopes_defaults() -> None:
    bare = envelope(7)
    del bare["feature_vector"], bare["account_id"], bare["feature_quality"]
    batch = Batch.from_envelopes([bare])
    assert batch.account_ids == [""]
    assert batch.partitions.tolist() == [0]
    assert batch.features.shape == (1, 0)
    assert batch.feature_quality == []
    empty = Batch.from_envelopes([])
    assert len(empty) == 0
    assert empty.features.shape == (0, 0)


# the input record, ages and fields


def test_source_is_the_input_record(codec: Codec) -> None:
    original = source_record(0, key=None)
    batch = ingested(codec, [original])
    assert batch.source(0) == original
    assert batch.source(0).headers == HEADERS  # in order, None kept
    [(partition, message)] = list(pack(codec, batch, stage="ingest"))
    assert unpack(codec, message, partition=partition).source(0) == original


def test_every_source_survives_routing_to_partitions(codec: Codec) -> None:
    records = [source_record(i, key=f"k{i}".encode() if i % 2 else None) for i in range(20)]
    batch = ingested(codec, records)
    assert [batch.source(i) for i in range(len(batch))] == records
    again = unpacked(codec, list(pack(codec, batch, stage="ingest")))
    assert len(again) > 1
    sources = [b.source(i) for b in again for i in range(len(b))]
    assert sorted(sources, key=lambda s: s.offset) == records


def test_ages_are_milliseconds_since_ingest() -> None:
    now = int(time.time() * 1000)
    batch = Batch.from_envelopes([envelope(0, ingested_at=now - 1_000),
                                  envelope(1, ingested_at=now - 5)])
    ages = batch.ages_ms()
    assert len(ages) == 2
    assert 1_000 <= ages[0] < 61_000
    assert 5 <= ages[1] < 60_005
    assert ages[0] - ages[1] == pytest.approx(995)
    assert Batch.from_envelopes([]).ages_ms() == []


def test_records_are_the_parsed_fields(codec: Codec) -> None:
    sources = [source_record(i) for i in range(3)]
    batch = ingested(codec, sources, partitions=1)
    records = batch.records()
    assert [r["event_id"] for r in records] == batch.event_ids
    assert [r["account_id"] for r in records] == ["acct-0", "acct-1", "acct-2"]
    assert records == [json.loads(source.value) for source in sources]
    assert batch.by_field() == field_columns(records)
    assert batch.by_field()["account_id"] == ["acct-0", "acct-1", "acct-2"]
    assert Batch.from_envelopes([]).records() == []
    assert Batch.from_envelopes([]).by_field() == {}


def test_records_of_a_batch_without_fields_is_a_bad_batch() -> None:
    featured = batch_of(2).with_features(np.zeros((2, 1)), ["ok", "ok"])
    with pytest.raises(BadBatchError, match="no longer carries the event fields"):
        featured.records()
    with pytest.raises(BadBatchError, match="no longer carries the event fields"):
        featured.by_field()
    assert featured.take([]).records() == []
    assert featured.take([]).by_field() == {}


def test_field_columns_transposes_records() -> None:
    same: list[dict[str, Any]] = [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}, {"a": 3, "b": None}]
    assert field_columns(same) == {"a": [1, 2, 3], "b": ["x", "y", None]}
    assert field_columns([{"a": 1}, {"a": 2}]) == {"a": [1, 2]}
    assert field_columns([]) == {}
    assert field_columns([{}, {}]) == {}
    # other orders, other fields and the same number of other fields: None where one lacks it
    assert field_columns([{"a": 1, "b": 2}, {"b": 3, "a": 4}]) == {"a": [1, 4], "b": [2, 3]}
    assert field_columns([{"a": 1, "b": 2}, {"a": 3, "c": 4}]) == {
        "a": [1, 3], "b": [2, None], "c": [None, 4]}
    assert field_columns([{"a": 1}, {"a": 2, "b": 3}, {}]) == {
        "a": [1, 2, None], "b": [None, 3, None]}


def test_events_with_different_fields_fill_in_none(codec: Codec) -> None:
    plain = envelope(0)
    extra = {**envelope(1), "fields": json.dumps({"n": 1, "extra": [1.5, None]}).encode()}
    batch = Batch.from_envelopes([plain, extra])
    assert batch.fields == {"n": [0, 1], "account_id": ["acct-0", None],
                            "extra": [None, [1.5, None]]}
    assert batch.records() == [{"n": 0, "account_id": "acct-0", "extra": None},
                               {"n": 1, "account_id": None, "extra": [1.5, None]}]
    [(_, message)] = list(pack(codec, batch, stage="ingest"))
    assert columns(unpack(codec, message)) == columns(batch)


# with_features


def payload_nan() -> float:
    """A quiet NaN with a payload, which only a bit-for-bit copy keeps."""
    value: float = np.array([0x7FF8_0000_DEAD_BEEF], dtype=np.uint64).view(np.float64)[0]
    return value


def test_with_features_round_trips_float64s_bit_for_bit(codec: Codec) -> None:
    matrix = np.array([
        [-0.0, np.nan, 1.7976931348623157e308],
        [5e-324, -np.inf, 123_456_789.123_456_789],
        [np.inf, payload_nan(), -1e-300],
    ], dtype=np.float64)
    batch = batch_of(3, partitions=[1, 1, 1])
    featured = batch.with_features(matrix, ["ok", "missing_amount", "ok"])
    assert featured.fields == {}
    assert batch.fields == {"n": [0, 1, 2],  # the original batch is untouched
                            "account_id": ["acct-0", "acct-1", "acct-2"]}
    assert featured.feature_quality == ["ok", "missing_amount", "ok"]
    assert featured.features.tobytes() == matrix.tobytes()
    [(partition, message)] = list(pack(codec, featured, stage="feature"))
    again = unpack(codec, message, partition=partition)
    assert again.features.tobytes() == matrix.tobytes()
    assert bool(np.signbit(again.features[0, 0]))
    assert again.fields == {}
    assert columns(again) == columns(featured)
    sent = msgspec.msgpack.decode(codec.decode(message, PACK_SCHEMA)["columns"])
    assert sent["field_columns"] == {}
    assert "fields" not in sent  # the per-event column of a version before is not written


def test_with_features_of_a_strided_matrix_sends_its_rows(codec: Codec) -> None:
    wide = np.arange(12, dtype=np.float64).reshape(3, 4)
    strided = wide[:, ::2]  # columns 0 and 2, not contiguous
    featured = batch_of(3).with_features(strided, ["ok"] * 3)
    [(_, message)] = list(pack(codec, featured, stage="feature"))
    assert unpack(codec, message).features.tolist() == [[0.0, 2.0], [4.0, 6.0], [8.0, 10.0]]


# take and concat


def test_take_picks_events_in_the_given_order() -> None:
    batch = batch_of(5, partitions=[0, 1, 2, 3, 4], width=2)
    picked = batch.take([3, 0, 4])
    assert rows(picked) == [rows(batch)[i] for i in (3, 0, 4)]
    assert picked.event_ids == [batch.event_ids[i] for i in (3, 0, 4)]
    assert picked.partitions.tolist() == [3, 0, 4]
    assert picked.features.tolist() == [[3.0, 3.125], [0.0, 0.125], [4.0, 4.125]]
    assert picked.source(1) == batch.source(0)
    assert rows(batch.take(np.array([4, 4]))) == [rows(batch)[4]] * 2


def test_take_of_every_event_in_order_is_the_batch_itself() -> None:
    batch = batch_of(4)
    assert batch.take(range(4)) is batch
    assert batch.take(np.arange(4)) is batch
    assert batch.take([0, 1, 3, 2]) is not batch
    empty = Batch.from_envelopes([])
    assert empty.take([]) is empty


def test_take_of_nothing_is_an_empty_batch_of_the_same_width() -> None:
    batch = batch_of(4, width=3)
    none = batch.take([])
    assert len(none) == 0
    assert none.features.shape == (0, 3)
    assert all(len(getattr(none, name)) == 0 for name in COLUMNS if name != "fields")
    assert none.fields == {"n": [], "account_id": []}  # every field, no event
    assert none.records() == []


def test_take_keeps_a_missing_optional_column_missing() -> None:
    featured = batch_of(3).with_features(np.ones((3, 2)), ["ok", "a", "b"])
    picked = featured.take([2, 1])
    assert picked.fields == {}
    assert picked.feature_quality == ["b", "a"]


def test_concat_keeps_order() -> None:
    first = batch_of(3, partitions=[1, 1, 1], width=2)
    second = batch_of(2, partitions=[2, 2], width=2, start=3)
    joined = Batch.concat([first, second])
    assert rows(joined) == rows(first) + rows(second)
    assert offsets(joined) == [0, 1, 2, 3, 4]
    assert joined.fields["n"] == [0, 1, 2, 3, 4]
    assert joined.partitions.tolist() == [1, 1, 1, 2, 2]
    assert joined.features.shape == (5, 2)


def test_concat_of_one_or_none() -> None:
    only = batch_of(2)
    assert Batch.concat([only]) is only
    nothing = Batch.concat([])
    assert len(nothing) == 0
    assert nothing.features.shape == (0, 0)


def test_concat_of_optional_columns() -> None:
    plain = batch_of(2)
    featured = [batch_of(2, start=s).with_features(np.ones((2, 1)), ["ok", "x"]) for s in (0, 2)]
    both = Batch.concat(featured)
    assert both.fields == {}
    assert both.feature_quality == ["ok", "x", "ok", "x"]
    with_empty = Batch.concat([plain, Batch.from_envelopes([]), batch_of(1, start=2)])
    assert with_empty.fields == {"n": [0, 1, 2], "account_id": ["acct-0", "acct-1", "acct-2"]}
    assert [r["n"] for r in with_empty.records()] == [0, 1, 2]
    # a legacy batch still carries its fields after the feature stage; the whole has none
    mixed = Batch.concat([plain.with_features(np.ones((2, 1)), ["ok", "ok"]),
                          batch_of(1, width=1)])
    assert (len(mixed), mixed.fields) == (3, {})
    with pytest.raises(BadBatchError, match="fields"):
        mixed.records()


def test_concat_of_batches_with_different_fields_fills_in_none() -> None:
    first = batch_of(2)
    other = {**envelope(2), "fields": json.dumps({"n": 2, "late": "x"}).encode()}
    second = Batch.from_envelopes([other, {**envelope(3), "fields": b'{"late": "y"}'}])
    joined = Batch.concat([first, second, batch_of(1, start=4)])
    assert joined.fields == {
        "n": [0, 1, 2, None, 4],
        "account_id": ["acct-0", "acct-1", None, None, "acct-0"],
        "late": [None, None, "x", "y", None],
    }
    assert [record["late"] for record in joined.records()] == [None, None, "x", "y", None]
    assert joined.take([3]).fields == {"n": [None], "account_id": [None], "late": ["y"]}


def test_concat_ignores_empty_batches_whatever_their_width() -> None:
    joined = Batch.concat([batch_of(0, width=5), batch_of(2, width=2), batch_of(0)])
    assert joined.features.shape == (2, 2)


def test_concat_of_different_feature_widths_is_a_bad_batch() -> None:
    with pytest.raises(BadBatchError, match="feature widths"):
        Batch.concat([batch_of(2, width=2), batch_of(2, width=3)])


# Kafka's default partitioner


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


def test_partition_for_is_cached_per_key_and_partition_count() -> None:
    partition_for.cache_clear()
    first = partition_for("acct-cached", 6)
    assert partition_for("acct-cached", 6) == first
    expected = DefaultPartitioner()(b"acct-cached", list(range(7)), [])
    assert partition_for("acct-cached", 7) == expected
    info = partition_for.cache_info()
    assert (info.hits, info.misses) == (1, 2)


def test_a_pack_whose_columns_have_the_wrong_types_is_a_bad_batch(codec: Codec) -> None:
    [(_, message)] = list(pack(codec, batch_of(3), stage="ingest"))
    record = codec.decode(message, PACK_SCHEMA)
    columns_map = msgspec.msgpack.decode(record["columns"])
    columns_map["event_ids"] = [1, 2, 3]
    bad = codec.encode(PACK_SCHEMA, {**record, "columns": msgspec.msgpack.encode(columns_map)})
    with pytest.raises(BadBatchError, match="unreadable internal batch"):
        unpack(codec, bad)
    torn = codec.encode(PACK_SCHEMA, {**record, "columns": b"\xc1"})
    with pytest.raises(BadBatchError, match="unreadable internal batch"):
        unpack(codec, torn)
    for wrong in ([[0], [1], [2]], {"n": 5}):
        with pytest.raises(BadBatchError, match="unreadable internal batch"):
            unpack(codec, repacked(codec, message, field_columns=wrong))


def test_a_field_column_of_another_length_is_a_bad_batch(codec: Codec) -> None:
    [(_, message)] = list(pack(codec, batch_of(3), stage="ingest"))
    short = repacked(codec, message, field_columns={"n": [0, 1, 2], "account_id": ["a", "b"]})
    with pytest.raises(BadBatchError, match="field account_id has 2 entries for 3 events"):
        unpack(codec, short)
    old = repacked(codec, message, field_columns=None, fields=[msgspec.msgpack.encode({"n": 0})])
    with pytest.raises(BadBatchError, match="field n has 1 entries for 3 events"):
        unpack(codec, old)


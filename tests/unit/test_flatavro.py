"""Column-by-column Avro bodies: byte for byte what fastavro writes, or None to let it write."""

from __future__ import annotations

import math
import random
import struct
import uuid
from io import BytesIO
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_writer

from tidegate.codec import Codec, schema
from tidegate.errors import EncodeError
from tidegate.flatavro import FlatWriter

pytestmark = pytest.mark.unit

EVERY_KIND = {
    "type": "record", "name": "Every", "namespace": "test",
    "fields": [
        {"name": "s", "type": "string"}, {"name": "b", "type": "bytes"},
        {"name": "i", "type": "int"}, {"name": "l", "type": "long"},
        {"name": "t", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "f", "type": "float"}, {"name": "d", "type": "double"},
        {"name": "ok", "type": "boolean"},
        {"name": "ns", "type": ["null", "string"], "default": None},
        {"name": "nl", "type": ["null", "long"], "default": None},
        {"name": "nd", "type": ["null", "double"], "default": None},
    ],
}
TEXTS = ["", "a", "fraud-primary:v1", "é", "日本語", "x" * 200, "emoji 🙂", "\x00nul"]
LONGS = [0, 1, -1, 63, 64, -64, -65, 2**31 - 1, -(2**31), 2**63 - 1, -(2**63), 300, -300]


def _fastavro(raw: dict[str, Any], records: list[dict[str, Any]], prefix: bytes) -> list[bytes]:
    parsed = parse_schema(raw)
    out = []
    for record in records:
        buffer = BytesIO(prefix)
        buffer.seek(len(prefix))
        schemaless_writer(buffer, parsed, record)
        out.append(buffer.getvalue())
    return out


def _every(rng: random.Random) -> dict[str, Any]:
    def maybe(value: Any) -> Any:
        return None if rng.random() < 0.3 else value
    return {
        "s": rng.choice(TEXTS), "b": rng.randbytes(rng.randrange(0, 140)),
        "i": rng.randrange(-(2**31), 2**31), "l": rng.choice([*LONGS, rng.getrandbits(62)]),
        "t": 1_796_394_896_000 + rng.randrange(10**6), "f": rng.choice([0.5, -2.25, 1e-3, 3]),
        "d": rng.choice([0.0, -0.0, 1.5, math.inf, -math.inf, 1e308, 5e-324, rng.random(), 7]),
        "ok": rng.random() < 0.5, "ns": maybe(rng.choice(TEXTS)),
        "nl": maybe(rng.choice(LONGS)), "nd": maybe(rng.random()),
    }


@pytest.mark.parametrize("seed", range(5))
def test_every_kind_writes_exactly_the_bytes_fastavro_writes(seed: int) -> None:
    rng = random.Random(seed)
    records = [_every(rng) for _ in range(rng.choice([1, 7, 500]))]
    writer = FlatWriter.compile(EVERY_KIND)
    assert writer is not None
    for prefix in (b"", b"\xc3\x01" + bytes(range(8))):
        assert writer.write_all(records, prefix) == _fastavro(EVERY_KIND, records, prefix)


def test_nan_keeps_its_bits_and_an_empty_batch_is_empty() -> None:
    writer = FlatWriter.compile(EVERY_KIND)
    assert writer is not None
    record = _every(random.Random(1)) | {"d": math.nan, "nd": None, "ns": None, "nl": None}
    (body,) = writer.write_all([record]) or [b""]
    assert body == _fastavro(EVERY_KIND, [record], b"")[0]
    assert writer.write_all([]) == []


def test_the_predictions_schema_is_flat_and_written_the_same() -> None:
    avro = schema("tidegate.Prediction")
    assert avro.flat is not None
    rng = random.Random(3)
    records = [{"event_id": str(uuid.uuid4()), "trace_id": uuid.uuid4().hex,
                "account_id": None if i % 5 == 0 else f"acct-{i}", "score": rng.random(),
                "label": i % 2 == 0, "threshold": 0.25, "model_version": "fraud-primary:v1",
                "path": "primary", "latency_ms": 12.5 + i, "event_time": 1_796_394_896_000 + i,
                "predicted_at": 1_796_394_897_000, "feature_quality": "ok", "shed": False}
               for i in range(300)]
    assert avro.flat.write_all(records, b"P") == [b"P" + avro.write(r) for r in records]


@pytest.mark.parametrize("change", [
    {"l": True},  # a bool where a long is due
    {"l": 2**63},  # beyond 64 bits
    {"i": 2**31},  # beyond an int
    {"d": "1.5"},  # a string for a double
    {"s": b"bytes"},  # bytes for a string
    {"t": 1.5},  # a float for a timestamp
])
def test_a_value_it_does_not_take_as_it_is_is_left_to_fastavro(change: dict[str, Any]) -> None:
    writer = FlatWriter.compile(EVERY_KIND)
    assert writer is not None
    records = [_every(random.Random(2)), _every(random.Random(3)) | change]
    assert writer.write_all(records) is None
    missing = _every(random.Random(4))
    del missing["s"]
    assert writer.write_all([missing]) is None


def test_nested_and_named_schemas_are_not_flat() -> None:
    for field_type in ({"type": "array", "items": "long"}, {"type": "map", "values": "string"},
                       ["null", "string", "long"], ["string", "null"],
                       {"type": "enum", "name": "E", "symbols": ["A"]}, "test.Other",
                       {"type": "int", "logicalType": "date"}):
        raw = {"type": "record", "name": "R", "fields": [{"name": "x", "type": field_type}]}
        assert FlatWriter.compile(raw) is None, field_type
    assert schema("tidegate.HealthEvent").flat is None  # maps and arrays: fastavro writes it


def test_a_bad_record_still_fails_with_fastavro_s_one_line_error() -> None:
    encode = Codec().batch_encoder("tidegate.Prediction", topic="predictions")
    good = {"event_id": "e", "trace_id": "t", "account_id": None, "score": 0.5, "label": True,
            "threshold": 0.5, "model_version": "m", "path": "primary", "latency_ms": 1.0,
            "event_time": 1, "predicted_at": 2, "feature_quality": "ok", "shed": False}
    assert len(encode([good, good])) == 2
    with pytest.raises(EncodeError, match="record 1"):
        encode([good, {**good, "score": "high"}])
    assert struct.calcsize("<d") == 8


@pytest.mark.parametrize("seed", range(3))
def test_records_given_by_field_frame_as_the_records_do(seed: int) -> None:
    rng = random.Random(seed)
    records = [_every(rng) for _ in range(rng.choice([1, 9, 300]))]
    columns = {name: [record[name] for record in records] for name in records[0]}
    writer = FlatWriter.compile(EVERY_KIND)
    assert writer is not None
    assert writer.write_columns(columns, len(records)) == writer.write_all(records)
    assert writer.write_columns({**columns, "s": [*columns["s"][:-1], None]},
                                len(records)) is None  # fastavro decides a bad value
    assert writer.write_columns({k: v for k, v in columns.items() if k != "s"},
                                len(records)) is None


def test_the_prediction_columns_encoder_frames_as_the_batch_encoder() -> None:
    codec = Codec()
    by_record = codec.batch_encoder("tidegate.Prediction", topic="predictions")
    by_field = codec.columns_encoder("tidegate.Prediction", topic="predictions")
    good = {"event_id": "e", "trace_id": "t", "account_id": None, "score": 0.5, "label": True,
            "threshold": 0.5, "model_version": "m", "path": "primary", "latency_ms": 1.0,
            "event_time": 1, "predicted_at": 2, "feature_quality": "ok", "shed": False}
    records = [good, {**good, "event_id": "f", "account_id": "acct-1", "score": 0.25}]
    columns = {name: [record[name] for record in records] for name in good}
    assert by_field(columns, 2) == by_record(records)
    # a value the column path refuses: fastavro frames the records, or refuses as before
    with pytest.raises(EncodeError, match="record 1"):
        by_field({**columns, "score": [0.5, "high"]}, 2)


def test_the_codec_benchmark_frames_the_same_bytes_both_ways() -> None:
    from tidegate.cli.codecbench import measure_prediction_framing, render_framing

    report = measure_prediction_framing(records=200, rounds=1)
    assert report["identical"] is True and report["records"] == 200
    assert report["columns_us"] > 0 and report["fastavro_us"] > 0
    assert "identical bytes: yes" in render_framing(report)

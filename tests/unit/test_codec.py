"""The codec: both Avro framings, JSON, detection, schema resolution and every error code."""

from __future__ import annotations

import importlib.resources
import json
import math
import socket
import struct
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.unit.schema_registry_stub import StubRegistry
from tidegate import codec
from tidegate.codec import (
    CONFLUENT_MAGIC,
    SINGLE_OBJECT_MAGIC,
    AvroSchema,
    Codec,
    SchemaRegistryClient,
)
from tidegate.errors import (
    CodecError,
    ConfigError,
    EncodeError,
    SchemaRegistryRejectedError,
    SchemaRegistryUnavailableError,
    TidegateError,
)

pytestmark = pytest.mark.unit

T0 = 1_700_000_000_000

ENVELOPE: dict[str, Any] = {
    "event_id": "8c5e0c1e-6f0a-4d8e-9a53-0c3f1c7b2a11",
    "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "event_time": T0,
    "ingested_at": T0 + 5,
    "source_topic": "tidegate.events",
    "source_partition": 2,
    "source_offset": 12345,
    "source_timestamp": T0 + 1,
    "key": b"acct-1",
    "value": b'{"event_id": "8c5e0c1e"}',
    "headers": [{"key": "origin", "value": b"pos"}, {"key": "empty", "value": None}],
    "fields": b'{"amount": "12.50"}',
    "features": [1.5, 0.0, -3.25],
    "feature_quality": "ok",
    "feature_vector": struct.pack("<3d", 1.5, 0.0, -3.25),
    "account_id": "acct-1",
}

SAMPLES: dict[str, dict[str, Any]] = {
    "tidegate.example.CardTransaction": {
        "event_id": "8c5e0c1e-6f0a-4d8e-9a53-0c3f1c7b2a11", "event_time": T0,
        "account_id": "acct-1", "merchant_id": "m-9", "merchant_category": "grocery",
        "amount": 12.5, "currency": "EUR", "country": "DE", "channel": "pos",
        "card_present": True, "entry_mode": "chip", "device_id": None, "ip_address": "10.0.0.1",
        "latitude": 52.52, "longitude": None, "customer_age": 41, "account_age_days": 800,
        "previous_declines_24h": 0, "description": "Grüße, café",
    },
    "tidegate.Prediction": {
        "event_id": "e1", "trace_id": "t1", "account_id": None, "score": 0.93, "label": True,
        "threshold": 0.5, "model_version": "fraud-3", "path": "fallback", "latency_ms": 4.25,
        "event_time": T0, "predicted_at": T0 + 40, "feature_quality": "stale_state,imputed",
        "shed": False,
    },
    "tidegate.HealthEvent": {
        "stage": "validation", "instance": "host-1:4242", "time": T0, "interval_seconds": 10.0,
        "records_in": 5000, "records_out": 4990, "dead_lettered": 10,
        "dead_letters_by_code": {"RULE_RANGE": 7, "TYPE": 3}, "errors": 12,
        "latency_p50_ms": 1.5, "latency_p95_ms": 4.0, "latency_p99_ms": 9.75, "lag": 120,
        "mode": "normal", "breakers": {"dead_letter_rate": "closed"}, "paused": False,
        "pause_reason": None, "model_version": None, "extra": {"batch": "512"},
    },
    "tidegate.ControlCommand": {
        "id": "c-1", "target": "inference", "action": "degrade", "parameters": {"to": "fallback"},
        "reason": "primary model slow", "issuer": "monitoring", "time": T0,
        "key_id": "k1", "signature": "ab" * 32,
    },
    "tidegate.Label": {"event_id": "e1", "label": False, "labelled_at": T0},
    "tidegate.Alert": {
        "id": "a-1", "key": "validation:dead_letter_rate", "severity": "critical",
        "stage": "validation", "kind": "dead_letter_rate", "message": "41% dead-lettered",
        "status": "firing", "time": T0, "details": {"rate": "0.41", "threshold": "0.2"},
    },
    "tidegate.internal.EventBatch": {
        "batch_id": "b-1", "stage": "ingest", "created_at": T0, "events": [ENVELOPE, ENVELOPE],
    },
    "tidegate.internal.EventColumns": {
        "batch_id": "b-2", "stage": "feature", "created_at": T0, "count": 2,
        "event_ids": ["e-1", "e-2"], "trace_ids": ["t1", "t2"],
        "traceparents": ["00-t1-s1-01", "00-t2-s2-01"], "account_ids": ["a-1", ""],
        "event_times": struct.pack("<2q", T0, T0 + 1), "ingested_at": struct.pack("<2q", T0, T0),
        "fields": [], "source_topics": ["events", "events"],
        "source_partitions": struct.pack("<2i", 0, 5), "source_offsets": struct.pack("<2q", 7, 8),
        "source_timestamps": struct.pack("<2q", -1, T0), "keys": [None, b"k"],
        "values": [b"{}", b"\x00\x01"], "headers": [[], [{"key": "h", "value": None}]],
        "feature_quality": ["ok", "no_state"], "feature_width": 1,
        "features": struct.pack("<2d", 0.5, -3.25),
    },
    "tidegate.internal.EventPack": {
        "batch_id": "b-3", "stage": "ingest", "created_at": T0, "count": 1, "feature_width": 0,
        "features": b"", "columns": b"\x80",
    },
}  # fmt: skip

CARD_FIELDS = [
    "event_id", "event_time", "account_id", "merchant_id", "merchant_category", "amount",
    "currency", "country", "channel", "card_present", "entry_mode", "device_id", "ip_address",
    "latitude", "longitude", "customer_age", "account_age_days", "previous_declines_24h",
    "description",
]  # fmt: skip


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[StubRegistry]:
    """A schema registry speaking real HTTP on localhost, never through a proxy."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with StubRegistry() as stub:
        yield stub


def _code_of(call: Any, *args: Any) -> str:
    with pytest.raises(CodecError) as caught:
        call(*args)
    return str(caught.value.code)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- schemas -------------------------------------------------------------------------------------


def test_every_shipped_schema_is_loaded_by_full_name() -> None:
    folder = importlib.resources.files("tidegate") / "schemas"
    shipped = [json.loads(entry.read_text("utf-8")) for entry in folder.iterdir()]
    assert sorted(f"{raw['namespace']}.{raw['name']}" for raw in shipped) == sorted(SAMPLES)
    assert set(SAMPLES) <= set(codec.schema_names())


def test_card_transaction_has_the_contracted_fields_in_order() -> None:
    raw = codec.schema("tidegate.example.CardTransaction").raw
    assert [field["name"] for field in raw["fields"]] == CARD_FIELDS
    assert all(field.get("doc") for field in raw["fields"])
    nullable = [f for f in raw["fields"] if isinstance(f["type"], list)]
    assert nullable and all(f["type"][0] == "null" and f["default"] is None for f in nullable)


def test_no_schema_uses_enums_so_unknown_categories_reach_validation() -> None:
    for name in SAMPLES:
        assert '"enum"' not in json.dumps(codec.schema(name).raw), name


def test_fingerprint_is_the_little_endian_crc_64_avro_of_the_spec() -> None:
    # Test vector from the Avro specification's schema-tests: an empty record named foo.
    empty = AvroSchema.from_json({"type": "record", "name": "foo", "fields": []})
    assert empty.fingerprint == struct.pack("<q", -4824392279771201922)


# --- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_single_object_round_trip(name: str) -> None:
    data = codec.encode(name, SAMPLES[name])
    assert data[:2] == SINGLE_OBJECT_MAGIC
    assert data[2:10] == codec.schema(name).fingerprint
    assert codec.decode(data) == SAMPLES[name]
    assert codec.decode_any(data) == ("avro", SAMPLES[name])


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_confluent_round_trip_through_a_registry(name: str, registry: StubRegistry) -> None:
    data = Codec(registry_url=registry.url).encode(name, SAMPLES[name], topic="shop.events")
    schema_id = int.from_bytes(data[1:5], "big")
    assert data[:1] == CONFLUENT_MAGIC
    assert registry.subjects == {"shop.events-value": [schema_id]}
    reader = Codec(registry_url=registry.url)  # knows nothing yet: must fetch the id
    assert reader.decode_any(data) == ("confluent", SAMPLES[name])
    assert ("GET", f"/schemas/ids/{schema_id}") in registry.requests


def test_body_round_trip_without_framing() -> None:
    batch = SAMPLES["tidegate.internal.EventBatch"]
    body = codec.encode_body("tidegate.internal.EventBatch", batch)
    assert body[:2] != SINGLE_OBJECT_MAGIC
    assert codec.decode_body("tidegate.internal.EventBatch", body) == batch


def test_timestamps_accept_datetimes_and_decode_to_epoch_millis() -> None:
    when = datetime(2024, 1, 1, tzinfo=UTC)
    label = {"event_id": "e1", "label": True, "labelled_at": when}
    decoded = codec.decode(codec.encode("tidegate.Label", label))
    assert decoded["labelled_at"] == int(when.timestamp() * 1000)


def test_encoder_hoists_the_lookups_and_frames_like_encode() -> None:
    to_bytes = Codec().encoder("tidegate.Label")
    label = SAMPLES["tidegate.Label"]
    assert to_bytes(label) == codec.encode("tidegate.Label", label)


def test_json_is_decoded_with_the_types_as_sent() -> None:
    fmt, record = codec.decode_any(b' {"amount": "12.50", "customer_age": 41.5, "x": NaN}')
    assert fmt == "json"
    assert record["amount"] == "12.50"
    assert record["customer_age"] == 41.5
    assert math.isnan(record["x"])


def test_registry_ids_and_schemas_are_cached(registry: StubRegistry) -> None:
    writer = Codec(registry_url=registry.url)
    first = writer.encode("tidegate.Label", SAMPLES["tidegate.Label"], topic="t")
    writer.encode("tidegate.Label", SAMPLES["tidegate.Label"], topic="t")
    reader = Codec(registry_url=registry.url)
    reader.decode(first)
    reader.decode(first)
    assert [method for method, _ in registry.requests] == ["POST", "GET"]


def test_registry_credentials_go_in_a_header_not_the_url(registry: StubRegistry) -> None:
    client = SchemaRegistryClient(registry.url.replace("http://", "http://ops:s%40cret@"))
    client.register("t-value", codec.schema("tidegate.Label"))
    assert registry.authorizations == ["Basic b3BzOnNAY3JldA=="]  # base64("ops:s@cret")
    assert "cret" not in client.url


# --- schema resolution ---------------------------------------------------------------------------


def _older_prediction() -> dict[str, Any]:
    raw: dict[str, Any] = json.loads(json.dumps(codec.schema("tidegate.Prediction").raw))
    raw["fields"] = [f for f in raw["fields"] if f["name"] != "shed"]
    return raw


def test_single_object_from_an_older_writer_is_read_into_the_current_schema() -> None:
    old = codec.add_schema(_older_prediction(), current=False)
    record = {k: v for k, v in SAMPLES["tidegate.Prediction"].items() if k != "shed"}
    data = old.write(record, SINGLE_OBJECT_MAGIC + old.fingerprint)
    assert codec.schema("tidegate.Prediction").fingerprint != old.fingerprint
    assert codec.decode(data) == {**record, "shed": False}


def test_confluent_from_an_older_writer_is_read_into_the_current_schema(
    registry: StubRegistry,
) -> None:
    old = AvroSchema.from_json(_older_prediction())
    schema_id = registry.add(json.dumps(old.raw))
    record = {k: v for k, v in SAMPLES["tidegate.Prediction"].items() if k != "shed"}
    data = old.write(record, CONFLUENT_MAGIC + schema_id.to_bytes(4, "big"))
    assert Codec(registry_url=registry.url).decode(data) == {**record, "shed": False}


def test_add_schema_from_a_file_and_the_new_version_becomes_current(tmp_path: Path) -> None:
    path = tmp_path / "order.avsc"
    path.write_text(json.dumps({"type": "record", "name": "Order", "namespace": "test.shop",
                                "fields": [{"name": "id", "type": "string"}]}))
    v1 = codec.add_schema(path)
    written_by_v1 = codec.encode("test.shop.Order", {"id": "o1"})
    v2_raw = json.loads(path.read_text())
    v2_raw["fields"].append({"name": "qty", "type": "int", "default": 1})
    v2 = codec.add_schema(v2_raw)
    assert (v1.name, v2.name) == ("test.shop.Order", "test.shop.Order")
    assert codec.schema("test.shop.Order") is v2
    assert codec.decode(written_by_v1) == {"id": "o1", "qty": 1}
    assert codec.decode(written_by_v1, reader_schema="test.shop.Order") == {"id": "o1", "qty": 1}


# --- errors --------------------------------------------------------------------------------------


def _label() -> bytes:
    return codec.encode("tidegate.Label", SAMPLES["tidegate.Label"])


def _prediction_body_with(union_byte: bytes) -> bytes:
    """A Prediction with another byte where the account_id union index is."""
    data = codec.encode("tidegate.Prediction", SAMPLES["tidegate.Prediction"])
    at = 10 + 1 + len("e1") + 1 + len("t1")  # header, then two short length-prefixed strings
    return data[:at] + union_byte + data[at + 1 :]


@pytest.mark.parametrize(
    ("value", "code"),
    [
        pytest.param(b"", "EMPTY_VALUE", id="empty"),
        pytest.param(b"\xff\x00\x01", "BAD_MAGIC", id="bad-first-byte"),
        pytest.param(b"\xc3\x02" + bytes(9), "BAD_MAGIC", id="bad-second-magic-byte"),
        pytest.param(b"\xc3\x01\x12\x34", "TRUNCATED_AVRO", id="short-single-object-header"),
        pytest.param(b"\x00\x00\x01", "TRUNCATED_AVRO", id="short-confluent-header"),
        pytest.param(_label()[:-1], "TRUNCATED_AVRO", id="truncated-body"),
        pytest.param(_label() + b"\x00", "TRAILING_BYTES", id="trailing-bytes"),
        pytest.param(b"\xc3\x01" + bytes(8) + b"\x02", "UNKNOWN_SCHEMA", id="unknown-fingerprint"),
        pytest.param(b"\x00\x00\x00\x00\x07\x02", "UNKNOWN_SCHEMA", id="confluent-no-registry"),
        pytest.param(_prediction_body_with(b"\x08"), "MALFORMED_AVRO", id="bad-union-index"),
        pytest.param(_label()[:10] + b"\x04\xff\xfe" + _label()[13:], "MALFORMED_AVRO",
                     id="invalid-utf8-in-avro-string"),
        pytest.param(b'{"a": "\xff"}', "INVALID_UTF8", id="json-invalid-utf8"),
        pytest.param(b'{"a": ', "INVALID_JSON", id="json-cut-short"),
        pytest.param(b"nope", "INVALID_JSON", id="json-bad-literal"),
        pytest.param(b"[1, 2]", "NOT_AN_OBJECT", id="json-array"),
        pytest.param(b'"just a string"', "NOT_AN_OBJECT", id="json-string"),
    ],
)
def test_every_bad_input_has_its_stable_code(value: bytes, code: str) -> None:
    assert _code_of(codec.decode_any, value) == code


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_truncation_of_a_framed_record_is_truncated_avro(name: str) -> None:
    data = codec.encode(name, SAMPLES[name])
    codes = {_code_of(codec.decode_any, data[:end]) for end in range(1, len(data))}
    assert codes == {"TRUNCATED_AVRO"}


def test_decode_without_json_rejects_json_as_bad_magic() -> None:
    assert _code_of(codec.decode, b'{"a": 1}') == "BAD_MAGIC"


@pytest.mark.parametrize("value", [
    b'{"a": 1, "b": [1.5, "x", null, true], "c": {"d": -0.0}}',
    b'{"a": NaN, "b": Infinity}',  # what the standard library reads and msgspec refuses
    b'{"a": 1e400}',  # beyond a double: inf, as the standard library reads it
    b'{"a": "\\ud800"}',  # a lone surrogate
    b'{"a": 18446744073709551616, "b": -9223372036854775809}',  # beyond 64 bits
    b'{"a": 1, "a": 2}',  # a repeated key: the last wins
    b' {"a": "\\u00e9t\xc3\xa9"} ',
])
def test_decode_json_reads_as_the_standard_library_does(value: bytes) -> None:
    decoded = codec.decode_json(value)
    assert repr(decoded) == repr(json.loads(value))  # repr: NaN is not equal to itself
    assert type(decoded) is dict


def test_decode_json_codes() -> None:
    assert _code_of(codec.decode_json, b"\x80") == "INVALID_UTF8"
    assert _code_of(codec.decode_json, b"{") == "INVALID_JSON"
    assert _code_of(codec.decode_json, b"null") == "NOT_AN_OBJECT"


def test_a_writer_that_cannot_be_read_into_the_reader_is_incompatible() -> None:
    prediction = codec.encode("tidegate.Prediction", SAMPLES["tidegate.Prediction"])
    assert _code_of(codec.decode, prediction, "tidegate.Label") == "INCOMPATIBLE_SCHEMA"


@pytest.mark.parametrize(
    "record",
    [
        pytest.param({"event_id": "e1", "label": True}, id="missing-field"),
        pytest.param({"event_id": 7, "label": True, "labelled_at": T0}, id="wrong-type"),
        pytest.param({"event_id": "e1", "label": True, "labelled_at": 2**70}, id="overflow"),
    ],
)
def test_a_record_that_does_not_fit_fails_to_encode(record: dict[str, Any]) -> None:
    assert _code_of(codec.encode, "tidegate.Label", record) == "ENCODE_FAILED"


def test_unknown_schema_names_are_reported() -> None:
    assert _code_of(codec.encode, "tidegate.Nope", {}) == "UNKNOWN_SCHEMA"
    assert _code_of(codec.decode, _label(), "tidegate.Nope") == "UNKNOWN_SCHEMA"


def test_unknown_registry_id_is_unknown_schema_and_the_miss_is_remembered(
    registry: StubRegistry,
) -> None:
    now = [100.0]
    client = SchemaRegistryClient(registry.url, miss_ttl=30.0, clock=lambda: now[0])
    reader = Codec(registry=client)
    data = b"\x00\x00\x00\x00\x63\x02"
    assert _code_of(reader.decode, data) == "UNKNOWN_SCHEMA"
    assert _code_of(reader.decode, data) == "UNKNOWN_SCHEMA"
    assert registry.requests == [("GET", "/schemas/ids/99")]
    now[0] += 31.0
    assert _code_of(reader.decode, data) == "UNKNOWN_SCHEMA"
    assert len(registry.requests) == 2


def test_registry_schemas_that_are_not_avro_are_unknown(registry: StubRegistry) -> None:
    proto = registry.add('syntax = "proto3"; message M {}', schema_type="PROTOBUF")
    data = CONFLUENT_MAGIC + proto.to_bytes(4, "big") + b"\x02"
    assert _code_of(Codec(registry_url=registry.url).decode, data) == "UNKNOWN_SCHEMA"


def test_registry_server_errors_are_transient_not_poison(registry: StubRegistry) -> None:
    registry.fail_with = 503
    reader = Codec(registry_url=registry.url)
    with pytest.raises(SchemaRegistryUnavailableError) as caught:
        reader.decode_batch([b"\x00\x00\x00\x00\x01\x02"])
    assert not isinstance(caught.value, CodecError)
    assert caught.value.code == "SCHEMA_REGISTRY_UNAVAILABLE"


def test_an_unreachable_registry_is_transient() -> None:
    client = SchemaRegistryClient(f"http://127.0.0.1:{_closed_port()}", timeout=2.0)
    with pytest.raises(SchemaRegistryUnavailableError):
        client.register("t-value", codec.schema("tidegate.Label"))


def test_a_refused_registration_is_a_configuration_error(registry: StubRegistry) -> None:
    registry.fail_with = 409
    with pytest.raises(SchemaRegistryRejectedError) as caught:
        Codec(registry_url=registry.url).encode("tidegate.Label", SAMPLES["tidegate.Label"])
    assert isinstance(caught.value, ConfigError)
    assert caught.value.code == "SCHEMA_REGISTRY_REJECTED"
    assert "stub failure" in str(caught.value)


def test_a_registry_url_that_is_not_http_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError):
        Codec(registry_url="registry:8081")


@pytest.mark.parametrize(
    "source",
    [
        pytest.param({"type": "record", "name": "Bad", "fields": [{"name": "a"}]}, id="no-type"),
        pytest.param({"type": "record", "name": "Bad", "fields": [
            {"name": "a", "type": "int", "default": "x"}]}, id="bad-default"),
        pytest.param({"type": "enum", "name": "Bad", "symbols": ["A"]}, id="not-a-record"),
        pytest.param("/nonexistent/bad.avsc", id="missing-file"),
    ],
)
def test_an_invalid_user_schema_is_a_configuration_error(source: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        codec.add_schema(source)
    assert caught.value.code == "INVALID_SCHEMA"


def test_decode_batch_keeps_errors_in_place() -> None:
    label = _label()
    results = codec.decode_batch([label, b"", b'{"a": 1}', label[:-2], b"[]"])
    assert results[0] == ("avro", SAMPLES["tidegate.Label"])
    assert results[2] == ("json", {"a": 1})
    codes = [r.code if isinstance(r, TidegateError) else "ok" for r in results]
    assert codes == ["ok", "EMPTY_VALUE", "ok", "TRUNCATED_AVRO", "NOT_AN_OBJECT"]


def test_errors_wrap_the_underlying_exception() -> None:
    with pytest.raises(CodecError) as caught:
        codec.decode(_label()[:-1])
    assert isinstance(caught.value.__cause__, EOFError | IndexError)


def test_a_batch_encoder_frames_each_record_as_the_single_one_does() -> None:
    codec = Codec()
    one = codec.encoder("tidegate.Label")
    many = codec.batch_encoder("tidegate.Label")
    labels = [{"event_id": f"e{i}", "label": i % 2 == 0, "labelled_at": i} for i in range(5)]
    assert many(labels) == [one(label) for label in labels]
    assert many([]) == []
    with pytest.raises(EncodeError, match=r"record 1"):
        many([labels[0], {"event_id": "e9"}])

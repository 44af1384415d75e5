"""The bad-record catalogue: every kind is really bad in the way it claims."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from tidegate.codec import Codec
from tidegate.errors import CodecError
from tidegate.example import example_rules
from tidegate.example.badrecords import (
    ALL_KINDS,
    BadKind,
    BadRecordInjector,
    kind_by_name,
    list_kinds,
)
from tidegate.example.generator import TransactionGenerator

pytestmark = pytest.mark.unit

SCHEMA = "tidegate.example.CardTransaction"
NOW_S = 1_800_000_000.0
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
EXPECTED_CODES = {
    "ingest": {"TRUNCATED_AVRO", "BAD_MAGIC", "UNKNOWN_SCHEMA", "INVALID_JSON", "INVALID_UTF8",
               "NOT_AN_OBJECT", "MISSING_EVENT_ID", "BAD_EVENT_ID", "DUPLICATE_EVENT_ID",
               "EVENT_TIME_FUTURE", "BAD_EVENT_TIME"},
    "validation": {"REQUIRED", "WRONG_TYPE", "NOT_FINITE", "OUT_OF_RANGE", "NOT_ALLOWED",
                   "TOO_LONG"},
}
Encode = Callable[[dict[str, object]], bytes]


@pytest.fixture(scope="module")
def events() -> list[dict[str, object]]:
    gen = TransactionGenerator(seed=11, start_time_ms=1_700_000_000_000)
    return [event for event, _ in gen.generate(300)]


@pytest.fixture(scope="module")
def encode() -> Encode:
    codec = Codec()
    return lambda event: codec.encode(SCHEMA, event)


def fake_avro(event: dict[str, object]) -> bytes:
    """Single-object framing around a JSON body: enough to check the byte surgery."""
    return b"\xc3\x01" + bytes(range(1, 9)) + json.dumps(event).encode()


def injector(**kwargs: Any) -> BadRecordInjector:
    return BadRecordInjector(seed=3, clock=lambda: NOW_S, **kwargs)


def test_catalogue_has_every_required_kind_with_its_stage_and_code() -> None:
    assert len(ALL_KINDS) >= 16
    assert len({k.name for k in ALL_KINDS}) == len(ALL_KINDS)
    for stage, codes in EXPECTED_CODES.items():
        assert {k.code for k in list_kinds(stage)} == codes  # type: ignore[arg-type]
    assert list_kinds() == ALL_KINDS
    assert kind_by_name("amount_nan").code == "NOT_FINITE"
    with pytest.raises(dataclasses.FrozenInstanceError):
        ALL_KINDS[0].code = "OTHER"  # type: ignore[misc]


@pytest.mark.parametrize("kind", list_kinds(), ids=lambda k: k.name)
def test_kind_is_rejected_with_its_code_by_the_real_codec_and_rules(
        kind: BadKind, events: list[dict[str, object]], encode: Encode) -> None:
    inj = injector(json_share=0.5)
    for event in events[:5]:
        inj.inject(event, encode)  # remembered for the duplicate kind
    rules, codec = example_rules(), Codec()
    for event in events[5:105]:
        value = inj.corrupt(kind, event, encode)
        if kind.code in {"TRUNCATED_AVRO", "BAD_MAGIC", "UNKNOWN_SCHEMA", "INVALID_JSON",
                         "INVALID_UTF8", "NOT_AN_OBJECT"}:
            with pytest.raises(CodecError) as caught:
                codec.decode_any(value)
            assert caught.value.code == kind.code
            continue
        _, record = codec.decode_any(value)
        result = rules.check([record])
        if kind.stage == "validation":
            assert {v.code for v in result.for_record(0)} == {kind.code}
            assert {v.field for v in result.for_record(0)} == {kind.field}
        else:
            assert_ingest_defect(kind, record, inj, event)


def assert_ingest_defect(kind: BadKind, record: dict[str, Any], inj: BadRecordInjector,
                         event: dict[str, object]) -> None:
    match kind.code:
        case "MISSING_EVENT_ID":
            assert "event_id" not in record
        case "BAD_EVENT_ID":
            assert not UUID4.match(record["event_id"])
        case "DUPLICATE_EVENT_ID":
            assert record["event_id"] != event["event_id"]
            assert record["event_id"] == inj.last_event_id
        case "EVENT_TIME_FUTURE":
            assert record["event_time"] > NOW_S * 1000 + 300 * 86_400_000
        case "BAD_EVENT_TIME":
            assert not isinstance(record.get("event_time"), int)
        case _:
            pytest.fail(f"no check for {kind.code}")


def test_avro_surgery_keeps_what_it_should(events: list[dict[str, object]]) -> None:
    inj, good = injector(), fake_avro(events[0])
    cut = inj.corrupt(kind_by_name("truncated_avro"), events[0], fake_avro)
    assert len(cut) < len(good) and good.startswith(cut) and len(cut) >= 10
    magic = inj.corrupt(kind_by_name("bad_magic"), events[0], fake_avro)
    assert magic[0] not in (0xC3, 0x00, ord("{")) and magic[1:] == good[1:]
    flipped = inj.corrupt(kind_by_name("unknown_schema"), events[0], fake_avro)
    assert flipped[:2] == good[:2] and flipped[10:] == good[10:] and flipped[2:10] != good[2:10]


def test_json_kinds_are_bad_json(events: list[dict[str, object]]) -> None:
    inj = injector()
    with pytest.raises(json.JSONDecodeError):
        json.loads(inj.corrupt(kind_by_name("invalid_json"), events[0], fake_avro))
    raw = inj.corrupt(kind_by_name("invalid_utf8"), events[0], fake_avro)
    assert raw.startswith(b"{")
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    assert isinstance(json.loads(inj.corrupt(kind_by_name("not_an_object"), events[0],
                                             fake_avro)), list)
    as_json = injector(json_share=1.0)
    for name, literal in (("amount_nan", b"NaN"), ("amount_infinite", b"Infinity")):
        value = as_json.corrupt(kind_by_name(name), events[0], fake_avro)
        assert b'"amount":' + literal in value
        assert not math.isfinite(json.loads(value)["amount"])


def test_duplicate_repeats_an_earlier_good_value(events: list[dict[str, object]]) -> None:
    inj = injector(memory=4)
    with pytest.raises(LookupError):
        inj.corrupt(kind_by_name("duplicate_event_id"), events[0], fake_avro)
    only_dup = injector(rate=1.0, kinds=[kind_by_name("duplicate_event_id")], memory=4)
    value, expected = only_dup.inject(events[0], fake_avro)
    assert expected is None  # nothing to duplicate yet: the record goes out good
    goods = {}
    for event in events[1:20]:
        value, expected = inj.inject(event, fake_avro)
        goods[inj.last_event_id] = value
    for event in events[20:40]:
        dup = inj.corrupt(kind_by_name("duplicate_event_id"), event, fake_avro)
        assert inj.last_event_id in list(goods)[-4:]  # memory is bounded to the last 4
        assert dup == goods[inj.last_event_id]


def test_injector_rate_mix_and_determinism(events: list[dict[str, object]]) -> None:
    def run(seed: int) -> list[tuple[bytes, BadKind | None]]:
        inj = BadRecordInjector(seed=seed, rate=0.3, json_share=0.5, clock=lambda: NOW_S)
        return [inj.inject(e, fake_avro) for e in events * 10]

    out = run(1)
    assert out == run(1) and out != run(2)
    bad = Counter(k.name for _, k in out if k is not None)
    assert 0.25 < sum(bad.values()) / len(out) < 0.35
    assert set(bad) == {k.name for k in ALL_KINDS}
    good = [v for v, k in out if k is None]
    assert any(v.startswith(b"{") for v in good) and any(v.startswith(b"\xc3") for v in good)


def test_injector_leaves_events_alone_and_respects_extremes(
        events: list[dict[str, object]]) -> None:
    before = json.dumps(events[:50])
    clean = injector(rate=0.0, json_share=1.0)
    for event in events[:50]:
        value, expected = clean.inject(event, fake_avro)
        assert expected is None and json.loads(value) == event
    dirty = injector(rate=1.0)
    assert all(dirty.inject(e, fake_avro)[1] is not None for e in events[:50])
    assert json.dumps(events[:50]) == before
    with pytest.raises(ValueError):
        BadRecordInjector(rate=1.5)


def test_defect_the_schema_cannot_carry_falls_back_to_json(
        events: list[dict[str, object]]) -> None:
    def strict(event: dict[str, object]) -> bytes:
        if event["merchant_category"] == "teleportation":
            raise ValueError("not a symbol of the enum")
        return fake_avro(event)

    value = injector(json_share=0.0).corrupt(kind_by_name("unknown_category"), events[0], strict)
    assert json.loads(value)["merchant_category"] == "teleportation"

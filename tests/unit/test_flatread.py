"""Column-by-column Avro reads: the values fastavro reads, or None to let it read them."""

from __future__ import annotations

import json
import random
from io import BytesIO
from typing import Any, cast

import pytest
from fastavro import parse_schema, schemaless_reader

from tests.unit.test_flatavro import EVERY_KIND, _every, _fastavro
from tidegate.codec import Codec, schema
from tidegate.deadletter import SourceRecord
from tidegate.example.generator import TransactionGenerator
from tidegate.flatread import FlatReader
from tidegate.pipeline.dedupe import Dedupe
from tidegate.pipeline.ingest import ingest_batch

pytestmark = pytest.mark.unit

CARD = "tidegate.example.CardTransaction"
NOW_MS = 1_796_400_000_000


# as the codec reads: logical types dropped (fastavro would make the timestamp a datetime)
_FIELDS: list[dict[str, Any]] = EVERY_KIND["fields"]  # type: ignore[assignment]
PLAIN: dict[str, Any] = {**EVERY_KIND, "name": "Plain", "fields": [
    {**field, "type": "long"} if field["name"] == "t" else field for field in _FIELDS]}


def _parsed(raw: dict[str, Any]) -> dict[str, Any]:
    parsed: dict[str, Any] = parse_schema(raw)  # type: ignore[assignment]
    return parsed


def _reader() -> FlatReader:
    reader = FlatReader.compile(_parsed(PLAIN))
    assert reader is not None
    return reader


def _read(bodies: list[bytes]) -> list[dict[str, Any]]:
    parsed = _parsed(PLAIN)
    return [cast(dict[str, Any], schemaless_reader(BytesIO(body), parsed, None))
            for body in bodies]


def test_a_schema_with_a_logical_type_is_left_to_fastavro() -> None:
    assert FlatReader.compile(_parsed(EVERY_KIND)) is None


def _rows(columns: dict[str, list[Any]]) -> list[dict[str, Any]]:
    return [dict(zip(columns, row, strict=True)) for row in zip(*columns.values(), strict=True)]


def _no_nul(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v.replace("\x00", "0") if isinstance(v, str) else v for k, v in record.items()}


@pytest.mark.parametrize("seed", range(6))
def test_every_kind_reads_exactly_what_fastavro_reads(seed: int) -> None:
    rng = random.Random(seed)
    records = [_no_nul(_every(rng)) for _ in range(rng.choice([1, 7, 500]))]
    bodies = _fastavro(EVERY_KIND, records, b"")
    columns = _reader().read_all(bodies)
    assert columns is not None
    assert repr(_rows(columns)) == repr(_read(bodies))  # repr: NaN and -0.0 compare by bits


def test_the_example_transactions_read_as_fastavro_reads_them() -> None:
    avro = schema(CARD)
    reader = FlatReader.compile(avro.reading)
    assert reader is not None
    events = [event for event, _ in TransactionGenerator(seed=5).generate(300)]
    bodies = [avro.write(event) for event in events]
    columns = reader.read_all(bodies)
    assert columns is not None and _rows(columns) == [avro.read(body) for body in bodies]


def test_an_empty_list_reads_as_empty_columns() -> None:
    assert _reader().read_all([]) == {field[0]: [] for field in _reader().fields}


@pytest.mark.parametrize("damage", ["truncated", "trailing", "branch", "boolean", "utf8", "nul",
                                    "varint"])
def test_what_the_columns_cannot_vouch_for_goes_to_fastavro(damage: str) -> None:
    rng = random.Random(3)
    records = [_no_nul(_every(rng)) for _ in range(20)]
    bodies = _fastavro(EVERY_KIND, records, b"")
    body = bodies[7]
    text_at = 1  # "s" is the first field: its length varint, then its bytes
    if damage == "truncated":
        body = body[:-1]
    elif damage == "trailing":
        body += b"\x00"
    elif damage == "branch":  # "ns", a ["null", "string"] union, with branch 2
        record = records[7] | {"ns": None, "nl": None, "nd": None}
        body = _fastavro(EVERY_KIND, [record], b"")[0]
        body = body[:-3] + b"\x04" + body[-2:]  # the three nulls end the body
    elif damage == "boolean":
        record = records[7] | {"ns": None, "nl": None, "nd": None}
        body = _fastavro(EVERY_KIND, [record], b"")[0]
        body = body[:-4] + b"\x02" + body[-3:]  # "ok" sits before the three nulls
    elif damage in ("utf8", "nul"):
        record = records[7] | {"s": "abc"}
        body = _fastavro(EVERY_KIND, [record], b"")[0]
        bad = b"\xff" if damage == "utf8" else b"\x00"
        body = body[:text_at + 1] + bad + body[text_at + 2:]
    elif damage == "varint":  # "i" as eleven varint groups
        record = records[7] | {"s": ""}
        body = _fastavro(EVERY_KIND, [record], b"")[0]
        length = len(_fastavro({"type": "record", "name": "B", "fields": [
            {"name": "b", "type": "bytes"}]}, [{"b": record["b"]}], b"")[0])
        at = 1 + length
        body = body[:at] + b"\xff" * 10 + b"\x01" + body[at + 1:]
    bodies[7] = body
    assert _reader().read_all(bodies) is None


def _sources(values: list[bytes]) -> list[SourceRecord]:
    return [SourceRecord(topic="events", partition=0, offset=offset, timestamp=NOW_MS,
                         key=None, value=value, headers=[]) for offset, value in enumerate(values)]


def test_ingest_reads_a_mixed_batch_as_one_record_at_a_time_would() -> None:
    codec = Codec()
    events = [event | {"event_time": NOW_MS - 1_000}
              for event, _ in TransactionGenerator(seed=9).generate(120)]
    values: list[bytes] = []
    for index, event in enumerate(events):
        if index % 7 == 3:  # JSON among the Avro, decoded one by one
            values.append(json.dumps(event).encode())
        else:
            values.append(codec.encode(CARD, event))
    values[40] = values[40][:-2]  # a truncated Avro body
    values[41] += b"\x00"  # bytes left over
    batch, dead = ingest_batch(_sources(values), codec=codec, dedupe=Dedupe(), now_ms=NOW_MS)
    assert [(letter.code, letter.value) for letter in dead] == [
        ("TRUNCATED_AVRO", values[40]), ("TRAILING_BYTES", values[41])]
    kept = [i for i in range(len(values)) if i not in (40, 41)]
    assert batch.source_offsets.tolist() == kept
    assert batch.records() == [events[i] for i in kept]


def test_the_codec_benchmark_reads_the_same_values_both_ways() -> None:
    from tidegate.cli.codecbench import measure_input_reading, render_reading

    report = measure_input_reading(records=200, rounds=1)
    assert report["identical"] is True and report["records"] == 200
    assert min(report[name] for name in ("avro_columns_us", "avro_fastavro_us",
                                         "json_msgspec_us", "json_stdlib_us")) > 0
    assert "identical values: yes" in render_reading(report)


def test_the_codec_benchmark_packs_every_event_and_reads_it_back() -> None:
    from tidegate.cli.codecbench import measure_packing, render_packing

    reports = measure_packing(sizes=(50,), rounds=1)
    [report] = reports
    assert report["events"] == 50 and report["identical"] is True
    assert 1 < report["messages"] <= 6  # one per partition the accounts route to
    assert min(report[name] for name in ("split_us", "whole_us", "read_us")) > 0
    assert "every event back: yes" in render_packing(reports)

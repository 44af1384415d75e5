"""Ingest without Faust: decoding, envelope checks, de-duplication and trace context."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from typing import Any

import pytest

from tidegate.batches import Batch, pack, partition_for, unpack
from tidegate.codec import Codec
from tidegate.deadletter import CONTEXT_PREFIX, DeadLetter, Headers, SourceRecord, context_of
from tidegate.example.badrecords import ALL_KINDS, BadKind, BadRecordInjector
from tidegate.example.generator import TransactionGenerator
from tidegate.pipeline.ingest import (
    REPLAY_HEADER,
    STAGE,
    Dedupe,
    IngestLimits,
    ingest_batch,
    make_traceparent,
)

pytestmark = pytest.mark.unit

SCHEMA = "tidegate.example.CardTransaction"
NOW_MS = 1_800_000_000_000
TOPIC = "t.events"
PARTITIONS = 12  # of the internal topic ingest routes to
ORIGINAL_HEADERS: Headers = [("producer", b"shop-api"), ("empty", None), ("producer", b"again")]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
VALID_TRACEPARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-01$")
INGEST_KINDS = tuple(kind for kind in ALL_KINDS if kind.stage == "ingest")
VALIDATION_KINDS = tuple(kind for kind in ALL_KINDS if kind.stage == "validation")


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec()


@pytest.fixture(scope="module")
def events() -> list[dict[str, object]]:
    generator = TransactionGenerator(seed=5, start_time_ms=NOW_MS - 3_600_000)
    return [event for event, _ in generator.generate(60)]


def source(value: bytes, *, offset: int = 0, key: bytes | None = b"k",
           headers: Headers | None = None) -> SourceRecord:
    return SourceRecord(topic=TOPIC, partition=2, offset=offset, timestamp=NOW_MS - 5,
                        key=key, value=value,
                        headers=list(ORIGINAL_HEADERS if headers is None else headers))


def as_json(record: dict[str, Any]) -> bytes:
    return json.dumps(record).encode()


def ingest(records: Sequence[SourceRecord], codec: Codec, dedupe: Dedupe | None = None, *,
           partitions: int = PARTITIONS) -> tuple[Batch, list[DeadLetter]]:
    """One batch through ingest_batch, delivered: its ids then count as seen."""
    dedupe = Dedupe() if dedupe is None else dedupe
    result = ingest_batch(records, codec=codec, dedupe=dedupe, now_ms=NOW_MS,
                          partitions=partitions)
    dedupe.commit()
    return result


def only_dead_letter(record: SourceRecord, codec: Codec) -> DeadLetter:
    batch, dead = ingest([record], codec)
    assert len(batch) == 0
    assert len(dead) == 1
    return dead[0]


def assert_dead_letter_keeps_original(letter: DeadLetter, record: SourceRecord, code: str
                                      ) -> dict[str, str]:
    assert letter.code == code
    assert letter.key == record.key
    assert letter.value == record.value
    assert letter.headers[:len(record.headers)] == record.headers
    added = letter.headers[len(record.headers):]
    assert added and all(name.startswith(CONTEXT_PREFIX) for name, _ in added)
    context = context_of(letter.headers)
    assert context["stage"] == STAGE
    assert context["error.code"] == code
    assert context["source.topic"] == record.topic
    assert context["source.partition"] == str(record.partition)
    assert context["source.offset"] == str(record.offset)
    assert context["attempt"] == "1"
    return context


# --- good records ---------------------------------------------------------------------------


def routes(event: dict[str, object]) -> tuple[int, int]:
    """The partitions of ``event``'s account and of its event id, which must differ for a test
    to tell the two routes apart."""
    by_account = partition_for(str(event["account_id"]), PARTITIONS)
    by_event_id = partition_for(str(event["event_id"]), PARTITIONS)
    assert by_account != by_event_id
    return by_account, by_event_id


@pytest.mark.parametrize("framing", ["avro", "json"])
def test_good_record_becomes_an_event_of_the_batch_routed_by_account(
        framing: str, codec: Codec, events: list[dict[str, object]]) -> None:
    event = events[0]
    value = codec.encode(SCHEMA, event) if framing == "avro" else as_json(event)
    headers: Headers = [*ORIGINAL_HEADERS, ("traceparent", VALID_TRACEPARENT.encode())]
    record = source(value, offset=41, key=b"acct-key", headers=headers)

    batch, dead = ingest([record], codec)

    assert dead == []
    assert len(batch) == 1
    by_account, _ = routes(event)
    assert batch.partitions.tolist() == [by_account]
    assert batch.account_ids == [event["account_id"]]
    assert batch.event_ids == [event["event_id"]]
    assert batch.event_times.tolist() == [event["event_time"]]
    assert batch.ingested_at.tolist() == [NOW_MS]
    assert batch.trace_ids == [TRACE_ID]
    assert batch.source_topics == [TOPIC]
    assert batch.source_partitions.tolist() == [2]
    assert batch.source_offsets.tolist() == [41]
    assert batch.source_timestamps.tolist() == [NOW_MS - 5]
    assert batch.keys == [b"acct-key"]
    assert batch.values == [value]
    assert batch.headers == [[{"key": k, "value": v} for k, v in headers]]
    assert batch.source(0) == record
    assert batch.features.shape == (1, 0)
    assert batch.feature_quality == []
    assert batch.fields == {name: [field] for name, field in event.items()}
    assert batch.records() == [event]


def test_the_batch_packs_and_round_trips(
        codec: Codec, events: list[dict[str, object]]) -> None:
    records = [source(codec.encode(SCHEMA, event), offset=i) for i, event in enumerate(events)]
    batch, dead = ingest(records, codec, partitions=1)
    assert dead == []
    assert batch.partitions.tolist() == [0] * len(events)
    [(partition, message)] = list(pack(codec, batch, stage=STAGE))
    assert partition == 0
    again = unpack(codec, message, partition=0)
    assert again.event_ids == [event["event_id"] for event in events]
    assert again.fields == batch.fields
    assert again.records() == events
    assert [again.source(i) for i in range(len(again))] == records


def test_order_is_kept_and_good_and_bad_are_split(
        codec: Codec, events: list[dict[str, object]]) -> None:
    good = [source(codec.encode(SCHEMA, event), offset=i) for i, event in enumerate(events[:4])]
    bad = [source(b"\xff\xff", offset=10), source(b"[]", offset=11)]
    batch, dead = ingest([good[0], bad[0], good[1], good[2], bad[1], good[3]], codec)
    assert batch.source_offsets.tolist() == [0, 1, 2, 3]
    assert batch.event_ids == [event["event_id"] for event in events[:4]]
    assert [(letter.code, letter.value) for letter in dead] == [
        ("BAD_MAGIC", b"\xff\xff"), ("NOT_AN_OBJECT", b"[]")]


def test_missing_account_routes_by_event_id(
        codec: Codec, events: list[dict[str, object]]) -> None:
    _, by_event_id = routes(events[0])
    for account in (None, "", 7):
        event = {**events[0], "account_id": account}
        assert partition_for(str(account), PARTITIONS) != by_event_id
        batch, _ = ingest([source(as_json(event))], codec)
        assert batch.partitions.tolist() == [by_event_id]
        assert batch.account_ids == [""]
    event = dict(events[0])
    del event["account_id"]
    batch, _ = ingest([source(as_json(event))], codec)
    assert batch.partitions.tolist() == [by_event_id]
    assert batch.account_ids == [""]
    # each event of a batch by its own route
    batch, _ = ingest([source(as_json(event), offset=0), source(as_json(events[1]), offset=1)],
                      codec)
    assert batch.partitions.tolist() == [by_event_id, routes(events[1])[0]]
    assert batch.account_ids == ["", events[1]["account_id"]]


def test_event_time_on_the_future_limit_is_accepted(
        codec: Codec, events: list[dict[str, object]]) -> None:
    limit = IngestLimits().max_future_ms
    on_limit = {**events[0], "event_time": NOW_MS + limit}
    batch, dead = ingest([source(as_json(on_limit))], codec)
    assert dead == [] and len(batch) == 1


def test_limits_are_configurable(codec: Codec, events: list[dict[str, object]]) -> None:
    record = source(as_json({**events[0], "event_time": NOW_MS + 1_000}))
    strict = IngestLimits(max_future_ms=0)
    batch, dead = ingest_batch([record], codec=codec, dedupe=Dedupe(), now_ms=NOW_MS,
                               limits=strict)
    assert len(batch) == 0 and [d.code for d in dead] == ["EVENT_TIME_FUTURE"]
    old = source(as_json({**events[1], "event_time": 1_000}))
    lenient = IngestLimits(min_event_time_ms=0)
    batch, dead = ingest_batch([old], codec=codec, dedupe=Dedupe(), now_ms=NOW_MS,
                               limits=lenient)
    assert dead == [] and len(batch) == 1


def test_an_int_beyond_64_bits_dead_letters_only_its_record(
        codec: Codec, events: list[dict[str, object]]) -> None:
    values = [
        as_json(events[0]),
        as_json({**events[1], "amount": 2**64}),  # one past MessagePack's largest integer
        as_json({**events[2], "customer_age": 2**64 - 1}),  # the largest: fine
        b"\xff\xff",  # a dead letter of another kind in between
        as_json({**events[4], "account_age_days": -(2**63)}),  # the smallest: fine
        as_json({**events[5], "tags": [1, {"deep": -(2**63) - 1}]}),  # nested, one below
        as_json(events[6]),
    ]
    records = [source(value, offset=i, key=f"key-{i}".encode())
               for i, value in enumerate(values)]

    batch, dead = ingest(records, codec)

    assert [(letter.code, letter.value) for letter in dead] == [
        ("UNENCODABLE", values[1]), ("BAD_MAGIC", values[3]), ("UNENCODABLE", values[5])]
    for letter, index in ((dead[0], 1), (dead[2], 5)):
        context = assert_dead_letter_keeps_original(letter, records[index], "UNENCODABLE")
        assert context["error.message"] and context["error.class"]
    kept = [0, 2, 4, 6]
    assert batch.source_offsets.tolist() == kept
    assert batch.event_ids == [events[i]["event_id"] for i in kept]
    assert batch.fields["customer_age"][1] == 2**64 - 1
    assert batch.fields["account_age_days"][2] == -(2**63)
    assert [{k: v for k, v in record.items() if k != "tags"} for record in batch.records()] == [
        json.loads(values[i]) for i in kept]
    # what is left packs: every message, unpacked, holds its events' fields
    again = Batch.concat([unpack(codec, message, partition=partition)
                          for partition, message in pack(codec, batch, stage=STAGE)])
    order = sorted(range(len(again)), key=lambda i: int(again.source_offsets[i]))
    assert again.take(order).fields == batch.fields


# --- every ingest error code ----------------------------------------------------------------


def _bad_values(codec: Codec, event: dict[str, object]) -> list[tuple[str, bytes]]:
    good = codec.encode(SCHEMA, event)
    body = good[10:]
    return [
        ("TRUNCATED_AVRO", good[:-3]),
        ("TRUNCATED_AVRO", good[:6]),
        ("TRUNCATED_AVRO", b"\xc3"),
        ("BAD_MAGIC", b"\xff" + good[1:]),
        ("BAD_MAGIC", b"\xc4\x01" + good[2:]),
        ("UNKNOWN_SCHEMA", b"\xc3\x01" + bytes(8) + body),
        ("UNKNOWN_SCHEMA", b"\x00\x00\x00\x00\x07" + body),  # Confluent framing, no registry
        ("INVALID_JSON", as_json(event)[:-9]),
        ("INVALID_JSON", b"{not json}"),
        ("INVALID_UTF8", b'{"event_id": "\xff\xfe"}'),
        ("NOT_AN_OBJECT", b"[1, 2, 3]"),
        ("NOT_AN_OBJECT", b'"just a string"'),
        ("NOT_AN_OBJECT", b"42"),
        ("MISSING_EVENT_ID", as_json({k: v for k, v in event.items() if k != "event_id"})),
        ("MISSING_EVENT_ID", as_json({**event, "event_id": None})),
        ("MISSING_EVENT_ID", as_json({**event, "event_id": ""})),
        ("BAD_EVENT_ID", as_json({**event, "event_id": "not-a-uuid"})),
        ("BAD_EVENT_ID", as_json({**event, "event_id": 12345})),
        ("BAD_EVENT_ID", as_json({**event, "event_id": f"{event['event_id']}\n"})),
        ("BAD_EVENT_ID", codec.encode(SCHEMA, {**event, "event_id": "abc"})),
        ("EVENT_TIME_FUTURE", as_json({**event, "event_time": NOW_MS + 3_600_000})),
        ("EVENT_TIME_FUTURE", codec.encode(SCHEMA, {**event, "event_time": NOW_MS + 10**9})),
        ("BAD_EVENT_TIME", as_json({k: v for k, v in event.items() if k != "event_time"})),
        ("BAD_EVENT_TIME", as_json({**event, "event_time": "2024-01-01T00:00:00Z"})),
        ("BAD_EVENT_TIME", as_json({**event, "event_time": 1.7e12})),
        ("BAD_EVENT_TIME", as_json({**event, "event_time": True})),
        ("BAD_EVENT_TIME", as_json({**event, "event_time": 946_684_799_999})),  # 1999
        ("EMPTY_VALUE", b""),
    ]


def test_each_error_code_gives_a_dead_letter_with_the_original_record(
        codec: Codec, events: list[dict[str, object]]) -> None:
    cases = _bad_values(codec, events[0])
    assert {code for code, _ in cases} >= {k.code for k in INGEST_KINDS} - {"DUPLICATE_EVENT_ID"}
    for offset, (code, value) in enumerate(cases):
        record = source(value, offset=offset, key=f"key-{offset}".encode())
        letter = only_dead_letter(record, codec)
        context = assert_dead_letter_keeps_original(letter, record, code)
        assert context["error.message"], code
        assert context["error.class"], code


def test_envelope_errors_name_the_event_id(
        codec: Codec, events: list[dict[str, object]]) -> None:
    event_id = str(events[0]["event_id"])
    future = source(as_json({**events[0], "event_time": NOW_MS + 3_600_000}))
    letter = only_dead_letter(future, codec)
    assert letter.event_id == event_id
    assert context_of(letter.headers)["event.id"] == event_id
    assert context_of(letter.headers)["error.class"] == "EnvelopeError"
    undecodable = only_dead_letter(source(b"\xff" + b"x" * 20), codec)
    assert undecodable.event_id is None
    assert "event.id" not in context_of(undecodable.headers)
    assert context_of(undecodable.headers)["error.class"] == "BadMagicError"


def test_duplicate_event_id_is_refused_within_a_batch_and_across_batches(
        codec: Codec, events: list[dict[str, object]]) -> None:
    dedupe = Dedupe()
    avro = codec.encode(SCHEMA, events[0])
    first, again = source(avro, offset=1), source(avro, offset=2, key=b"other")
    batch, dead = ingest([first, again], codec, dedupe)
    assert batch.source_offsets.tolist() == [1]
    assert len(dead) == 1
    context = assert_dead_letter_keeps_original(dead[0], again, "DUPLICATE_EVENT_ID")
    assert context["event.id"] == events[0]["event_id"]
    # the same id in JSON, in a later batch, is still a duplicate
    later = source(as_json(events[0]), offset=3)
    batch, dead = ingest([later], codec, dedupe)
    assert len(batch) == 0
    assert [d.code for d in dead] == ["DUPLICATE_EVENT_ID"]


def test_a_refused_record_does_not_make_its_id_seen(
        codec: Codec, events: list[dict[str, object]]) -> None:
    dedupe = Dedupe()
    future = source(as_json({**events[0], "event_time": NOW_MS + 3_600_000}))
    assert [d.code for d in ingest([future], codec, dedupe)[1]] == ["EVENT_TIME_FUTURE"]
    fixed = source(as_json(events[0]))
    batch, dead = ingest([fixed], codec, dedupe)
    assert dead == [] and len(batch) == 1


def test_an_unencodable_record_does_not_make_its_id_seen(
        codec: Codec, events: list[dict[str, object]]) -> None:
    dedupe = Dedupe()
    huge = source(as_json({**events[0], "amount": 2**70}))
    assert [d.code for d in ingest([huge], codec, dedupe)[1]] == ["UNENCODABLE"]
    # nor within one batch: the corrected record right after it is accepted
    fixed = source(as_json(events[0]), offset=1)
    batch, dead = ingest([huge, fixed], codec, dedupe)
    assert [d.code for d in dead] == ["UNENCODABLE"]
    assert batch.source_offsets.tolist() == [1]


def test_a_replayed_record_is_not_refused_as_a_duplicate(
        codec: Codec, events: list[dict[str, object]]) -> None:
    dedupe = Dedupe()
    value = codec.encode(SCHEMA, events[0])
    assert len(ingest([source(value, offset=1)], codec, dedupe)[0]) == 1
    replay = source(value, offset=9, headers=[*ORIGINAL_HEADERS, (REPLAY_HEADER, b"1")])
    batch, dead = ingest([replay], codec, dedupe)
    assert dead == []
    assert batch.event_ids == [events[0]["event_id"]]
    assert batch.source_offsets.tolist() == [9]
    # without the header the same bytes are a duplicate again
    assert [d.code for d in ingest([source(value, offset=10)], codec, dedupe)[1]] == [
        "DUPLICATE_EVENT_ID"]


# --- the bad-record catalogue through ingest_batch ------------------------------------------


@pytest.mark.parametrize("kind", INGEST_KINDS, ids=lambda kind: kind.name)
def test_every_ingest_kind_of_the_catalogue_gets_its_code(
        kind: BadKind, codec: Codec, events: list[dict[str, object]]) -> None:
    def encode(event: dict[str, object]) -> bytes:
        return codec.encode(SCHEMA, event)

    for seed in range(12):
        injector = BadRecordInjector(seed=seed, rate=0.0, json_share=0.5,
                                     clock=lambda: NOW_MS / 1000)
        good_value, expected = injector.inject(events[seed], encode)
        assert expected is None
        bad_value = injector.corrupt(kind, events[seed + 20], encode)
        good, bad = source(good_value, offset=0), source(bad_value, offset=1)
        batch, dead = ingest([good, bad], codec)
        assert batch.event_ids == [events[seed]["event_id"]]
        assert [letter.code for letter in dead] == [kind.code], (kind.name, seed)
        assert_dead_letter_keeps_original(dead[0], bad, kind.code)


@pytest.mark.parametrize("kind", VALIDATION_KINDS, ids=lambda kind: kind.name)
def test_validation_kinds_pass_ingest(
        kind: BadKind, codec: Codec, events: list[dict[str, object]]) -> None:
    def encode(event: dict[str, object]) -> bytes:
        return codec.encode(SCHEMA, event)

    injector = BadRecordInjector(seed=1, json_share=0.5, clock=lambda: NOW_MS / 1000)
    records = [source(injector.corrupt(kind, event, encode), offset=i)
               for i, event in enumerate(events[:10])]
    batch, dead = ingest(records, codec)
    assert dead == []
    assert batch.event_ids == [e["event_id"] for e in events[:10]]


# --- Dedupe ---------------------------------------------------------------------------------


def see(dedupe: Dedupe, event_id: str, now_ms: int) -> bool:
    """``seen``, then the batch delivered."""
    answer = dedupe.seen(event_id, now_ms)
    dedupe.commit()
    return answer


def uid(name: str) -> str:
    """A UUID for ``name``: the window reads ids as UUIDs, as ingest checks them."""
    return str(uuid.uuid5(uuid.NAMESPACE_OID, name))


def test_dedupe_remembers_within_the_window() -> None:
    dedupe = Dedupe(max_ids=10, window_ms=1_000)
    assert see(dedupe, uid("a"), 0) is False
    assert see(dedupe, uid("a"), 500) is True
    assert see(dedupe, uid("b"), 900) is False
    assert see(dedupe, uid("a"), 1_000) is True
    assert len(dedupe) == 2


def test_dedupe_forgets_the_oldest_beyond_its_count() -> None:
    dedupe = Dedupe(max_ids=3, window_ms=10**9)
    for index, event_id in enumerate(map(uid, "abcd")):
        assert see(dedupe, event_id, index) is False
    assert len(dedupe) == 3
    assert [see(dedupe, event_id, 10) for event_id in map(uid, "bcd")] == [True, True, True]
    assert see(dedupe, uid("a"), 11) is False  # forgotten, so new again
    assert len(dedupe) == 3
    assert see(dedupe, uid("b"), 12) is False  # "a" came back and pushed "b" out


def test_dedupe_forgets_ids_older_than_its_window() -> None:
    dedupe = Dedupe(max_ids=100, window_ms=1_000)
    see(dedupe, uid("old"), 0)
    see(dedupe, uid("mid"), 600)
    assert see(dedupe, uid("new"), 1_500) is False  # horizon 500: "old" goes, "mid" stays
    assert len(dedupe) == 2
    assert see(dedupe, uid("mid"), 1_550) is True
    assert see(dedupe, uid("old"), 1_600) is False


def test_dedupe_does_not_report_an_id_older_than_the_window() -> None:
    dedupe = Dedupe(max_ids=100, window_ms=1_000)
    assert see(dedupe, uid("a"), 0) is False
    assert see(dedupe, uid("a"), 5_000) is False


def test_dedupe_stays_bounded_under_a_stream_of_new_ids() -> None:
    dedupe = Dedupe(max_ids=50, window_ms=10**9)
    for index in range(1_000):
        see(dedupe, uid(f"id-{index}"), index)
    assert len(dedupe) == 50


def test_dedupe_counts_an_id_only_once_its_batch_is_delivered() -> None:
    dedupe = Dedupe()
    assert dedupe.seen(uid("a"), 0) is False
    assert dedupe.seen(uid("a"), 1) is True  # twice in one batch: the second is a duplicate
    dedupe.drop()  # the handler call failed; the message-by-message retry comes next
    assert dedupe.seen(uid("a"), 2) is False
    dedupe.keep()
    assert dedupe.seen(uid("b"), 3) is False
    dedupe.drop()  # this message failed alone: only "b" is forgotten
    assert len(dedupe) == 0, "nothing counts before delivery"
    dedupe.commit()
    assert len(dedupe) == 1
    assert see(dedupe, uid("a"), 4) is True
    assert see(dedupe, uid("b"), 5) is False


# --- trace context --------------------------------------------------------------------------


def test_a_valid_incoming_traceparent_keeps_its_trace_id() -> None:
    traceparent, trace_id = make_traceparent([("traceparent", VALID_TRACEPARENT.encode())])
    match = TRACEPARENT.match(traceparent)
    assert match is not None
    assert trace_id == TRACE_ID == match.group(1)
    assert match.group(2) != SPAN_ID  # this hop is a new span of the same trace


@pytest.mark.parametrize("incoming", [
    None,
    b"",
    b"garbage",
    f"00-{TRACE_ID.upper()}-{SPAN_ID}-01".encode(),
    f"00-{TRACE_ID[:-1]}-{SPAN_ID}-01".encode(),
    f"00-{TRACE_ID}-{SPAN_ID}".encode(),
    f"ff-{TRACE_ID}-{SPAN_ID}-01".encode(),
    b"\xff\xfe not utf-8",
], ids=["none", "empty", "garbage", "upper", "short", "no-flags", "version-ff", "not-utf8"])
def test_a_missing_or_invalid_traceparent_starts_a_fresh_trace(incoming: bytes | None) -> None:
    headers: Headers = [] if incoming is None else [("traceparent", incoming)]
    traceparent, trace_id = make_traceparent(headers)
    match = TRACEPARENT.match(traceparent)
    assert match is not None
    assert match.group(1) == trace_id != TRACE_ID
    assert trace_id != "0" * 32 and match.group(2) != "0" * 16
    assert make_traceparent(headers)[1] != trace_id  # fresh each time


@pytest.mark.parametrize("incoming", [
    f"00-{'0' * 32}-{SPAN_ID}-01",
    f"00-{TRACE_ID}-{'0' * 16}-01",
], ids=["zero-trace-id", "zero-parent-id"])
def test_an_all_zero_traceparent_starts_a_fresh_trace(incoming: str) -> None:
    _, trace_id = make_traceparent([("traceparent", incoming.encode())])
    assert trace_id not in ("0" * 32, TRACE_ID)


def test_ingest_stamps_trace_context_on_every_event(
        codec: Codec, events: list[dict[str, object]]) -> None:
    traced = source(as_json(events[0]), offset=0,
                    headers=[("traceparent", VALID_TRACEPARENT.encode())])
    untraced = source(as_json(events[1]), offset=1, headers=[])
    broken = source(as_json(events[2]), offset=2, headers=[("traceparent", b"00-xyz")])
    batch, _ = ingest([traced, untraced, broken], codec)
    assert len(batch) == 3
    assert batch.trace_ids[0] == TRACE_ID
    for traceparent, trace_id in zip(batch.traceparents, batch.trace_ids, strict=True):
        match = TRACEPARENT.match(traceparent)
        assert match is not None and match.group(1) == trace_id
    fresh = {batch.trace_ids[1], batch.trace_ids[2]}
    assert len(fresh) == 2 and TRACE_ID not in fresh
    assert batch.headers[1] == []  # the original headers are carried, not rewritten


def test_every_event_of_a_batch_gets_its_own_trace_and_span_ids(
        codec: Codec, events: list[dict[str, object]]) -> None:
    batch, _ = ingest([source(as_json(event), offset=i) for i, event in enumerate(events)],
                      codec)
    spans = [TRACEPARENT.match(traceparent) for traceparent in batch.traceparents]
    assert len(batch) == len(events) and all(spans)
    assert len(set(batch.trace_ids)) == len(events)
    assert len({span.group(2) for span in spans if span}) == len(events)

"""Ingest logic without Faust: decode, check the envelope, de-duplicate, stamp trace context.

Example::

    batch, dead = ingest_batch(records, codec=Codec(), dedupe=Dedupe(), now_ms=now(),
                               partitions=12)
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter

import msgspec
import numpy as np

from tidegate.batches import Batch, Fields, field_columns, partition_for, select_fields
from tidegate.codec import Codec, Record
from tidegate.deadletter import Code, DeadLetter, Headers, SourceRecord, header_value
from tidegate.errors import CodecError, EnvelopeError
from tidegate.pipeline.dedupe import Dedupe

__all__ = ["STAGE", "Dedupe", "IngestLimits", "ingest_batch", "make_traceparent"]

STAGE = "ingest"
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
_YEAR_2000_MS = 946_684_800_000
REPLAY_HEADER = "tidegate.replay.count"
# The decoded fields travel by column in MessagePack: far cheaper to write than JSON, and it
# keeps what JSON cannot (NaN, bytes) as it is, for validation to judge.
_encode_fields = msgspec.msgpack.Encoder().encode
_PLAIN = frozenset({str, float, bool, bytes, type(None)})  # MessagePack takes any of these


@dataclass(frozen=True, kw_only=True)
class IngestLimits:
    """How far an event time may lie in the future, or in the past, before it is refused."""

    max_future_ms: int = 5 * 60_000
    min_event_time_ms: int = _YEAR_2000_MS


def make_traceparent(headers: Headers, entropy: str | None = None) -> tuple[str, str]:
    """Continue the producer's W3C trace context, or start one: (traceparent, trace id).

    ``entropy``: 48 random hex digits for the new ids (default: fresh from the OS); a batch
    draws them in one call.
    """
    entropy = entropy or os.urandom(24).hex()
    incoming = header_value(headers, "traceparent") if headers else None
    match = _TRACEPARENT.match(incoming) if incoming else None
    valid = match is not None and match.group(1).strip("0") and match.group(2).strip("0")
    trace_id = match.group(1) if match and valid else entropy[:32]
    return f"00-{trace_id}-{entropy[32:48]}-01", trace_id


def _check(event_id: object, event_time: object, limits: IngestLimits,
           now_ms: int) -> tuple[str, int]:
    if event_id is None or event_id == "":
        raise EnvelopeError(Code.MISSING_EVENT_ID, "the event has no event_id")
    if not isinstance(event_id, str) or not _UUID.fullmatch(event_id):
        raise EnvelopeError(Code.BAD_EVENT_ID, f"event_id {str(event_id)[:80]!r} is not a UUID")
    if isinstance(event_time, bool) or not isinstance(event_time, int):
        raise EnvelopeError(Code.BAD_EVENT_TIME,
                            "event_time is missing or not integer milliseconds", event_id)
    if event_time > now_ms + limits.max_future_ms:
        ahead = (event_time - now_ms) / 1000
        raise EnvelopeError(Code.EVENT_TIME_FUTURE, f"event_time is {ahead:.0f} s in the future",
                       event_id)
    if event_time < limits.min_event_time_ms:
        raise EnvelopeError(Code.BAD_EVENT_TIME, "event_time is before the year 2000", event_id)
    return event_id, event_time


def ingest_batch(
    records: Sequence[SourceRecord], *, codec: Codec, dedupe: Dedupe, now_ms: int,
    limits: IngestLimits = IngestLimits(), partitions: int = 1,
) -> tuple[Batch, list[DeadLetter]]:
    """The good records as a batch for the next stage, dead letters for the others, in order.

    Each event is routed to one of ``partitions`` by its account id (so per-account state
    downstream sees every event of an account in one partition), or by its event id when the
    account is missing.
    """
    dead: list[tuple[int, DeadLetter]] = []
    rows, columns = _decoded(records, codec, dead)
    refused: dict[int, DeadLetter] = {}  # by row of ``columns``; all filtered out once, below
    ids: list[str] = []
    times: list[int] = []
    for row, (event_id, event_time) in enumerate(zip(
            columns.get("event_id") or [None] * len(rows),
            columns.get("event_time") or [None] * len(rows), strict=True)):
        try:
            checked_id, checked_time = _check(event_id, event_time, limits, now_ms)
        except EnvelopeError as exc:
            refused[row] = DeadLetter.of(records[rows[row]], stage=STAGE, code=exc.code,
                                         error_class=type(exc).__name__, message=str(exc),
                                         event_id=exc.event_id)
            checked_id, checked_time = "", 0
        ids.append(checked_id)
        times.append(checked_time)
    for row, error in _unencodable(columns).items():
        refused.setdefault(row, DeadLetter.of(
            records[rows[row]], stage=STAGE, code=Code.UNENCODABLE,
            error_class=type(error).__name__, message=str(error)))
    # only an id that is accepted counts as seen: a refused record may come again, corrected
    checked = [row for row in range(len(rows)) if row not in refused]
    repeated = dedupe.seen_many([ids[row] for row in checked], now_ms)
    for row, again in zip(checked, repeated, strict=True):
        source = records[rows[row]]
        if again and not (source.headers and
                          header_value(source.headers, REPLAY_HEADER) is not None):
            refused[row] = DeadLetter.of(source, stage=STAGE, code=Code.DUPLICATE_EVENT_ID,
                                         error_class=EnvelopeError.__name__,
                                         message="event_id seen before in the window",
                                         event_id=ids[row])
    if refused:
        dead.extend((rows[row], letter) for row, letter in refused.items())
        kept = [row for row in range(len(rows)) if row not in refused]
        rows, ids, times = [rows[i] for i in kept], [ids[i] for i in kept], [times[i] for i in kept]
        columns = select_fields(columns, kept)
    dead.sort(key=itemgetter(0))
    return _batch(records, rows, columns, ids, times, now_ms, partitions), [d for _, d in dead]


def _decoded(records: Sequence[SourceRecord], codec: Codec,
             dead: list[tuple[int, DeadLetter]]) -> tuple[list[int], Fields]:
    """The indexes of the records that decode and their fields, in input order; a dead letter
    for each that does not. Avro records of one flat schema are read by column, together
    (``Codec.read_columns``); the others one by one."""
    pieces = codec.read_columns([source.value for source in records])
    by_column = {row for rows, _ in pieces for row in rows}
    rows: list[int] = []
    decoded: list[Record] = []
    for index, source in enumerate(records):
        if index in by_column:
            continue
        try:
            _, fields = codec.decode_any(source.value)
        except CodecError as exc:
            dead.append((index, DeadLetter.of(source, stage=STAGE, code=exc.code,
                                              error_class=type(exc).__name__, message=str(exc))))
            continue
        rows.append(index)
        decoded.append(fields)
    if decoded or not pieces:
        pieces.append((rows, field_columns(decoded)))
    if len(pieces) == 1:
        return pieces[0]
    # several pieces: every field end to end, then put back in input order
    joined = [row for rows, _ in pieces for row in rows]
    order = np.argsort(np.array(joined), kind="stable").tolist()
    names = dict.fromkeys(name for _, fields in pieces for name in fields)
    end_to_end = {name: [value for rows, fields in pieces
                         for value in (fields.get(name) or [None] * len(rows))]
                  for name in names}
    return list(map(joined.__getitem__, order)), select_fields(end_to_end, order)


def _unencodable(columns: Fields) -> dict[int, Exception]:
    """The rows whose fields MessagePack cannot carry (an integer beyond 64 bits, an unknown
    type), with the error; the common columns (text, floats, small integers) pass at once."""
    bad: dict[int, Exception] = {}
    for values in columns.values():
        kinds = set(map(type, values))
        if kinds <= _PLAIN:
            continue
        if kinds <= _PLAIN | {int}:
            numbers = [value for value in values if type(value) is int]
            if min(numbers) >= -(2**63) and max(numbers) < 2**64:
                continue
        for row, value in enumerate(values):
            if type(value) not in _PLAIN and row not in bad:
                try:
                    _encode_fields(value)
                except (TypeError, ValueError, OverflowError) as exc:
                    bad[row] = exc
    return bad


def _batch(records: Sequence[SourceRecord], rows: list[int], columns: Fields, ids: list[str],
           times: list[int], now_ms: int, partitions: int) -> Batch:
    """The accepted records (``rows`` of ``records``) as a batch: envelope, fields, source."""
    n = len(rows)
    sources = [records[row] for row in rows]
    entropy = os.urandom(24 * n).hex()  # trace and span ids: one call per batch
    traces = [make_traceparent(source.headers, entropy[48 * i:48 * i + 48])
              for i, source in enumerate(sources)]
    accounts = [account if isinstance(account, str) else ""
                for account in columns.get("account_id") or [None] * n]
    routes = [account or event_id for account, event_id in zip(accounts, ids, strict=True)]
    return Batch(
        event_ids=ids, trace_ids=[trace_id for _, trace_id in traces],
        traceparents=[traceparent for traceparent, _ in traces], account_ids=accounts,
        event_times=np.array(times, dtype=np.int64), ingested_at=np.full(n, now_ms),
        fields=columns, source_topics=[source.topic for source in sources],
        source_partitions=np.array([source.partition for source in sources], dtype=np.int64),
        source_offsets=np.array([source.offset for source in sources], dtype=np.int64),
        source_timestamps=np.array([source.timestamp for source in sources], dtype=np.int64),
        keys=[source.key for source in sources], values=[source.value for source in sources],
        headers=[[{"key": k, "value": v} for k, v in source.headers] for source in sources],
        feature_quality=[], features=np.zeros((n, 0)),
        partitions=np.array([partition_for(route, partitions) for route in routes],
                            dtype=np.int64))

"""Internal micro-batches: many events per message on the internal topics, stored by column.

Public topics carry one record per message; between stages a message carries a whole
micro-batch (tidegate.internal.EventPack), so per-message costs are paid once per batch.
The batch is columnar: a stage decodes a few arrays per message instead of one record per event,
filters with index lists, and the feature matrix travels as one block of float64s. The events'
decoded fields travel as columns too (``Batch.fields``: field name to one value per event), so
validation and the features read a field of the whole batch without building a record per
event. The original record (key, value bytes, headers, input position) rides along untouched,
for dead letters.

Example::

    batch = Batch.from_envelopes(envelopes, partitions=[partition_for(a, 6) for a in accounts])
    for partition, message in pack(codec, batch, stage="ingest"):
        send(topic, partition=partition, value=message)
    again = unpack(codec, message, partition=partition)
"""

from __future__ import annotations

import functools
import json
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from operator import itemgetter
from typing import Any, cast

import msgspec
import numpy as np
import numpy.typing as npt
from aiokafka.partitioner import murmur2

from tidegate.codec import Codec, Record
from tidegate.deadletter import Code, DeadLetter, SourceRecord, source_record
from tidegate.errors import CodecError

__all__ = [
    "BATCH_SCHEMA",
    "LEGACY_BATCH_SCHEMA",
    "MAX_BATCH_BYTES",
    "MAX_BATCH_EVENTS",
    "PACK_SCHEMA",
    "BadBatchError",
    "Batch",
    "Fields",
    "event_letters",
    "field_columns",
    "pack",
    "pack_whole",
    "partition_for",
    "select_fields",
    "unpack",
    "unpack_messages",
]

PACK_SCHEMA = "tidegate.internal.EventPack"  # what stages write
BATCH_SCHEMA = "tidegate.internal.EventColumns"  # one Avro array per column; still read
LEGACY_BATCH_SCHEMA = "tidegate.internal.EventBatch"  # one record per event; still read
MAX_BATCH_EVENTS = 2000
MAX_BATCH_BYTES = 512 * 1024  # the broker refuses messages over 1 MiB by default
_MESSAGE_LIMIT = 900 * 1024  # an encoded chunk over this is split in two, whatever the estimate
_ENVELOPE_OVERHEAD = 200  # ids, trace context, timestamps, source position, headers

# The events' decoded fields by name, one entry per event (None where an event lacks the field);
# an empty map when the batch does not carry them (after the feature stage).
Fields = dict[str, list[Any]]

class _PackedColumns(msgspec.Struct, forbid_unknown_fields=False):
    """The MessagePack map of an EventPack, typed: a column of the wrong type is refused."""

    event_ids: list[str]
    trace_ids: list[str]
    traceparents: list[str]
    account_ids: list[str]
    event_times: bytes
    ingested_at: bytes
    source_topics: list[str]
    source_partitions: bytes
    source_offsets: bytes
    source_timestamps: bytes
    keys: list[bytes | None]
    values: list[bytes]
    headers: list[list[dict[str, Any]]]  # {"key": str, "value": bytes or None}
    feature_quality: list[str]
    field_columns: dict[str, list[Any]] = {}
    fields: list[bytes] = []  # one MessagePack map per event: written by a version before


_encode_columns = msgspec.msgpack.Encoder().encode
_decode_columns = msgspec.msgpack.Decoder(_PackedColumns).decode
_decode_fields = msgspec.msgpack.Decoder(list[dict[str, Any]]).decode
_decode_field = msgspec.msgpack.Decoder(dict[str, Any]).decode
Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]
Header = dict[str, Any]  # {"key": str, "value": bytes | None}, as Avro reads it


class BadBatchError(CodecError):
    """An internal batch message that decodes but does not hold together."""

    code = Code.BAD_BATCH


@functools.lru_cache(maxsize=65_536)
def partition_for(key: str, partitions: int) -> int:
    """Kafka's default partitioner (murmur2 of the UTF-8 key), as every Kafka client computes it.

    Routing by it keeps an account on the same partition number as the feature state's
    changelog. Cached: murmur2 in Python costs about 3 µs, and accounts repeat.
    """
    return int(murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def _ints(values: Any) -> Ints:
    return np.asarray(values, dtype=np.int64).reshape(-1)


@dataclass(eq=False, slots=True)
class Batch:
    """Columns of a micro-batch: entry ``i`` of every column belongs to event ``i``.

    ``fields`` (before features; see ``Fields``) and ``feature_quality`` (after) may be empty
    when a stage does not carry them; ``features`` has shape (events, width), width 0 before
    the feature stage. ``partitions`` is not sent: it is the internal partition each event was
    read from, or the one it is routed to.
    """

    event_ids: list[str]
    trace_ids: list[str]
    traceparents: list[str]
    account_ids: list[str]
    event_times: Ints
    ingested_at: Ints
    fields: Fields
    source_topics: list[str]
    source_partitions: Ints
    source_offsets: Ints
    source_timestamps: Ints
    keys: list[bytes | None]
    values: list[bytes]
    headers: list[list[Header]]
    feature_quality: list[str]
    features: Floats
    partitions: Ints

    def __len__(self) -> int:
        return len(self.event_ids)

    @classmethod
    def from_envelopes(cls, envelopes: Sequence[Mapping[str, Any]],
                       partitions: Sequence[int] | Ints | None = None) -> Batch:
        """A batch of per-event envelope dicts (the fields of the legacy EventBatch record; its
        ``fields`` are the event's fields as a map, or encoded as MessagePack or JSON)."""
        n = len(envelopes)
        vectors = [env.get("feature_vector", b"") for env in envelopes]
        widths = {len(vector) for vector in vectors}
        if len(widths) > 1 or (widths and next(iter(widths)) % 8):
            raise BadBatchError(f"feature vectors of mixed sizes in one batch: {sorted(widths)}")
        width = next(iter(widths)) // 8 if widths else 0
        features = np.frombuffer(b"".join(vectors), dtype="<f8")
        quality = [env.get("feature_quality", "") for env in envelopes]
        return cls(
            event_ids=[env["event_id"] for env in envelopes],
            trace_ids=[env["trace_id"] for env in envelopes],
            traceparents=[env["traceparent"] for env in envelopes],
            account_ids=[env.get("account_id", "") or "" for env in envelopes],
            event_times=_ints([env["event_time"] for env in envelopes]),
            ingested_at=_ints([env["ingested_at"] for env in envelopes]),
            fields=field_columns(_field_maps([env["fields"] for env in envelopes])),
            source_topics=[env["source_topic"] for env in envelopes],
            source_partitions=_ints([env["source_partition"] for env in envelopes]),
            source_offsets=_ints([env["source_offset"] for env in envelopes]),
            source_timestamps=_ints([env["source_timestamp"] for env in envelopes]),
            keys=[env["key"] for env in envelopes],
            values=[env["value"] for env in envelopes],
            headers=[list(env["headers"]) for env in envelopes],
            feature_quality=quality if any(quality) else [],
            features=features.reshape(n, width),
            partitions=_ints(partitions if partitions is not None else np.zeros(n)),
        )

    @classmethod
    def concat(cls, batches: Sequence[Batch]) -> Batch:
        """One batch of several, in order. Feature widths must agree.

        An optional column (``fields``, ``feature_quality``) that some batch lacks is dropped.
        """
        batches = [batch for batch in batches if len(batch)]
        if len(batches) == 1:
            return batches[0]
        if not batches:
            return cls.from_envelopes([])
        columns: dict[str, Any] = {}
        for column in _COLUMNS:
            parts = [getattr(batch, column) for batch in batches]
            if column == "features" and len({part.shape[1] for part in parts}) > 1:
                widths = sorted({part.shape[1] for part in parts})
                raise BadBatchError(f"batches with different feature widths: {widths}")
            if isinstance(parts[0], np.ndarray):
                columns[column] = np.concatenate(parts)
            elif column == "fields":
                columns[column] = _joined_fields(parts, [len(batch) for batch in batches])
            elif column in _OPTIONAL:
                columns[column] = _joined(parts, [len(batch) for batch in batches])
            else:
                columns[column] = [item for part in parts for item in part]
        return cls(**columns)

    def take(self, indexes: Sequence[int] | npt.NDArray[np.intp]) -> Batch:
        """The events at ``indexes``, in that order."""
        index = np.asarray(indexes, dtype=np.intp)
        if len(index) == len(self) and (len(index) == 0 or
                                        bool(np.all(index == np.arange(len(self))))):
            return self
        picked = index.tolist()
        columns: dict[str, Any] = {}
        for column in _COLUMNS:
            value = getattr(self, column)
            if isinstance(value, np.ndarray):
                columns[column] = value[index]
            elif column == "fields":
                columns[column] = select_fields(value, picked)
            elif column in _OPTIONAL and not value:
                columns[column] = []
            else:
                columns[column] = list(map(value.__getitem__, picked))
        return Batch(**columns)

    def source(self, index: int) -> SourceRecord:
        """The original input record of event ``index``, for a dead letter."""
        return SourceRecord(
            topic=self.source_topics[index], partition=int(self.source_partitions[index]),
            offset=int(self.source_offsets[index]),
            timestamp=int(self.source_timestamps[index]), key=self.keys[index],
            value=self.values[index],
            headers=[(h["key"], h["value"]) for h in self.headers[index]],
        )

    def by_field(self) -> Fields:
        """The events' fields by name; a batch that no longer carries them (after the feature
        stage) raises BadBatchError."""
        if not self.fields and len(self):
            raise BadBatchError("this batch no longer carries the event fields")
        return self.fields

    def records(self) -> list[dict[str, Any]]:
        """Every event's fields as a map (a field the event lacks is None): for code that
        wants records; the stages read ``fields`` by column."""
        fields = self.by_field()
        return [dict(zip(fields, row, strict=True))
                for row in zip(*fields.values(), strict=True)] if fields else []

    def ages_ms(self) -> list[float]:
        """Milliseconds since each event was ingested: the latency so far."""
        ages: list[float] = (time.time() * 1000 - self.ingested_at).tolist()
        return ages

    def with_features(self, matrix: Floats, quality: Sequence[str]) -> Batch:
        """The same events carrying features instead of fields (later stages need no fields)."""
        return replace(self, features=np.ascontiguousarray(matrix, dtype=np.float64),
                       feature_quality=list(quality), fields={})


_COLUMNS = tuple(f.name for f in fields(Batch))
_OPTIONAL = frozenset({"fields", "feature_quality"})
_SENT = tuple(name for name in _COLUMNS if name != "partitions")
_INTS = {"event_times": "<i8", "ingested_at": "<i8", "source_partitions": "<i4",
         "source_offsets": "<i8", "source_timestamps": "<i8"}


def _joined(parts: list[list[Any]], sizes: list[int]) -> list[Any]:
    """An optional column of several batches; missing from one, it is missing from the whole.

    (A batch of the legacy format still carries its fields after the feature stage.)
    """
    if any(len(part) != size for part, size in zip(parts, sizes, strict=True)):
        return []
    return [item for part in parts for item in part]


def _joined_fields(parts: list[Fields], sizes: list[int]) -> Fields:
    """The fields of several batches: a field one batch lacks is None for its events; missing
    from one batch altogether, the fields are missing from the whole."""
    if any(not part and size for part, size in zip(parts, sizes, strict=True)):
        return {}
    names = list(dict.fromkeys(name for part in parts for name in part))
    joined: Fields = {}
    for name in names:
        column: list[Any] = []
        for part, size in zip(parts, sizes, strict=True):
            column.extend(part.get(name) or [None] * size)
        joined[name] = column
    return joined


def select_fields(fields: Fields, rows: Sequence[int]) -> Fields:
    """The fields of the events at ``rows``, in that order."""
    return {name: list(map(values.__getitem__, rows)) for name, values in fields.items()}


def field_columns(records: Sequence[Mapping[str, Any]]) -> Fields:
    """The fields of ``records`` by name (None where a record lacks one), in one pass when every
    record has the same fields in the same order, as records of one Avro schema do."""
    if not records:
        return {}
    first = records[0]
    names = tuple(first)
    if all(len(record) == len(names) for record in records):
        try:
            if len(names) == 1:
                return {names[0]: [record[names[0]] for record in records]}
            if names:
                rows = list(map(itemgetter(*names), records))
                return {name: list(column)
                        for name, column in zip(names, zip(*rows, strict=True), strict=True)}
        except KeyError:  # the same number of fields, not the same fields
            pass
    every = list(dict.fromkeys(name for record in records for name in record))
    return {name: [record.get(name) for record in records] for name in every}


def _field_maps(encoded: Sequence[bytes | Mapping[str, Any]]
                ) -> Sequence[Mapping[str, Any]]:
    """Per-event fields as written by a version before: MessagePack maps, or JSON objects from
    the version before that (or maps already)."""
    try:
        if all(isinstance(field, bytes) and field[:1] != b"{" for field in encoded):
            # n maps one after another are an array of n maps once an array header leads
            array = b"\xdd" + len(encoded).to_bytes(4, "big") + b"".join(
                cast(Sequence[bytes], encoded))
            parsed: list[dict[str, Any]] = _decode_fields(array)
            return parsed
        return [field if not isinstance(field, bytes) else json.loads(field)
                if field[:1] == b"{" else _decode_field(field) for field in encoded]
    except (ValueError, msgspec.DecodeError) as exc:
        raise BadBatchError(f"unreadable event fields: {exc}") from exc


def pack(codec: Codec, batch: Batch, *, stage: str) -> Iterator[tuple[int, bytes]]:
    """One encoded EventPack message per (partition, chunk) of ``batch``.

    A partition's events are picked straight into its messages, and the sizes that decide the
    chunks are reckoned once for the batch: building a batch per partition first (``take``)
    and sizing each one again cost about 80 µs per message, six times what the whole batch
    in one message cost, at 100 events."""
    if not len(batch):
        return
    now = int(time.time() * 1000)
    sizes = _sizes(batch)
    for partition in np.unique(batch.partitions).tolist():
        rows = np.flatnonzero(batch.partitions == partition)
        for start, stop in _spans(sizes[rows]):
            for message in _encoded(codec, batch, rows[start:stop], stage=stage, now=now):
                yield int(partition), message


def pack_whole(codec: Codec, batch: Batch, *, stage: str) -> Iterator[bytes]:
    """One encoded EventPack message per chunk of the whole ``batch``, whatever the
    partitions of its events."""
    if not len(batch):
        return
    now = int(time.time() * 1000)
    for start, stop in _spans(_sizes(batch)):
        yield from _encoded(codec, batch, slice(start, stop), stage=stage, now=now)


def _sizes(batch: Batch) -> Ints:
    """Each event's estimated share of a message. The estimate counts the value twice (the
    original bytes and the fields decoded from it); ``_encoded`` splits a chunk it got wrong."""
    fixed = _ENVELOPE_OVERHEAD + 8 * batch.features.shape[1]
    sizes: Ints = (np.fromiter(map(len, batch.values), dtype=np.int64, count=len(batch))
                   * (2 if batch.fields else 1) + fixed)
    sizes += np.fromiter((len(key) if key else 0 for key in batch.keys), dtype=np.int64,
                         count=len(batch))
    for index, headers in enumerate(batch.headers):
        for header in headers:
            sizes[index] += 8 + len(header["key"]) + len(header["value"] or b"")
    return sizes


def _spans(sizes: Ints) -> Iterator[tuple[int, int]]:
    """Slices of events of these ``sizes`` that stay well under the broker's 1 MiB message
    limit, whatever the event size."""
    start = 0
    while start < len(sizes):
        ends = np.cumsum(sizes[start:start + MAX_BATCH_EVENTS])
        stop = start + max(1, int(np.searchsorted(ends, MAX_BATCH_BYTES, side="right")))
        yield start, stop
        start = stop


Rows = slice | npt.NDArray[np.intp]  # the events of one message: a run, or picked ones


def _picker(rows: Rows) -> Callable[[Any], Any]:
    """The entries of a column (an array, or a list: a tuple of them) at ``rows``. One
    ``itemgetter`` for every column of a message picks in C, where a ``map`` per column took
    about two thirds of the time of a batch's split into partitions."""
    if isinstance(rows, slice):
        return lambda value: value[rows]
    picked = rows.tolist()
    get = itemgetter(*picked) if len(picked) > 1 else lambda value: (value[picked[0]],)
    return lambda value: value[rows] if isinstance(value, np.ndarray) else get(value)


def _encoded(codec: Codec, batch: Batch, rows: Rows, *, stage: str, now: int
             ) -> Iterator[bytes]:
    """The EventPack of the events at ``rows``, in two halves (and so on) if too large."""
    message = codec.encode(PACK_SCHEMA, _packed(batch, rows, stage=stage, now=now))
    count = _count(rows)
    if len(message) <= _MESSAGE_LIMIT or count == 1:
        yield message
        return
    if isinstance(rows, slice):
        start = rows.start or 0
        halves: tuple[Rows, Rows] = (slice(start, start + count // 2),
                                     slice(start + count // 2, start + count))
    else:
        halves = (rows[:count // 2], rows[count // 2:])
    for half in halves:
        yield from _encoded(codec, batch, half, stage=stage, now=now)


def _count(rows: Rows) -> int:
    return (rows.stop - (rows.start or 0)) if isinstance(rows, slice) else len(rows)


def _packed(batch: Batch, rows: Rows, *, stage: str, now: int) -> dict[str, Any]:
    """An EventPack record: the envelope in Avro, the columns in one MessagePack map."""
    pick = _picker(rows)
    columns: dict[str, Any] = {}
    for column in _SENT:
        value = getattr(batch, column)
        if column == "features":
            continue
        if column == "fields":
            columns["field_columns"] = {name: pick(values) for name, values in value.items()}
        elif column in _INTS:
            columns[column] = pick(value).astype(_INTS[column], copy=False).tobytes()
        elif column in _OPTIONAL and not value:
            columns[column] = value
        else:
            columns[column] = pick(value)
    return {"batch_id": uuid.uuid4().hex, "stage": stage, "created_at": now,
            "count": _count(rows), "feature_width": int(batch.features.shape[1]),
            "features": pick(batch.features).astype("<f8", copy=False).tobytes(),
            "columns": _encode_columns(columns)}


def unpack(codec: Codec, value: bytes, *, partition: int = 0) -> Batch:
    """The events of one internal batch message (columnar, or the legacy one record per event).

    Raises a ``CodecError`` (BAD_BATCH when the columns do not agree) for an unreadable message.
    """
    record = codec.decode(value)
    if "events" in record:  # written by a version before the columnar format
        events: list[Record] = record["events"]
        return Batch.from_envelopes(events, np.full(len(events), partition))
    try:
        if "columns" in record:
            packed = _decode_columns(record["columns"])
            record = {**record, **msgspec.structs.asdict(packed)}
            columns = record.pop("field_columns")
            if columns or not record["fields"]:
                record["fields"] = columns
        if isinstance(record["fields"], list):  # one encoded map per event: a version before
            record["fields"] = field_columns(_field_maps(record["fields"]))
        return _columns(record, partition)
    except (KeyError, ValueError, TypeError, msgspec.DecodeError) as exc:
        raise BadBatchError(f"unreadable internal batch: {exc}") from exc


def _columns(record: Record, partition: int) -> Batch:
    n = record["count"]
    width = record["feature_width"]
    columns: dict[str, Any] = {}
    for column in _SENT:
        value = record[column]
        if column == "features":
            value = np.frombuffer(value, dtype="<f8").reshape(n, width)
        elif column in _INTS:
            value = np.frombuffer(value, dtype=_INTS[column]).astype(np.int64)
        if column == "fields":
            for name, values in value.items():
                if len(values) != n:
                    raise BadBatchError(f"field {name} has {len(values)} entries for {n} events")
        elif len(value) != n and not (column in _OPTIONAL and len(value) == 0):
            raise BadBatchError(f"column {column} has {len(value)} entries for {n} events")
        columns[column] = value
    return Batch(**columns, partitions=np.full(n, partition, dtype=np.int64))


def unpack_messages(codec: Codec, events: Sequence[Any], *, stage: str
                    ) -> tuple[list[Batch], list[DeadLetter]]:
    """The batches of internal batch messages (Faust-shaped events), one per message, and a
    BAD_BATCH dead letter for each unreadable message."""
    batches: list[Batch] = []
    dead: list[DeadLetter] = []
    for event in events:
        message = event.message
        try:
            batches.append(unpack(codec, message.value, partition=message.partition))
        except CodecError as exc:
            dead.append(DeadLetter.of(source_record(event), stage=stage, code=Code.BAD_BATCH,
                                      error_class=type(exc).__name__, message=str(exc)))
    return batches, dead


def event_letters(codec: Codec, event: Any, *, stage: str, error_class: str, message: str,
                  on_traceparents: Callable[[Sequence[str]], None] | None = None,
                  ) -> list[DeadLetter]:
    """INTERNAL_ERROR dead letters for an internal batch message that failed alone, one per
    original event; BAD_BATCH for the message itself when it cannot be read.
    ``on_traceparents`` hears the events' trace contexts (the batch span links to them)."""
    try:
        batch = unpack(codec, event.message.value)
    except CodecError:
        return [DeadLetter.of(source_record(event), stage=stage, code=Code.BAD_BATCH,
                              error_class=error_class, message=message)]
    if on_traceparents is not None:
        on_traceparents(batch.traceparents)
    return [DeadLetter.of(batch.source(i), stage=stage, code=Code.INTERNAL_ERROR,
                          error_class=error_class, message=message,
                          event_id=batch.event_ids[i], trace_id=batch.trace_ids[i])
            for i in range(len(batch))]

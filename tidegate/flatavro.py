"""Avro bodies of many flat records at once, column by column with numpy.

fastavro writes one record per call; for the predictions topic (one message per event, 13
fields) that cost about 9.5 µs a record, the largest single item in inference's profile. A
flat record (fields of string, bytes, int, long, float, double or boolean, each possibly in a
``["null", T]`` union) encodes column by column instead: fixed-width fields as byte views of
numpy arrays, varints for every row of a column at once, and one scatter per field into a
buffer that is then cut into the records' bodies. The bytes are exactly fastavro's (a test
compares them on random records).

Anything else, a nested schema or a value the fast path does not take as it is (a missing
field, a bool where a long is due, a long beyond 64 bits), returns None, and the caller writes
those records with fastavro, which also produces the error for a bad value.

Example::

    writer = FlatWriter.compile(parsed_schema)       # None: not a flat record schema
    bodies = writer.write_all(records, b"\\xc3\\x01...") if writer else None
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["FlatWriter", "flat_fields"]

Bytes = npt.NDArray[np.uint8]
Segment = tuple[Bytes, npt.NDArray[np.int64]]  # the rows' bytes end to end, each row's length
_PRIMITIVES = frozenset({"string", "bytes", "int", "long", "float", "double", "boolean"})
_INT_RANGE = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}


class _NotFlatError(Exception):
    """A value the column path does not take as it is: the caller falls back to fastavro."""


@dataclass(frozen=True)
class _Field:
    name: str
    kind: str
    nullable: bool  # ["null", kind]


class FlatWriter:
    """Writes the bodies of many records of one flat record schema."""

    def __init__(self, fields: Sequence[_Field]) -> None:
        self.fields = tuple(fields)
        names = [field.name for field in self.fields]
        getter = operator.itemgetter(*names)
        self._values: Callable[[Mapping[str, Any]], tuple[Any, ...]] = (
            getter if len(names) > 1 else lambda record: (getter(record),))

    @classmethod
    def compile(cls, parsed: Mapping[str, Any]) -> FlatWriter | None:
        """A writer for a parsed record schema whose every field is flat, else None."""
        fields = flat_fields(parsed)
        return cls([_Field(*field) for field in fields]) if fields else None

    def write_all(self, records: Sequence[Mapping[str, Any]],
                  prefix: bytes = b"") -> list[bytes] | None:
        """``prefix`` plus each record's body; None when a value needs fastavro's own path."""
        if not records:
            return []
        try:
            # one C-level pass: each record's values as a tuple, then transposed to columns
            columns = zip(*map(self._values, records), strict=True)
        except (KeyError, TypeError):
            return None
        return self._written(list(map(list, columns)), len(records), prefix)

    def write_columns(self, columns: Mapping[str, Sequence[Any]], rows: int,
                      prefix: bytes = b"") -> list[bytes] | None:
        """``write_all`` of ``rows`` records given by field (each column ``rows`` long)."""
        if not rows:
            return []
        try:
            values = [list(columns[field.name]) for field in self.fields]
        except KeyError:
            return None
        if any(len(column) != rows for column in values):
            return None
        return self._written(values, rows, prefix)

    def _written(self, columns: list[list[Any]], rows: int, prefix: bytes) -> list[bytes] | None:
        try:
            segments: list[Segment] = []
            for field, column in zip(self.fields, columns, strict=True):
                segments += _encode(field, column)
        except (_NotFlatError, TypeError, ValueError, OverflowError, UnicodeError):
            return None
        return _assemble(segments, rows, prefix)


def flat_fields(parsed: Mapping[str, Any]) -> list[tuple[str, str, bool]] | None:
    """(name, kind, nullable) of each field of a flat record schema; None for any other."""
    if not isinstance(parsed, Mapping) or parsed.get("type") != "record":
        return None
    fields = []
    for field in parsed.get("fields", []):
        kind, nullable = _kind(field.get("type"))
        if kind is None:
            return None
        fields.append((str(field["name"]), kind, nullable))
    return fields or None


def _kind(schema: Any) -> tuple[str | None, bool]:
    if isinstance(schema, Mapping):
        if schema.get("type") in _PRIMITIVES and set(schema) <= {"type", "logicalType"} and (
                schema.get("logicalType") in (None, "timestamp-millis")
                and (schema.get("logicalType") is None or schema["type"] == "long")):
            return str(schema["type"]), False
        return None, False
    if isinstance(schema, str):
        return (schema, False) if schema in _PRIMITIVES else (None, False)
    if isinstance(schema, list) and len(schema) == 2 and schema[0] == "null":
        kind, nested = _kind(schema[1])
        return (kind, True) if kind is not None and not nested else (None, False)
    return None, False


def _encode(field: _Field, column: list[Any]) -> list[Segment]:
    """The field's segments: for a union, the branch index first, then the values."""
    if not field.nullable:
        return _VALUES[field.kind](column)
    present = np.fromiter((value is not None for value in column), dtype=bool,
                          count=len(column))
    # zig-zag varints of the branch index: 0 (null) is 0x00, 1 is 0x02
    branch: Segment = (present.astype(np.uint8) * 2, np.ones(len(column), dtype=np.int64))
    out = [branch]
    for values, lengths in _VALUES[field.kind]([value for value in column if value is not None]):
        every = np.zeros(len(column), dtype=np.int64)
        every[present] = lengths
        out.append((values, every))
    return out


def _fixed(data: npt.NDArray[Any]) -> list[Segment]:
    width = data.dtype.itemsize
    return [(data.view(np.uint8).reshape(-1), np.full(len(data), width, dtype=np.int64))]


def _only(column: list[Any], *types: type) -> None:
    """Raise unless every value is exactly of one of ``types`` (a bool is not an int here)."""
    if not set(map(type, column)) <= set(types):
        raise _NotFlatError


def _doubles(column: list[Any]) -> list[Segment]:
    _only(column, float, int)
    return _fixed(np.asarray(column, dtype="<f8"))


def _floats(column: list[Any]) -> list[Segment]:
    _only(column, float, int)
    return _fixed(np.asarray(column, dtype="<f4"))


def _booleans(column: list[Any]) -> list[Segment]:
    _only(column, bool)
    return _fixed(np.asarray(column, dtype=np.uint8))


def _integers(kind: str) -> Callable[[list[Any]], list[Segment]]:
    low, high = _INT_RANGE[kind]

    def encode(column: list[Any]) -> list[Segment]:
        _only(column, int)  # a bool, a float or a datetime: fastavro decides
        if column and (min(column) < low or max(column) > high):
            raise _NotFlatError
        return [_varints(np.asarray(column, dtype=np.int64))]

    return encode


def _varints(values: npt.NDArray[np.int64]) -> Segment:
    """Zig-zag base-128 varints of every value, as Avro writes an int or a long."""
    zigzag = (values.astype(np.uint64) << np.uint64(1)) ^ (values >> 63).astype(np.uint64)
    # 7 bits a byte: as many byte columns as the largest value needs, at most 10
    width = max(1, -(-int(zigzag.max(initial=0)).bit_length() // 7))
    groups = np.zeros((len(values), width), dtype=np.uint8)
    lengths = np.ones(len(values), dtype=np.int64)
    rest = zigzag
    for index in range(width):
        low = (rest & np.uint64(0x7F)).astype(np.uint8)
        rest = rest >> np.uint64(7)
        more = rest != 0
        groups[:, index] = low | (more.astype(np.uint8) << 7)
        lengths += more
    if width == 1:
        return groups.reshape(-1), lengths
    keep = np.arange(width) < lengths[:, None]
    return groups[keep], lengths


def _texts(column: list[Any]) -> list[Segment]:
    _only(column, str)
    joined = "".join(column)
    if joined.isascii():  # one encode for all; a character is a byte
        return _blobs(joined.encode(), column)
    encoded = [value.encode() for value in column]
    return _blobs(b"".join(encoded), encoded)


def _bytes(column: list[Any]) -> list[Segment]:
    _only(column, bytes)
    return _blobs(b"".join(column), column)


def _blobs(joined: bytes, items: list[Any]) -> list[Segment]:
    """Avro's length-prefixed bytes: each row's length as a varint, then its bytes."""
    sizes = np.fromiter(map(len, items), dtype=np.int64, count=len(items))
    return [_varints(sizes), (np.frombuffer(joined, dtype=np.uint8), sizes)]


_VALUES: dict[str, Callable[[list[Any]], list[Segment]]] = {
    "string": _texts, "bytes": _bytes, "int": _integers("int"), "long": _integers("long"),
    "float": _floats, "double": _doubles, "boolean": _booleans,
}


def _assemble(segments: Sequence[Segment], rows: int, prefix: bytes) -> list[bytes]:
    """Row ``i`` of every segment in order, after ``prefix``: the records' framed bodies."""
    lengths = np.full(rows, len(prefix), dtype=np.int64)
    for _, seg_lengths in segments:
        lengths += seg_lengths
    ends = np.cumsum(lengths)
    out = np.empty(int(ends[-1]), dtype=np.uint8)
    offset = ends - lengths  # where each row's next segment goes
    if prefix:
        out[np.add.outer(offset, np.arange(len(prefix))).reshape(-1)] = np.tile(
            np.frombuffer(prefix, dtype=np.uint8), rows)
        offset += len(prefix)
    counting = np.arange(len(out))
    for data, seg_lengths in segments:
        begins = np.cumsum(seg_lengths) - seg_lengths
        out[np.repeat(offset - begins, seg_lengths) + counting[:len(data)]] = data
        offset += seg_lengths
    body = out.tobytes()
    stops = ends.tolist()
    return [body[start:stop] for start, stop in zip([0, *stops[:-1]], stops, strict=True)]

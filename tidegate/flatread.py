"""Avro bodies of many flat records read at once, column by column with numpy.

fastavro reads one record per call, about 7 µs for the example's 19-field transaction: a
quarter of ingest's profile. Records of one flat schema (fields of string, bytes, int, long,
float, double or boolean, each possibly in a ``["null", T]`` union; see ``tidegate.flatavro``)
read column by column instead: for each field in turn, every record's varint, fixed-width value
or length-prefixed text at once, from one buffer of all the bodies, each record's read position
moving on by what it read. Texts of a field become Python strings in one decode and one split.

The values are exactly fastavro's (a test compares them on random records). Anything the column
path does not read as fastavro would, or cannot vouch for (a body that ends early or has bytes
left, a union branch or boolean byte out of range, a varint beyond 64 bits, text that is not
UTF-8), makes ``read_all`` return None, and the caller reads those bodies one by one with
fastavro, which also words the error for a bad one.

Example::

    reader = FlatReader.compile(reading_schema)      # None: not a flat record schema
    columns = reader.read_all(bodies) if reader else None   # {field: [value per body]}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from tidegate.flatavro import flat_fields

__all__ = ["FlatReader"]

Positions = npt.NDArray[np.int64]
_MAX_VARINT = 10  # a 64-bit value takes at most ten 7-bit groups
_SEPARATOR = 0  # between a field's texts when they are decoded together


class _UnreadableError(Exception):
    """The column path cannot vouch for these bodies: the caller reads them with fastavro."""


class FlatReader:
    """Reads the bodies of many records of one flat record schema into columns."""

    def __init__(self, fields: Sequence[tuple[str, str, bool]]) -> None:
        self.fields = tuple(fields)  # (name, kind, nullable)

    @classmethod
    def compile(cls, parsed: Mapping[str, Any]) -> FlatReader | None:
        """A reader for a parsed record schema whose every field is flat, else None (also for
        a logical type, which fastavro would turn into another type: read the schema with
        logical types dropped, as the codec does)."""
        fields = flat_fields(parsed)
        if not fields or "logicalType" in repr(parsed.get("fields")):
            return None
        return cls(fields)

    def read_all(self, bodies: Sequence[bytes]) -> dict[str, list[Any]] | None:
        """Each field's values, one per body in order; None when fastavro must read them."""
        if not bodies:
            return {name: [] for name, _, _ in self.fields}
        data = b"".join(bodies)
        sizes = np.fromiter(map(len, bodies), dtype=np.int64, count=len(bodies))
        ends = np.cumsum(sizes)
        read = _Read(np.frombuffer(data + bytes(_MAX_VARINT), dtype=np.uint8), data, ends - sizes,
                     ends)
        try:
            columns = {name: read.field(kind, nullable) for name, kind, nullable in self.fields}
        except _UnreadableError:
            return None
        if not np.array_equal(read.pos, ends):  # a body with bytes left over
            return None
        return columns


class _Read:
    """Every body's read position in one buffer (padded, so a read past an end stays inside)."""

    def __init__(self, buffer: npt.NDArray[np.uint8], data: bytes, starts: Positions,
                 ends: Positions) -> None:
        self.buffer, self.data, self.pos, self.ends = buffer, data, starts.copy(), ends

    def field(self, kind: str, nullable: bool) -> list[Any]:
        if not nullable:
            return self.values(kind, self.pos, np.arange(len(self.pos)))
        branch = self.varint(np.arange(len(self.pos)))
        if ((branch != 0) & (branch != 1)).any():
            raise _UnreadableError
        present = np.flatnonzero(branch == 1)
        column: list[Any] = [None] * len(self.pos)
        for row, value in zip(present.tolist(), self.values(kind, self.pos[present], present),
                              strict=True):
            column[row] = value
        return column

    def values(self, kind: str, at: Positions, rows: npt.NDArray[np.intp]) -> list[Any]:
        """The values of ``rows`` (read positions ``at``), their positions moved past them."""
        if kind in ("int", "long"):
            numbers: list[Any] = self.varint(rows).tolist()
            return numbers
        if kind in ("double", "float", "boolean"):
            width = {"double": 8, "float": 4, "boolean": 1}[kind]
            self.check(rows, width)
            raw = self.buffer[at[:, None] + np.arange(width)]
            self.pos[rows] += width
            if kind == "boolean":
                if (raw > 1).any():
                    raise _UnreadableError
                return [bool(flag) for flag in raw[:, 0].tolist()]
            typed = raw.reshape(-1).view("<f8" if kind == "double" else "<f4")
            floats: list[Any] = typed.astype(np.float64).tolist()
            return floats
        lengths = self.varint(rows)
        if (lengths < 0).any():
            raise _UnreadableError
        self.check(rows, lengths)
        starts = self.pos[rows]
        self.pos[rows] += lengths
        if kind == "bytes":
            data = self.data
            return [data[a:b] for a, b in zip(starts.tolist(), (starts + lengths).tolist(),
                                              strict=True)]
        return self.texts(starts, lengths)

    def texts(self, starts: Positions, lengths: Positions) -> list[Any]:
        """The UTF-8 texts at ``starts``: gathered with a separator between, decoded once."""
        if not len(starts):
            return []
        spans = lengths + 1  # each text and its separator
        total = int(spans.sum())
        index = np.repeat(starts - (np.cumsum(spans) - spans), spans) + np.arange(total)
        gathered = self.buffer[index]
        gathered[np.cumsum(spans) - 1] = _SEPARATOR
        if np.count_nonzero(gathered == _SEPARATOR) != len(starts):
            raise _UnreadableError  # a text holds the separator itself: read them one by one
        try:
            joined = gathered[:-1].tobytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _UnreadableError from exc
        texts: list[Any] = joined.split(chr(_SEPARATOR))
        if len(texts) != len(starts):
            raise _UnreadableError
        return texts

    def varint(self, rows: npt.NDArray[np.intp]) -> npt.NDArray[np.int64]:
        """The zig-zag varint at each of ``rows``' positions, as Avro writes an int or a long."""
        at = self.pos[rows]
        value = np.zeros(len(rows), dtype=np.uint64)
        length = np.zeros(len(rows), dtype=np.int64)
        going = np.ones(len(rows), dtype=bool)
        for group in range(_MAX_VARINT):
            byte = self.buffer[at + group].astype(np.uint64)
            if group == _MAX_VARINT - 1 and (going & ((byte & np.uint64(0x7F)) > 1)).any():
                raise _UnreadableError  # beyond 64 bits
            value |= np.where(going, (byte & np.uint64(0x7F)) << np.uint64(7 * group), 0
                              ).astype(np.uint64)
            length += going
            going &= (byte & np.uint64(0x80)) != 0
            if not going.any():
                break
        else:
            raise _UnreadableError  # more than ten groups
        self.check(rows, length)
        self.pos[rows] += length
        signed = (value >> np.uint64(1)).astype(np.int64) ^ -(value & np.uint64(1)).astype(
            np.int64)
        return signed

    def check(self, rows: npt.NDArray[np.intp], width: int | Positions) -> None:
        """Raise when reading ``width`` bytes at ``rows`` would run past a body's end."""
        if (self.pos[rows] + width > self.ends[rows]).any():
            raise _UnreadableError

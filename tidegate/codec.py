"""Avro and JSON codecs with self-describing framing, and the catalog of Avro schemas.

Framed Avro names its writer schema: Avro single-object encoding (0xC3 0x01, the 8-byte
CRC-64-AVRO fingerprint of the schema's Parsing Canonical Form, the body) by default, or the
Confluent wire format (0x00, a 4-byte schema id, the body) when a schema registry is configured.
Decoded records hold plain values, as JSON records do: logical types are ignored on read, so
timestamps stay epoch milliseconds and validation sees one shape for both formats.

Example::

    data = encode("tidegate.Label", {"event_id": "e1", "label": True, "labelled_at": 0})
    decode_any(data)   # ('avro', {'event_id': 'e1', 'label': True, 'labelled_at': 0})
"""

from __future__ import annotations

import base64
import http.client
import importlib.resources
import json
import os
import struct
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import msgspec
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError
from fastavro.schema import SchemaParseException, fingerprint, to_parsing_canonical_form

from tidegate.errors import (
    BadMagicError,
    CodecError,
    ConfigError,
    EmptyValueError,
    EncodeError,
    IncompatibleSchemaError,
    InvalidJsonError,
    InvalidSchemaError,
    InvalidUtf8Error,
    MalformedAvroError,
    NotAnObjectError,
    SchemaRegistryRejectedError,
    SchemaRegistryUnavailableError,
    TrailingBytesError,
    TruncatedAvroError,
    UnknownSchemaError,
)
from tidegate.flatavro import FlatWriter
from tidegate.flatread import FlatReader

__all__ = [
    "CONFLUENT_MAGIC", "SINGLE_OBJECT_MAGIC", "AvroSchema", "Codec", "Encoder", "Format", "Record",
    "SchemaRegistryClient", "add_schema", "decode", "decode_any", "decode_batch", "decode_body",
    "decode_json", "encode", "encode_body", "schema", "schema_names",
]

Record = dict[str, Any]
Format = Literal["avro", "confluent", "json"]
Encoder = Callable[[Mapping[str, Any]], bytes]
_Plan = tuple[Any, Any, str]  # writer schema, reader schema or None, schema name
_K = TypeVar("_K")
_V = TypeVar("_V")

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"
_SINGLE_HEADER = 10
_CONFLUENT_HEADER = 5
_JSON_FIRST = frozenset(bytes([c]) for c in b'{["-0123456789tfn \t\r\n')
_ENCODE_ERRORS = (TypeError, ValueError, KeyError, AttributeError, IndexError, OverflowError,
                  struct.error)
_BODY_ERRORS = (EOFError, ValueError, IndexError, KeyError, TypeError, OverflowError, struct.error)
_MAX_CACHED = 10_000
_REGISTRY_TYPE = "application/vnd.schemaregistry.v1+json"
_loads = json.loads
_fast_loads = msgspec.json.decode


def _why(exc: object, limit: int = 200) -> str:
    text = str(exc)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _put(cache: dict[_K, _V], key: _K, value: _V) -> _V:
    """Insert into a cache bounded at _MAX_CACHED entries, dropping the oldest."""
    if len(cache) >= _MAX_CACHED:
        del cache[next(iter(cache))]
    cache[key] = value
    return value


def _plain(node: Any) -> Any:
    """The schema without logicalType annotations (defaults are data, left alone)."""
    if isinstance(node, dict):
        return {k: v if k == "default" else _plain(v)
                for k, v in node.items() if k != "logicalType"}
    return [_plain(item) for item in node] if isinstance(node, list) else node


@dataclass(frozen=True, slots=True, eq=False)
class AvroSchema:
    """One Avro record schema, parsed once, with its CRC-64-AVRO fingerprint (little-endian)."""

    name: str
    raw: Mapping[str, Any]
    parsed: Any  # for writing: accepts datetimes for timestamp fields
    reading: Any  # for reading: logical types dropped
    fingerprint: bytes
    flat: FlatWriter | None = None  # many records at once, for a flat schema

    @classmethod
    def from_json(cls, raw: Any) -> AvroSchema:
        """Parse a schema dict. Example: ``AvroSchema.from_json({"type": "record", ...})``."""
        if not isinstance(raw, dict) or raw.get("type") != "record":
            raise InvalidSchemaError("a tidegate Avro schema must be a JSON object of type record")
        try:
            parsed, reading = parse_schema(raw), parse_schema(_plain(raw))
            canonical = to_parsing_canonical_form(raw)
        except (SchemaParseException, ValueError, TypeError, KeyError) as exc:
            raise InvalidSchemaError(f"invalid Avro schema {raw.get('name')!r}: {exc}") from exc
        digest = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
        return cls(str(cast(dict[str, Any], parsed)["name"]), raw, parsed, reading, digest,
                   FlatWriter.compile(raw))

    def write(self, record: Mapping[str, Any], prefix: bytes = b"") -> bytes:
        """``prefix`` plus the Avro body of ``record``. Example: ``schema(name).write(record)``."""
        out = BytesIO()
        out.write(prefix)
        try:
            schemaless_writer(out, self.parsed, record)
        except _ENCODE_ERRORS as exc:
            raise EncodeError(f"{self.name}: {_why(exc)}") from exc
        return out.getvalue()

    def write_all(self, records: Sequence[Mapping[str, Any]], prefix: bytes = b"") -> list[bytes]:
        """``write`` for many records at once: one buffer for all, then sliced. Example:
        ``schema(name).write_all([a, b], header)``."""
        if self.flat is not None:  # column by column; None: a value only fastavro takes
            bodies = self.flat.write_all(records, prefix)
            if bodies is not None:
                return bodies
        out = BytesIO()
        ends = []
        for index, record in enumerate(records):
            out.write(prefix)
            try:
                schemaless_writer(out, self.parsed, record)
            except _ENCODE_ERRORS as exc:
                raise EncodeError(f"{self.name} (record {index}): {_why(exc)}") from exc
            ends.append(out.tell())
        data = out.getbuffer()
        return [bytes(data[start:end]) for start, end in zip([0, *ends], ends, strict=False)]

    def write_columns(self, columns: Mapping[str, Sequence[Any]], rows: int,
                      prefix: bytes = b"") -> list[bytes]:
        """``write_all`` of ``rows`` records given by field. Example:
        ``schema(name).write_columns({"a": [1, 2]}, 2, header)``."""
        if self.flat is not None:
            bodies = self.flat.write_columns(columns, rows, prefix)
            if bodies is not None:
                return bodies
        names = list(columns)
        return self.write_all([dict(zip(names, row, strict=True))
                               for row in zip(*columns.values(), strict=True)], prefix)

    def read(self, body: bytes, reader: AvroSchema | None = None) -> Record:
        """Decode a bare body written with this schema. Example: ``schema(name).read(body)``."""
        same = reader is None or reader.fingerprint == self.fingerprint
        return _read(body, 0, self.reading, None if same else cast(AvroSchema, reader).reading,
                     self.name)


def _read(value: bytes, start: int, writer: Any, reader: Any, name: str) -> Record:
    fo = BytesIO(value)
    fo.seek(start)
    try:
        record = schemaless_reader(fo, writer, reader)
    except SchemaResolutionError as exc:
        raise IncompatibleSchemaError(f"{name}: {_why(exc)}") from exc
    except _BODY_ERRORS as exc:
        # Running out of bytes is an EOFError, or an IndexError inside a varint.
        if isinstance(exc, EOFError) or (isinstance(exc, IndexError) and fo.tell() >= len(value)):
            raise TruncatedAvroError(f"{name}: the body ends early") from exc
        raise MalformedAvroError(f"{name}: {_why(exc)}") from exc
    if fo.tell() != len(value):
        raise TrailingBytesError(f"{name}: {len(value) - fo.tell()} bytes left after the body")
    return cast(Record, record)


_current: dict[str, AvroSchema] = {}
_by_fingerprint: dict[bytes, AvroSchema] = {}
_codecs: weakref.WeakSet[Codec] = weakref.WeakSet()


def _register(avro: AvroSchema, *, current: bool) -> AvroSchema:
    _by_fingerprint[avro.fingerprint] = avro
    if current:
        _current[avro.name] = avro
    for codec in _codecs:
        codec._forget()
    return avro


def add_schema(source: str | os.PathLike[str] | Mapping[str, Any], *,
               current: bool = True) -> AvroSchema:
    """Add a user schema (.avsc path or dict); ``current=False`` adds an older writer version.

    Example: ``add_schema("schemas/shop_order.avsc").name   # 'shop.Order'``
    """
    try:
        if isinstance(source, Mapping):
            raw = json.loads(json.dumps(source))  # a deep copy the caller cannot change
        else:
            raw = json.loads(Path(source).read_text("utf-8"))
    except (OSError, ValueError, TypeError) as exc:
        raise InvalidSchemaError(f"cannot read Avro schema {source!s:.80}: {_why(exc)}") from exc
    return _register(AvroSchema.from_json(raw), current=current)


def schema(name: str) -> AvroSchema:
    """The current schema with this full name. Example: ``schema("tidegate.Label").fingerprint``."""
    found = _current.get(name)
    if found is None:
        raise UnknownSchemaError(f"no schema named {name!r}; known: {', '.join(schema_names())}")
    return found


def schema_names() -> list[str]:
    """Full names of the current schemas. Example: ``"tidegate.Prediction" in schema_names()``."""
    return sorted(_current)


def encode_body(schema_name: str, record: Mapping[str, Any]) -> bytes:
    """Avro body without framing, for internal topics. Example: ``encode_body(name, batch)``."""
    return schema(schema_name).write(record)


def decode_body(schema_name: str, body: bytes) -> Record:
    """Decode a body written by encode_body. Example: ``decode_body(name, data)["batch_id"]``."""
    return schema(schema_name).read(body)


def decode_json(value: bytes) -> Record:
    """Decode a UTF-8 JSON object, types as sent. Example: ``decode_json(b'{"a": 1}')``.

    msgspec parses first (about half the cost of the standard library); what it refuses (a
    NaN literal, a number beyond a double, a lone surrogate, anything malformed) goes to the
    standard library, which accepts the first three as before and words the errors.
    """
    try:
        fast = _fast_loads(value)
    except (msgspec.DecodeError, RecursionError):
        pass
    else:
        if type(fast) is dict:
            return fast
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidUtf8Error(f"JSON value is not UTF-8 at byte {exc.start}") from exc
    try:
        record = _loads(text)
    except (ValueError, RecursionError) as exc:
        raise InvalidJsonError(f"JSON does not parse: {_why(exc)}") from exc
    if type(record) is not dict:
        raise NotAnObjectError(f"JSON value is a {type(record).__name__}, not an object")
    return record


class SchemaRegistryClient:
    """A small Confluent Schema Registry client over HTTP; ids and schemas are cached.

    Example: ``SchemaRegistryClient("http://registry:8081").register("t-value", schema(name))  # 1``
    """

    def __init__(self, url: str, *, timeout: float = 5.0, miss_ttl: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError("the schema registry URL must look like http(s)://host:port")
        netloc = parts.netloc.rpartition("@")[2]  # credentials go in a header, never in messages
        self.url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        self._headers = {"Accept": _REGISTRY_TYPE, "Content-Type": _REGISTRY_TYPE}
        if parts.username:
            unquote = urllib.parse.unquote
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self._headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        self._timeout, self._miss_ttl, self._clock = timeout, miss_ttl, clock
        self._ids: dict[tuple[str, bytes], int] = {}
        self._schemas: dict[int, AvroSchema] = {}
        self._missing: dict[int, float] = {}  # id -> until when a 404 is remembered

    def register(self, subject: str, avro: AvroSchema) -> int:
        """The id of ``avro`` under ``subject``, registering it the first time."""
        found = self._ids.get((subject, avro.fingerprint))
        if found is not None:
            return found
        path = f"/subjects/{urllib.parse.quote(subject, safe='')}/versions"
        try:
            reply = self._call("POST", path, {"schema": json.dumps(avro.raw)})
        except UnknownSchemaError as exc:
            raise SchemaRegistryRejectedError(f"schema registry: {exc}") from exc
        schema_id = reply.get("id")
        if type(schema_id) is not int:
            raise SchemaRegistryUnavailableError(f"schema registry POST {path}: no id in reply")
        _put(self._schemas, schema_id, avro)
        return _put(self._ids, (subject, avro.fingerprint), schema_id)

    def lookup(self, schema_id: int) -> AvroSchema:
        """The writer schema with this id; UnknownSchemaError when the registry has none."""
        found = self._schemas.get(schema_id)
        if found is not None:
            return found
        if self._missing.get(schema_id, float("-inf")) > self._clock():
            raise UnknownSchemaError(f"schema id {schema_id} is not in the schema registry")
        try:
            reply = self._call("GET", f"/schemas/ids/{schema_id}")
        except UnknownSchemaError:
            _put(self._missing, schema_id, self._clock() + self._miss_ttl)
            raise
        if reply.get("schemaType", "AVRO") != "AVRO":
            raise UnknownSchemaError(f"schema id {schema_id} is {reply['schemaType']}, not Avro")
        try:
            avro = AvroSchema.from_json(json.loads(reply["schema"]))
        except (KeyError, TypeError, ValueError, InvalidSchemaError) as exc:
            raise UnknownSchemaError(f"schema id {schema_id} is unusable: {_why(exc)}") from exc
        return _put(self._schemas, schema_id, avro)

    def _call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data, self._headers, method=method)
        where = f"schema registry {method} {path}"
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                reply = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:  # the registry says why in the body: {"error_code": ..., "message": ...}
                detail = f"{where}: HTTP {exc.code} {_why(exc.read().decode('utf-8', 'replace'))}"
            except (OSError, http.client.HTTPException):
                detail = f"{where}: HTTP {exc.code}"
            exc.close()
            if exc.code == 404:
                raise UnknownSchemaError(f"{where}: not found") from exc
            if exc.code >= 500 or exc.code in (408, 429):
                raise SchemaRegistryUnavailableError(detail) from exc
            raise SchemaRegistryRejectedError(detail) from exc
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise SchemaRegistryUnavailableError(f"{where}: {_why(exc)}") from exc
        if not isinstance(reply, dict):
            raise SchemaRegistryUnavailableError(f"{where}: reply is not a JSON object")
        return reply


class Codec:
    """Frames and reads records: single-object Avro, or Confluent framing with a registry.

    Example: ``Codec(registry_url=settings.schema_registry_url).decode_any(message.value())``
    """

    def __init__(self, *, registry_url: str | None = None,
                 registry: SchemaRegistryClient | None = None) -> None:
        if registry is None and registry_url:
            registry = SchemaRegistryClient(registry_url)
        self.registry = registry
        self._plans: dict[str | None, dict[bytes, _Plan]] = {}
        self._encoders: dict[tuple[str, str | None], Encoder] = {}
        self._flat: dict[bytes, FlatReader | None] = {}
        _codecs.add(self)

    def _forget(self) -> None:
        self._plans.clear()
        self._encoders.clear()
        self._flat.clear()

    def encoder(self, schema_name: str, *, topic: str | None = None) -> Encoder:
        """A function framing records of one schema. Example: ``to_bytes = codec.encoder(name)``.

        With a registry the schema is registered under ``<topic>-value`` (or its full name).
        """
        avro, header = self._framing(schema_name, topic)
        write = avro.write
        return lambda record: write(record, header)

    def _framing(self, schema_name: str, topic: str | None) -> tuple[AvroSchema, bytes]:
        avro = schema(schema_name)
        if self.registry is None:
            return avro, SINGLE_OBJECT_MAGIC + avro.fingerprint
        subject = f"{topic}-value" if topic else avro.name
        return avro, CONFLUENT_MAGIC + self.registry.register(subject, avro).to_bytes(4, "big")

    def batch_encoder(self, schema_name: str, *, topic: str | None = None
                      ) -> Callable[[Sequence[Mapping[str, Any]]], list[bytes]]:
        """``encoder`` for whole batches: one call frames every record of a list. Example:
        ``to_values = codec.batch_encoder(name); to_values([a, b])``."""
        avro, header = self._framing(schema_name, topic)
        write_all = avro.write_all
        return lambda records: write_all(records, header)

    def columns_encoder(self, schema_name: str, *, topic: str | None = None
                        ) -> Callable[[Mapping[str, Sequence[Any]], int], list[bytes]]:
        """``batch_encoder`` for records given by field: ``to_values({"a": [1, 2]}, 2)``."""
        avro, header = self._framing(schema_name, topic)
        write_columns = avro.write_columns
        return lambda columns, rows: write_columns(columns, rows, header)

    def encode(self, schema_name: str, record: Mapping[str, Any], *,
               topic: str | None = None) -> bytes:
        """One framed record. Example: ``codec.encode("tidegate.Label", label)``."""
        encode = self._encoders.get((schema_name, topic))
        if encode is None:
            encode = self.encoder(schema_name, topic=topic)
            _put(self._encoders, (schema_name, topic), encode)
        return encode(record)

    def decode(self, value: bytes, reader_schema: str | None = None) -> Record:
        """Framed Avro to a record in the current (or given) schema: ``codec.decode(data)``."""
        return self._decode_avro(value, reader_schema)[1]

    def decode_any(self, value: bytes, reader_schema: str | None = None) -> tuple[Format, Record]:
        """Avro in either framing or a JSON object: ``codec.decode_any(b'{"a": 1}')``."""
        if not value:
            raise EmptyValueError("the value is empty")
        if value[:1] in _JSON_FIRST:
            return "json", decode_json(value)
        return self._decode_avro(value, reader_schema)

    def decode_batch(self, values: Iterable[bytes], reader_schema: str | None = None
                     ) -> list[tuple[Format, Record] | CodecError]:
        """decode_any over a batch, a bad value's error in its place: ``codec.decode_batch(vs)``.

        Registry outages still raise (SchemaRegistryUnavailableError): retry the batch.
        """
        decode = self.decode_any
        out: list[tuple[Format, Record] | CodecError] = []
        append = out.append
        for value in values:
            try:
                append(decode(value, reader_schema))
            except CodecError as exc:
                append(exc)
        return out

    def read_columns(self, values: Sequence[bytes], *, least: int = 32
                     ) -> list[tuple[list[int], dict[str, list[Any]]]]:
        """The Avro values of ``values`` read by column where that gives what ``decode_any``
        gives: per writer schema met ``least`` times or more that is flat and is the current
        one, the indexes of its values and their fields (``tidegate.flatread``). A value in no
        group is for ``decode_any``, one by one (which also words the error of a bad one).

        Example: ``for rows, fields in codec.read_columns(values): ...``
        """
        groups: dict[bytes, list[int]] = {}
        for index, value in enumerate(values):
            framing = _framing_of(value)
            if framing is not None:
                groups.setdefault(framing[1], []).append(index)
        read = []
        for header, rows in groups.items():
            reader = self._flat_reader(header) if len(rows) >= least else None
            size = len(header)
            fields = reader.read_all([values[row][size:] for row in rows]) if reader else None
            if fields is not None:
                read.append((rows, fields))
        return read

    def _flat_reader(self, header: bytes) -> FlatReader | None:
        """The column reader of ``header``'s writer schema when it is flat and current."""
        if header in self._flat:
            return self._flat[header]
        try:
            writer, reader, _ = self._planned(header, None)
        except CodecError:  # unknown or truncated: each value's own read says so
            return None
        flat = FlatReader.compile(writer) if reader is None else None
        _put(self._flat, header, flat)
        return flat

    def _decode_avro(self, value: bytes, reader_schema: str | None) -> tuple[Format, Record]:
        framing = _framing_of(value)
        if framing is not None:
            fmt, header = framing
        elif not value:
            raise EmptyValueError("the value is empty")
        elif value == SINGLE_OBJECT_MAGIC[:1]:
            raise TruncatedAvroError("the single-object header needs 10 bytes")
        else:
            raise BadMagicError(f"first byte 0x{value[0]:02x} starts neither Avro nor JSON")
        writer, reader, name = self._planned(header, reader_schema)
        return fmt, _read(value, len(header), writer, reader, name)

    def _planned(self, header: bytes, reader_schema: str | None) -> _Plan:
        """The cached reading plan of ``header`` (writer, reader, name), made on first use."""
        plans = self._plans.get(reader_schema)
        plan = None if plans is None else plans.get(header)
        return plan if plan is not None else self._plan(header, reader_schema)

    def _plan(self, header: bytes, reader_schema: str | None) -> _Plan:
        if header[:1] == CONFLUENT_MAGIC:
            if len(header) < _CONFLUENT_HEADER:
                raise TruncatedAvroError("the Confluent header needs 5 bytes")
            schema_id = int.from_bytes(header[1:], "big")
            if self.registry is None:
                raise UnknownSchemaError(f"schema id {schema_id}: no schema registry configured")
            writer = self.registry.lookup(schema_id)
        else:
            if len(header) < _SINGLE_HEADER:
                raise TruncatedAvroError("the single-object header needs 10 bytes")
            found = _by_fingerprint.get(header[2:])
            if found is None:
                raise UnknownSchemaError(f"no schema has fingerprint {header[2:].hex()}")
            writer = found
        reader = _current.get(writer.name) if reader_schema is None else schema(reader_schema)
        same = reader is None or reader.fingerprint == writer.fingerprint
        plan = (writer.reading, None if same else cast(AvroSchema, reader).reading, writer.name)
        return _put(self._plans.setdefault(reader_schema, {}), header, plan)


def _framing_of(value: bytes) -> tuple[Format, bytes] | None:
    """An Avro value's framing and header (single-object or Confluent), or None."""
    if value[:2] == SINGLE_OBJECT_MAGIC:
        return "avro", value[:_SINGLE_HEADER]
    if value[:1] == CONFLUENT_MAGIC:
        return "confluent", value[:_CONFLUENT_HEADER]
    return None


def _load_shipped() -> None:
    folder = importlib.resources.files("tidegate") / "schemas"
    for entry in sorted(folder.iterdir(), key=lambda item: item.name):
        if entry.name.endswith(".avsc"):
            _register(AvroSchema.from_json(json.loads(entry.read_text("utf-8"))), current=True)


_load_shipped()
_default = Codec()
encode = _default.encode
decode = _default.decode
decode_any = _default.decode_any
decode_batch = _default.decode_batch

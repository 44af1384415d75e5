"""A catalogue of bad records and an injector that mixes them into a good stream.

Each ``BadKind`` names the stage that must reject it and the stable error code it must get, so a
test can check that every injected record ends in the right dead-letter topic with the right code.
Avro-level kinds mutate already-encoded single-object bytes (``C3 01``, 8-byte fingerprint,
body), so the injector needs no codec: it is handed an ``encode_avro`` callable.

Framing contract assumed for ingest: first byte ``0xC3`` is Avro single-object encoding, ``0x00``
the Confluent wire format, a first non-blank byte that can start JSON (``{`` ``[`` ``"``, digit,
``-``, ``t`` ``f`` ``n``) is JSON; anything else is ``BAD_MAGIC``.
"""

from __future__ import annotations

import json
import random
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from tidegate.errors import TidegateError

__all__ = [
    "ALL_KINDS",
    "AvroEncoder",
    "BadKind",
    "BadRecordInjector",
    "kind_by_name",
    "list_kinds",
]

AvroEncoder = Callable[[dict[str, object]], bytes]
Stage = Literal["ingest", "validation"]
Encoding = Literal["avro", "json", "either"]

_AVRO_HEADER = 10  # 0xC3 0x01 + 8-byte fingerprint
_DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class BadKind:
    """One way a record can be bad: who must reject it, with which code, and how it is framed.

    ``encoding`` is ``avro`` (mutated Avro bytes), ``json`` (only expressible in JSON) or
    ``either`` (Avro when the schema can carry it, else JSON). ``field`` is the offending field.
    """

    name: str
    stage: Stage
    code: str
    encoding: Encoding
    description: str
    field: str | None = None


_k = BadKind

ALL_KINDS: tuple[BadKind, ...] = (
    _k("truncated_avro", "ingest", "TRUNCATED_AVRO", "avro", "Avro body cut short"),
    _k("bad_magic", "ingest", "BAD_MAGIC", "avro", "first byte is no known framing"),
    _k("unknown_schema", "ingest", "UNKNOWN_SCHEMA", "avro", "fingerprint bits flipped"),
    _k("invalid_json", "ingest", "INVALID_JSON", "json", "JSON text cut before its end"),
    _k("invalid_utf8", "ingest", "INVALID_UTF8", "json", "JSON with bytes that are not UTF-8"),
    _k("not_an_object", "ingest", "NOT_AN_OBJECT", "json", "a JSON array, not an object"),
    _k("missing_event_id", "ingest", "MISSING_EVENT_ID", "json", "no event_id", "event_id"),
    _k("bad_event_id", "ingest", "BAD_EVENT_ID", "either", "event_id is no UUID", "event_id"),
    _k("duplicate_event_id", "ingest", "DUPLICATE_EVENT_ID", "either",
       "byte copy of an earlier good event", "event_id"),
    _k("event_time_future", "ingest", "EVENT_TIME_FUTURE", "either",
       "event_time a year ahead of now", "event_time"),
    _k("missing_event_time", "ingest", "BAD_EVENT_TIME", "json", "no event_time", "event_time"),
    _k("event_time_not_int", "ingest", "BAD_EVENT_TIME", "json", "event_time is a string",
       "event_time"),
    _k("missing_account_id", "validation", "REQUIRED", "json", "no account_id", "account_id"),
    _k("amount_wrong_type", "validation", "WRONG_TYPE", "json", 'amount is "12.x"', "amount"),
    _k("amount_nan", "validation", "NOT_FINITE", "either", "amount is NaN", "amount"),
    _k("amount_infinite", "validation", "NOT_FINITE", "either", "amount is +inf", "amount"),
    _k("amount_negative", "validation", "OUT_OF_RANGE", "either", "amount below 0", "amount"),
    _k("amount_too_large", "validation", "OUT_OF_RANGE", "either", "amount above 1e6", "amount"),
    _k("unknown_category", "validation", "NOT_ALLOWED", "either", "merchant_category unknown",
       "merchant_category"),
    _k("unknown_currency", "validation", "NOT_ALLOWED", "either", "currency not ISO 4217",
       "currency"),
    _k("description_too_long", "validation", "TOO_LONG", "either", "8 KiB description",
       "description"),
)
_BY_NAME = {k.name: k for k in ALL_KINDS}


def list_kinds(stage: Stage | None = None) -> tuple[BadKind, ...]:
    """Every catalogued kind, optionally only those one stage must reject.

    >>> sorted({k.code for k in list_kinds("validation")})[:2]
    ['NOT_ALLOWED', 'NOT_FINITE']
    """
    return tuple(k for k in ALL_KINDS if stage is None or k.stage == stage)


def kind_by_name(name: str) -> BadKind:
    """Look a kind up by its ``name``; raises ``KeyError`` for an unknown one."""
    return _BY_NAME[name]


def _json(event: Mapping[str, object]) -> bytes:
    return json.dumps(event, separators=(",", ":"), allow_nan=True).encode()


class BadRecordInjector:
    """Turns good events into message values, corrupting a share ``rate`` of them.

    Good records come out as Avro, or as JSON for a share ``json_share``. Deterministic for a
    seed. ``last_event_id`` is the id the last value carries: use it as the message key, so a
    duplicate lands on its original's partition.

    >>> from tidegate.codec import Codec
    >>> from tidegate.example.generator import TransactionGenerator
    >>> to_avro = Codec().encoder("tidegate.example.CardTransaction")
    >>> inj = BadRecordInjector(seed=1, rate=0.05)
    >>> for event, _ in TransactionGenerator(seed=1).generate(100):
    ...     value, expected = inj.inject(event, to_avro)  # key: inj.last_event_id
    """

    def __init__(self, seed: int = 0, rate: float = 0.01, kinds: Sequence[BadKind] = ALL_KINDS,
                 *, json_share: float = 0.2, memory: int = 1024,
                 clock: Callable[[], float] = time.time) -> None:
        if not 0.0 <= rate <= 1.0 or not 0.0 <= json_share <= 1.0 or memory < 1:
            raise ValueError("need 0 <= rate <= 1, 0 <= json_share <= 1 and memory >= 1")
        self.rate = rate
        self.json_share = json_share
        self.kinds = tuple(kinds)
        self.last_event_id: str | None = None
        self._rng = random.Random(seed)
        self._clock = clock
        self._recent: deque[tuple[str, bytes]] = deque(maxlen=memory)

    def inject(self, event: Mapping[str, object], encode_avro: AvroEncoder
               ) -> tuple[bytes, BadKind | None]:
        """Return ``(value_bytes, expected)``: ``expected`` is None for a good record."""
        rng = self._rng
        if self.kinds and rng.random() < self.rate:
            kinds = self.kinds if self._recent else tuple(
                k for k in self.kinds if k.name != "duplicate_event_id")
            if kinds:
                kind = rng.choice(kinds)
                return self.corrupt(kind, event, encode_avro), kind
        as_json = rng.random() < self.json_share
        good = dict(event)
        value = _json(good) if as_json else encode_avro(good)
        self.last_event_id = str(good.get("event_id"))
        self._recent.append((self.last_event_id, value))
        return value, None

    def corrupt(self, kind: BadKind, event: Mapping[str, object], encode_avro: AvroEncoder
                ) -> bytes:
        """Make a value of exactly this ``kind`` from a good event (which is not modified).

        Raises ``LookupError`` for ``duplicate_event_id`` before any good record was emitted.
        """
        rng, bad = self._rng, dict(event)
        self.last_event_id = str(bad["event_id"]) if "event_id" in bad else None
        match kind.name:
            case "truncated_avro":
                raw = encode_avro(bad)
                return raw[: _AVRO_HEADER + rng.randrange(max(len(raw) - _AVRO_HEADER, 1))]
            case "bad_magic":
                return bytes([rng.choice((0xFF, 0xFE, 0xC4, 0x01))]) + encode_avro(bad)[1:]
            case "unknown_schema":
                flipped = bytearray(encode_avro(bad))
                for i, m in enumerate(rng.randbytes(min(8, len(flipped) - 2))):
                    flipped[2 + i] ^= m | (1 if i == 0 else 0)  # at least one bit flips
                return bytes(flipped)
            case "invalid_json":
                text = _json(bad)
                return text[: rng.randrange(1, len(text))]
            case "invalid_utf8":
                bad["description"] = "\x00MARK\x00"
                return _json(bad).replace(b"\\u0000MARK\\u0000", b"\xff\xfe bad \xc3\x28")
            case "not_an_object":
                return b"[" + _json(bad) + b"]"
            case "missing_event_id":
                del bad["event_id"]
            case "bad_event_id":
                eid = str(bad["event_id"])
                bad["event_id"] = rng.choice(("not-a-uuid", eid[:-1] + "g", eid[:8]))
            case "duplicate_event_id":
                if not self._recent:
                    raise LookupError("no earlier good record to duplicate yet")
                self.last_event_id, value = rng.choice(self._recent)
                return value
            case "event_time_future":
                bad["event_time"] = int(self._clock() * 1000) + 365 * _DAY_MS
            case "missing_event_time":
                del bad["event_time"]
            case "event_time_not_int":
                bad["event_time"] = "2024-01-01T00:00:00Z"
            case "missing_account_id":
                del bad["account_id"]
            case "amount_wrong_type":
                bad["amount"] = "12.x"
            case "amount_nan":
                bad["amount"] = float("nan")
            case "amount_infinite":
                bad["amount"] = float("inf")
            case "amount_negative":
                bad["amount"] = -round(rng.uniform(0.01, 500.0), 2)
            case "amount_too_large":
                bad["amount"] = round(rng.uniform(1.0e6 + 1, 1.0e9), 2)
            case "unknown_category":
                bad["merchant_category"] = "teleportation"
            case "unknown_currency":
                bad["currency"] = "ZZZ"
            case "description_too_long":
                bad["description"] = "X" * 8192
            case _:
                raise ValueError(f"unknown bad-record kind {kind.name!r}")
        return self._frame(kind, bad, encode_avro)

    def _frame(self, kind: BadKind, bad: dict[str, object], encode_avro: AvroEncoder) -> bytes:
        if kind.encoding == "either" and self._rng.random() >= self.json_share:
            try:
                return encode_avro(bad)
            except (ValueError, TypeError, OverflowError, KeyError, TidegateError):
                pass  # the Avro schema cannot carry this defect (e.g. an enum): send JSON instead
        return _json(bad)

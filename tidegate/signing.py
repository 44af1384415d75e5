"""Signed control commands: HMAC-SHA256 over a command's fields, checked by every stage.

Anyone who can write the control topic can steer the pipeline, so with ``TIDEGATE_CONTROL_KEY``
set, a command must carry a signature by a known key, be fresh, and be new: the stages reject
an unsigned, forged, expired or replayed command, keep their mode, and audit the rejection.

The key setting is ``ID:SECRET`` pairs separated by commas; the first signs, every one verifies,
so a rotation adds the new key in front, waits until every process has it, and drops the old
one later. A bare ``SECRET`` is the key id ``default``.

Freshness is judged by the broker's clock: the control topic stamps records at append
(``LogAppendTime``), and a command whose own time is more than ``max_age`` from its record's
stamp is expired. A command recovered from the compacted topic after a restart still matches
the stamp it got when it was issued; a replay written later does not. A command id seen again
at a different offset is a replay; at the same offset it is a redelivery, applied once.

Example::

    keys = ControlKeys.parse("k2:new-secret-of-16+chars,k1:old-secret-of-16+chars")
    signed = sign(command("ingest", "pause", reason="r", issuer="bob"), keys)
    gate = CommandGate(keys, max_age=300.0)
    gate.check(signed, offset=7, logged_ms=signed["time"])   # None: accepted
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from tidegate.errors import ConfigError

__all__ = ["CommandGate", "ControlKeys", "Rejection", "RejectionReason", "sign", "signed_fields"]

RejectionReason = Literal["unsigned", "unknown-key", "forged", "expired", "replayed"]
_MIN_SECRET = 16
_REMEMBERED = 10_000
_KEY_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


@dataclass(frozen=True)
class ControlKeys:
    """The keys commands are signed with (the first) and verified against (all)."""

    keys: tuple[tuple[str, bytes], ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> ControlKeys:
        """Keys from the setting's text; ConfigError (one line) for a malformed one."""
        if not text or not text.strip():
            return cls()
        pairs: list[tuple[str, bytes]] = []
        for part in text.split(","):
            key_id, sep, secret = part.strip().rpartition(":")
            key_id = key_id if sep else "default"
            if not key_id or not set(key_id) <= _KEY_ID_CHARS:
                raise ConfigError("a key id may hold only letters, digits, '.', '_' and '-' "
                                  "(ID:SECRET,ID:SECRET)")
            if len(secret) < _MIN_SECRET:
                raise ConfigError(f"the secret of key {key_id!r} is shorter than {_MIN_SECRET} "
                                  "characters")
            if key_id in dict(pairs):
                raise ConfigError(f"key id {key_id!r} is given twice")
            pairs.append((key_id, secret.encode()))
        return cls(tuple(pairs))

    @property
    def enabled(self) -> bool:
        """Whether commands are authenticated at all."""
        return bool(self.keys)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(key_id for key_id, _ in self.keys)

    def secret(self, key_id: str) -> bytes | None:
        return dict(self.keys).get(key_id)


def signed_fields(record: Mapping[str, Any]) -> bytes:
    """The canonical bytes a signature covers: every field of the command but the signature."""
    body = [record["id"], record["target"], record["action"],
            sorted((str(k), str(v)) for k, v in (record.get("parameters") or {}).items()),
            record["reason"], record["issuer"], int(record["time"]), record.get("key_id") or ""]
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def _mac(secret: bytes, record: Mapping[str, Any]) -> str:
    return hmac.new(secret, signed_fields(record), hashlib.sha256).hexdigest()


def sign(record: Mapping[str, Any], keys: ControlKeys) -> dict[str, Any]:
    """``record`` with ``key_id`` and ``signature`` by the first key; unchanged without keys."""
    signed = dict(record)
    if not keys.enabled:
        signed.setdefault("key_id", None)
        signed.setdefault("signature", None)
        return signed
    key_id, secret = keys.keys[0]
    signed["key_id"] = key_id
    signed["signature"] = _mac(secret, signed)
    return signed


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a command was refused, for the log and the audit topic."""

    reason: RejectionReason
    detail: str


@dataclass
class CommandGate:
    """Checks commands as they are read from the control topic; remembers ids and offsets."""

    keys: ControlKeys
    max_age: float = 300.0
    rejected: Counter[str] = field(default_factory=Counter)
    _seen: OrderedDict[str, int] = field(default_factory=OrderedDict)

    def check(self, record: Mapping[str, Any], *, offset: int,
              logged_ms: int | None) -> Rejection | None:
        """None when ``record`` (read at ``offset``, stamped ``logged_ms`` by the broker) may be
        applied, else why not. Without keys every command passes, as before signing existed."""
        if not self.keys.enabled:
            return None
        rejection = self._judge(record, offset=offset, logged_ms=logged_ms)
        if rejection is not None:
            self.rejected[rejection.reason] += 1
        return rejection

    def _judge(self, record: Mapping[str, Any], *, offset: int,
               logged_ms: int | None) -> Rejection | None:
        key_id, signature = record.get("key_id"), record.get("signature")
        if not key_id or not signature:
            return Rejection("unsigned", "the command carries no signature")
        secret = self.keys.secret(str(key_id))
        if secret is None:
            return Rejection("unknown-key", f"signed with key id {key_id!r}, not one of "
                                            f"{', '.join(self.keys.ids)}")
        if not hmac.compare_digest(_mac(secret, record), str(signature)):
            return Rejection("forged", f"the signature does not match key {key_id!r}")
        if logged_ms is not None:
            skew = abs(logged_ms - int(record["time"])) / 1000
            if skew > self.max_age:
                return Rejection("expired", f"issued {skew:.0f} s from when the broker logged it "
                                            f"(at most {self.max_age:g} s)")
        first = self._seen.get(str(record["id"]))
        if first is not None and first != offset:
            return Rejection("replayed", f"command id {record['id']} was first seen at offset "
                                         f"{first}")
        if first is None:
            self._seen[str(record["id"])] = offset
            while len(self._seen) > _REMEMBERED:
                self._seen.popitem(last=False)
        return None

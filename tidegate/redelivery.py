"""Retry topics: where a record waits out a transient failure, and what it carries meanwhile.

With ``TIDEGATE_RETRY_DELAYS`` set (seconds per attempt, ``"1,10,60"``), a record whose model
call failed transiently (a model server timed out or throttled) is not answered by the fallback
at once: it goes to the retry topic of its next attempt and is scored again once its delay has
passed, without holding up its input partition. Once every delay is spent, it is a dead letter
with code ``RETRIES_EXHAUSTED`` and one header per failed attempt.

A retry message carries these headers (its value is the stage's own input record, untouched):

- ``tidegate.retry.attempt``: the attempt the record waits for (2 after the first failure);
- ``tidegate.retry.due``: when that attempt may run, milliseconds since the epoch;
- ``tidegate.retry.error.<n>``: what attempt ``n`` failed with, JSON
  ``{"at": ms, "class": ..., "message": ...}``.

Example::

    policy = RetryPolicy((1.0, 10.0, 60.0))
    history = Attempts.of(message.headers)            # Attempts(number=1) on the input topic
    retry = policy.route(history.number)              # 1: to retry topic 1; None: spent
    later = history.failed(exc, now_ms=now)           # Attempts(number=2, failures=(...))
    headers = later.headers(due_ms=policy.due_ms(retry, now))
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from tidegate.deadletter import CONTEXT_PREFIX, Code, DeadLetter, Headers, SourceRecord

__all__ = [
    "ATTEMPT_HEADER", "DUE_HEADER", "ERROR_HEADER", "Attempts", "Failure", "RetryPolicy",
    "due_ms_of", "exhausted",
]

ATTEMPT_HEADER = "tidegate.retry.attempt"
DUE_HEADER = "tidegate.retry.due"
ERROR_HEADER = "tidegate.retry.error."  # + the attempt number
_MESSAGE_LIMIT = 300  # per attempt: a dead letter carries one per attempt

HeaderItems = Sequence[tuple[str, bytes | str | None]] | Mapping[str, bytes | str | None] | None


def _items(headers: HeaderItems) -> list[tuple[str, bytes]]:
    pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
    return [(name, value.encode() if isinstance(value, str) else value)
            for name, value in pairs if value is not None]


@dataclass(frozen=True, slots=True)
class Failure:
    """One failed attempt: when, and with what."""

    attempt: int
    at_ms: int
    error_class: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"attempt": self.attempt, "at": self.at_ms, "class": self.error_class,
                "message": self.message}

    def encode(self) -> bytes:
        return json.dumps({"at": self.at_ms, "class": self.error_class,
                           "message": self.message}, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, attempt: int, raw: bytes) -> Failure:
        try:
            data = json.loads(raw)
            return cls(attempt, int(data["at"]), str(data["class"]), str(data["message"]))
        except (ValueError, KeyError, TypeError):  # a header damaged on the way: keep its text
            return cls(attempt, 0, "?", raw.decode("utf-8", "replace")[:_MESSAGE_LIMIT])


@dataclass(frozen=True, slots=True)
class Attempts:
    """A record's history: the attempt it is on, and the failures before it."""

    number: int = 1
    failures: tuple[Failure, ...] = ()

    @classmethod
    def of(cls, headers: HeaderItems) -> Attempts:
        """The history in a message's retry headers; a record without them is on attempt 1."""
        number, failures = 1, []
        for name, value in _items(headers):
            if name == ATTEMPT_HEADER and value.isdigit():
                number = max(1, int(value))
            elif name.startswith(ERROR_HEADER) and name[len(ERROR_HEADER):].isdigit():
                failures.append(Failure.decode(int(name[len(ERROR_HEADER):]), value))
        return cls(number, tuple(sorted(failures, key=lambda failure: failure.attempt)))

    def failed(self, exc: BaseException, *, now_ms: int) -> Attempts:
        """The history once this attempt failed with ``exc``: the next attempt is due."""
        failure = Failure(self.number, now_ms, type(exc).__name__, str(exc)[:_MESSAGE_LIMIT])
        return Attempts(self.number + 1, (*self.failures, failure))

    def headers(self, *, due_ms: int) -> Headers:
        """The headers of a retry message waiting for this attempt until ``due_ms``."""
        return [(ATTEMPT_HEADER, str(self.number).encode()), (DUE_HEADER, str(due_ms).encode()),
                *((f"{ERROR_HEADER}{f.attempt}", f.encode()) for f in self.failures)]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long each retry attempt waits; no delays: retry topics off.

    >>> policy = RetryPolicy((1.0, 10.0))
    >>> policy.route(1), policy.route(2), policy.route(3)    # after attempt n failed
    (1, 2, None)
    >>> policy.due_ms(2, failed_at_ms=1_000)
    11000
    """

    delays: tuple[float, ...] = ()

    @property
    def on(self) -> bool:
        return bool(self.delays)

    def route(self, attempt: int) -> int | None:
        """The retry topic (1-based) for a record whose attempt ``attempt`` failed
        transiently, or None when its attempts are spent (the dead-letter topic)."""
        return attempt if 1 <= attempt <= len(self.delays) else None

    def due_ms(self, retry: int, *, failed_at_ms: int) -> int:
        """When a record sent to retry topic ``retry`` at ``failed_at_ms`` may run again."""
        return failed_at_ms + round(self.delays[retry - 1] * 1000)


def due_ms_of(headers: HeaderItems) -> int:
    """The due time in a retry message's headers; 0 (due now) without one."""
    for name, value in _items(headers):
        if name == DUE_HEADER and value.isdigit():
            return int(value)
    return 0


def exhausted(source: SourceRecord, attempts: Attempts, *, stage: str,
              event_id: str | None = None, trace_id: str | None = None) -> DeadLetter:
    """The dead letter of a record whose every attempt failed transiently.

    ``attempts`` is the history after the last failure. The context says how many attempts
    ran (``attempt``) and the last error; ``error.details`` lists every failure, and each has its
    own header, ``tidegate.dlq.attempt.<n>``. Replay resends the original record as usual.
    """
    failures = attempts.failures
    last = failures[-1] if failures else Failure(attempts.number, 0, "?", "unknown")
    letter = DeadLetter.of(
        source, stage=stage, code=Code.RETRIES_EXHAUSTED, error_class=last.error_class,
        message=f"{len(failures)} attempts failed transiently; the last: {last.message}",
        event_id=event_id, trace_id=trace_id, attempt=len(failures),
        details=[failure.as_dict() for failure in failures])
    per_attempt = [(f"{CONTEXT_PREFIX}attempt.{f.attempt}", f.encode()) for f in failures]
    return replace(letter, headers=[*letter.headers, *per_attempt])

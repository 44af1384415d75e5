"""Alerts with de-duplication and hold-down, and the crisis levels they add up to.

A condition is a :class:`Finding` with a stable key (``validation/dead_letter_rate``). While it
lasts, :meth:`AlertBook.fire` is called again and again but publishes one ``firing`` record, and
another only if the severity changes. Once the condition is gone, :meth:`AlertBook.resolve` waits
until it has stayed gone for ``resolve_after`` seconds before publishing ``resolved``, so a
flapping condition is one alert, not a storm. Records match ``schemas/alert.avsc``.

Crisis levels: a stage is at the level of its most severe firing alert (info counts as NORMAL);
the system is at its highest stage level, and at EMERGENCY when two or more stages are CRITICAL.

Example::

    book = AlertBook(resolve_after=30.0)
    out = book.settle(findings, now=time.time())     # firing and resolved records to publish
    book.levels()                                    # {'validation': 'WARNING', 'system': ...}
"""

from __future__ import annotations

import logging
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "LEVELS", "SEVERITIES", "ActiveAlert", "Alert", "AlertBook", "Finding", "Level", "Severity",
    "level_of", "system_level",
]  # fmt: skip

Severity = Literal["info", "warning", "critical", "emergency"]
Level = Literal["NORMAL", "WARNING", "CRITICAL", "EMERGENCY"]
SEVERITIES: tuple[Severity, ...] = ("info", "warning", "critical", "emergency")
LEVELS: tuple[Level, ...] = ("NORMAL", "WARNING", "CRITICAL", "EMERGENCY")
_LEVEL_OF: dict[str, Level] = {"info": "NORMAL", "warning": "WARNING", "critical": "CRITICAL",
                               "emergency": "EMERGENCY"}  # fmt: skip
SYSTEM = "system"
log = logging.getLogger(__name__)


def level_of(severity: str) -> Level:
    """The crisis level an alert of ``severity`` puts its stage in."""
    return _LEVEL_OF[severity]


def system_level(stages: Mapping[str, Level]) -> Level:
    """The highest stage level; EMERGENCY when two or more stages are CRITICAL or worse.

    >>> system_level({"ingest": "CRITICAL", "feature": "CRITICAL"})
    'EMERGENCY'
    """
    ranks = [LEVELS.index(level) for level in stages.values()]
    if sum(rank >= LEVELS.index("CRITICAL") for rank in ranks) >= 2:
        return "EMERGENCY"
    return LEVELS[max(ranks, default=0)]


@dataclass(frozen=True)
class Finding:
    """A condition that holds now: what an alert is fired from."""

    key: str
    severity: Severity
    stage: str
    kind: str
    message: str
    details: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Alert:
    """One alert message (a tidegate.Alert record); ``time`` is epoch milliseconds."""

    id: str
    key: str
    severity: Severity
    stage: str
    kind: str
    message: str
    status: Literal["firing", "resolved"]
    time: int
    details: dict[str, str]

    def to_record(self) -> dict[str, Any]:
        """The record as the Alert schema encodes it."""
        return {"id": self.id, "key": self.key, "severity": self.severity, "stage": self.stage,
                "kind": self.kind, "message": self.message, "status": self.status,
                "time": self.time, "details": dict(self.details)}  # fmt: skip


@dataclass
class ActiveAlert:
    """A firing alert with its latest message and details; ``since`` is epoch seconds."""

    key: str
    severity: Severity
    stage: str
    kind: str
    message: str
    details: dict[str, str]
    since: float
    clear_since: float | None = None  # the condition went away then; resolution is on hold

    def to_dict(self) -> dict[str, Any]:
        """The form the status page shows."""
        return {"key": self.key, "severity": self.severity, "stage": self.stage,
                "kind": self.kind, "message": self.message, "status": "firing",
                "since": self.since, "details": dict(self.details)}  # fmt: skip


class AlertBook:
    """Firing alerts by key, the records to publish, and a bounded history of them.

    At most ``max_active`` keys fire at once; a new key beyond that is dropped (counted in
    ``dropped`` and logged) rather than growing without bound.

    >>> book = AlertBook(resolve_after=10.0)
    >>> book.fire("feature/lag_trend", "warning", "feature", "lag_trend", "lag up", {}, 0.0).status
    'firing'
    >>> book.fire("feature/lag_trend", "warning", "feature", "lag_trend", "lag up", {}, 5.0)
    >>> book.resolve("feature/lag_trend", 6.0), book.resolve("feature/lag_trend", 16.0).status
    (None, 'resolved')
    """

    def __init__(self, *, resolve_after: float = 30.0, max_active: int = 1000,
                 history: int = 1000) -> None:  # fmt: skip
        self.resolve_after = resolve_after
        self.max_active = max_active
        self._active: dict[str, ActiveAlert] = {}
        self.history: deque[Alert] = deque(maxlen=history)
        self.dropped = 0

    def fire(self, key: str, severity: Severity, stage: str, kind: str, message: str,
             details: Mapping[str, str] | None, now: float) -> Alert | None:  # fmt: skip
        """The condition ``key`` holds at ``now``; a record to publish when this is news."""
        if severity not in _LEVEL_OF:
            raise ValueError(f"unknown severity {severity!r}; one of {', '.join(SEVERITIES)}")
        details = {str(k): str(v) for k, v in (details or {}).items()}
        current = self._active.get(key)
        if current is not None:
            current.clear_since = None  # back before the hold ran out: the same alert goes on
            current.message, current.details = message, details
            if current.severity == severity:
                return None
            current.severity = severity
        elif len(self._active) >= self.max_active:
            self.dropped += 1
            log.warning("alert %s dropped: %d alerts firing already", key, len(self._active))
            return None
        else:
            self._active[key] = ActiveAlert(key, severity, stage, kind, message, details, now)
        return self._publish(self._active[key], "firing", now)

    def fire_finding(self, finding: Finding, now: float) -> Alert | None:
        """:meth:`fire` with the fields of ``finding``."""
        return self.fire(finding.key, finding.severity, finding.stage, finding.kind,
                         finding.message, finding.details, now)  # fmt: skip

    def resolve(self, key: str, now: float, *, hold: bool = True) -> Alert | None:
        """The condition ``key`` is clear at ``now``; the resolved record once it stayed clear
        for ``resolve_after`` seconds (at once with ``hold=False``), else None."""
        current = self._active.get(key)
        if current is None:
            return None
        if current.clear_since is None:
            current.clear_since = now
        if hold and now - current.clear_since < self.resolve_after:
            return None
        del self._active[key]
        return self._publish(current, "resolved", now)

    def settle(self, findings: Iterable[Finding], now: float) -> list[Alert]:
        """Fire every finding, resolve every other firing key; the records to publish."""
        out, present = [], set()
        for finding in findings:
            present.add(finding.key)
            if (alert := self.fire_finding(finding, now)) is not None:
                out.append(alert)
        for key in [key for key in self._active if key not in present]:
            if (alert := self.resolve(key, now)) is not None:
                out.append(alert)
        return out

    def _publish(self, active: ActiveAlert, status: Literal["firing", "resolved"],
                 now: float) -> Alert:  # fmt: skip
        alert = Alert(id=uuid.uuid4().hex, key=active.key, severity=active.severity,
                      stage=active.stage, kind=active.kind, message=active.message,
                      status=status, time=int(now * 1000), details=dict(active.details))
        self.history.append(alert)
        return alert

    def active(self) -> list[ActiveAlert]:
        """Firing alerts, most severe first, then oldest first."""
        return sorted(self._active.values(),
                      key=lambda a: (-SEVERITIES.index(a.severity), a.since, a.key))

    def get(self, key: str) -> ActiveAlert | None:
        return self._active.get(key)

    def stage_levels(self, stages: Iterable[str] = ()) -> dict[str, Level]:
        """The level of each stage with a firing alert, and of each of ``stages``."""
        levels: dict[str, Level] = dict.fromkeys(stages, "NORMAL")
        for alert in self._active.values():
            level = level_of(alert.severity)
            if LEVELS.index(level) > LEVELS.index(levels.get(alert.stage, "NORMAL")):
                levels[alert.stage] = level
            else:
                levels.setdefault(alert.stage, "NORMAL")
        return levels

    def levels(self, stages: Iterable[str] = ()) -> dict[str, Level]:
        """Stage levels plus ``"system"``; a ``system`` alert counts for the system directly."""
        levels = self.stage_levels(stages)
        own = levels.pop(SYSTEM, "NORMAL")
        system = system_level(levels)
        levels[SYSTEM] = max(system, own, key=LEVELS.index)
        return levels

"""A stage's steering: its mode, the dead-letter-rate guard and the backpressure valve.

Pure state, no Kafka: the runtime feeds it control commands (recovered from the compacted
control topic, then followed), the downstream lag and each batch's dead-letter count, and asks
it whether to read. ``on_change`` hears every change, so the runtime can report it at once.
Commands pass its ``CommandGate`` first: with a control key set, an unsigned, forged, expired
or replayed command addressed to the stage is refused and the mode stays as it was.

Example::

    steering = Steering.from_settings("validation", settings, on_change=report)
    steering.receive([Received(command, offset=12, logged_ms=stamp)])  # refusals, if any
    if not steering.blocked():
        ...                       # read the next batch
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tidegate.control import SYSTEM, StageMode
from tidegate.runtime.backpressure import LagValve
from tidegate.runtime.guard import DeadLetterGuard
from tidegate.settings import Settings
from tidegate.signing import CommandGate, ControlKeys, Rejection

__all__ = ["Received", "Steering", "SteeringReport", "refusal_audit"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SteeringReport:
    """What a stage's health says about its steering."""

    mode: str
    paused: bool
    pause_reason: str | None
    guard: str


@dataclass(frozen=True, slots=True)
class Received:
    """A decoded control command, where the topic holds it and when the broker logged it."""

    record: Mapping[str, Any]
    offset: int
    logged_ms: int | None


class Steering:
    """The stage's StageMode, dead-letter guard and lag valve, and whether they block input."""

    def __init__(self, stage: str, *, guard: DeadLetterGuard, valve: LagValve,
                 gate: CommandGate | None = None,
                 on_change: Callable[[], None] | None = None) -> None:
        self.mode = StageMode(stage=stage)
        self.guard = guard
        self.valve = valve
        self.gate = gate or CommandGate(ControlKeys())
        self.on_change = on_change

    @classmethod
    def from_settings(cls, stage: str, settings: Settings, *,
                      on_change: Callable[[], None] | None = None) -> Steering:
        guard = DeadLetterGuard(
            threshold=settings.dead_letter_rate_threshold, window=settings.dead_letter_rate_window,
            minimum=settings.dead_letter_rate_minimum, wait=settings.dead_letter_rate_wait)
        valve = LagValve(high=settings.backpressure_high, low=settings.backpressure_low)
        gate = CommandGate(settings.control_keys, max_age=settings.control_max_age)
        return cls(stage, guard=guard, valve=valve, gate=gate, on_change=on_change)

    def apply(self, record: Mapping[str, Any]) -> bool:
        """Apply one decoded control command; True when it changed the mode."""
        changed = self.mode.apply(record)
        if changed:
            log.warning("control: %s %s %s (%s, by %s)", record["action"], record["target"],
                        record["parameters"] or "", record["reason"], record["issuer"])
            if record["action"] == "resume":
                self.guard.reset()  # an operator's resume also closes the dead-letter guard
        return changed

    def apply_all(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Apply commands in order, then report once."""
        for record in records:
            self.apply(record)
        self._changed()

    def receive(self, received: Sequence[Received]) -> list[tuple[Received, Rejection]]:
        """Check each command addressed to this stage, apply those that pass, report once;
        the refused ones, with why, for the log and the audit."""
        refused, accepted = [], []
        for item in received:
            if item.record.get("target") not in (self.mode.stage, SYSTEM):
                continue
            rejection = self.gate.check(item.record, offset=item.offset,
                                        logged_ms=item.logged_ms)
            if rejection is None:
                accepted.append(item.record)
            else:
                refused.append((item, rejection))
        self.apply_all(accepted)
        return refused

    def recover_guard(self, health: Sequence[Mapping[str, Any]], *, now_ms: int,
                      max_age_ms: int) -> bool:
        """Reopen the dead-letter guard if this stage's newest health event (of ``health``, in
        topic order), at most ``max_age_ms`` old, reported it open or half-open, unless an
        operator's resume came after that event. True when it reopened."""
        mine = [event for event in health if event.get("stage") == self.mode.stage]
        if not mine:
            return False
        last = mine[-1]
        state = (last.get("breakers") or {}).get("dead-letters", "closed")
        if state == "closed" or now_ms - int(last["time"]) > max_age_ms:
            return False
        flow = self.mode.last.get("flow")
        if flow is not None and flow["action"] == "resume" and int(flow["time"]) >= last["time"]:
            return False  # the operator resumed after the storm: their word wins
        self.guard.restore_open()
        log.warning("%s: the dead-letter guard was %s when the previous process stopped "
                    "(%s); starting paused, probing after %g s", self.mode.stage, state,
                    last.get("pause_reason") or "no reason", self.guard.wait)
        self._changed()
        return True

    def downstream_lag(self, lag: int) -> None:
        """The lag of the stage that reads this one's output, for the backpressure valve."""
        before = self.valve.paused
        self.valve.update(lag)
        if self.valve.paused != before:
            self._changed()

    def record_batch(self, *, records: int, dead: int) -> None:
        """Feed the dead-letter guard with a processed batch."""
        before = self.guard.state
        self.guard.record(records=records, dead=dead)
        if self.guard.state != before:
            self._changed()

    def blocked(self) -> bool:
        """Paused by a command, by backpressure, or by the dead-letter guard until its probe."""
        before = self.guard.state
        blocked = self.mode.paused or self.guard.blocked() or self.valve.paused
        if self.guard.state != before:
            self._changed()
        return blocked

    def report(self) -> SteeringReport:
        guarded = self.guard.state != "closed"
        reason = self.mode.pause_reason or (self.guard.reason() if guarded else None) or (
            f"backpressure: the next stage lags {self.valve.lag} messages "
            f"(resumes under {self.valve.low})" if self.valve.paused else None)
        return SteeringReport(
            mode=self.mode.label() + (",dead-letter-guard" if guarded else ""),
            paused=self.mode.paused or self.guard.state == "open" or self.valve.paused,
            pause_reason=reason, guard=self.guard.state)

    async def wait_while_paused(self) -> None:
        """Return at once when running; while paused, wait for a resume or the guard's probe."""
        while self.blocked():
            await asyncio.sleep(0.2)

    def _changed(self) -> None:
        if self.guard.state != "closed":
            log.warning("%s: %s (%s)", self.mode.stage, self.guard.state, self.guard.reason())
        if self.on_change is not None:
            self.on_change()


def refusal_audit(stage: str, item: Received, rejection: Rejection) -> dict[str, Any]:
    """The audit topic's record of a refused command: which stage, why, and what it said."""
    record = item.record
    return {
        "kind": "control-refused", "stage": stage, "reason": rejection.reason,
        "detail": rejection.detail, "offset": item.offset, "logged_ms": item.logged_ms,
        "time": int(time.time() * 1000),
        "command": {key: record.get(key) for key in ("id", "target", "action", "parameters",
                                                      "reason", "issuer", "time", "key_id")},
    }

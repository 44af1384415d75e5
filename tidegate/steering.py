"""A stage's side of the control plane: recover its mode, follow the control topic, obey pauses.

Example::

    steering = Steering(runtime)      # reads the control topic once, then follows it
    await steering.wait_while_paused()
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tidegate.app import input_group
from tidegate.backpressure import LagProbe, LagValve
from tidegate.cluster import client_config
from tidegate.control import StageMode
from tidegate.errors import BrokerError, CodecError
from tidegate.guard import DeadLetterGuard
from tidegate.reading import read_topic
from tidegate.topics import by_key

if TYPE_CHECKING:
    from tidegate.stage import StageRuntime

__all__ = ["Steering"]

log = logging.getLogger("tidegate.control")

_NEXT = {"ingest": "validation", "validation": "feature", "feature": "inference"}


class Steering:
    """Keeps ``runtime``'s StageMode current and reports it in the stage's health."""

    def __init__(self, runtime: StageRuntime) -> None:
        self.runtime = runtime
        self.mode = StageMode(stage=runtime.stage)
        settings = runtime.settings
        self.guard = DeadLetterGuard(
            threshold=settings.dead_letter_rate_threshold, window=settings.dead_letter_rate_window,
            minimum=settings.dead_letter_rate_minimum, wait=settings.dead_letter_rate_wait)
        self.valve = LagValve(high=settings.backpressure_high, low=settings.backpressure_low)
        self._recover(runtime.name(by_key("control")))
        self._watch_downstream()
        agent_topic = runtime.topic(by_key("control"))

        async def follow_control(stream: Any) -> None:
            async for events in stream.take_events(100, within=0.2):
                self.apply_all([event.message.value for event in events])

        runtime.app.agent(agent_topic, name="follow_control")(follow_control)

    def _watch_downstream(self) -> None:
        """Every second, the lag of the stage that reads this one's output (if one of ours)."""
        runtime = self.runtime
        following = _NEXT.get(runtime.stage)
        sink = runtime.topics.sink
        if following is None or sink is None:
            return
        probe = LagProbe(client_config(runtime.settings),
                         group=input_group(following, runtime.settings),
                         topic=runtime.name(sink))

        async def check_downstream() -> None:
            lag = await asyncio.get_running_loop().run_in_executor(None, probe.lag)
            if lag is None:
                return
            before = self.valve.paused
            self.valve.update(lag)
            runtime.metrics.extra["downstream_lag"] = str(lag)
            if self.valve.paused != before:
                self._report()

        runtime.app.timer(1.0)(check_downstream)

    def _recover(self, control: str) -> None:
        """The mode from every command still on the compacted topic (the newest per aspect)."""
        try:
            values = [m.value() or b"" for m in
                      read_topic(client_config(self.runtime.settings), control)]
        except BrokerError as exc:
            log.warning("could not read %s to recover the mode: %s", control, exc)
            return
        self.apply_all(values)

    def apply_all(self, values: Sequence[bytes]) -> None:
        for value in values:
            try:
                record = self.runtime.codec.decode(value)
            except CodecError as exc:
                log.warning("unreadable control command: %s", exc)
                continue
            if self.mode.apply(record):
                log.warning("control: %s %s %s (%s, by %s)", record["action"], record["target"],
                            record["parameters"] or "", record["reason"], record["issuer"])
                if record["action"] == "resume":
                    self.guard.reset()  # an operator's resume also closes the dead-letter guard
        self._report()

    def record_batch(self, *, records: int, dead: int) -> None:
        """Feed the dead-letter guard with a processed batch."""
        before = self.guard.state
        self.guard.record(records=records, dead=dead)
        if self.guard.state != before:
            self._report()

    def blocked(self) -> bool:
        """Paused by a command, or by the dead-letter guard until its next probe."""
        before = self.guard.state
        blocked = self.mode.paused or self.guard.blocked() or self.valve.paused
        if self.guard.state != before:
            self._report()
        return blocked

    def _report(self) -> None:
        metrics = self.runtime.metrics
        guarded = self.guard.state != "closed"
        metrics.mode = self.mode.label() + (",dead-letter-guard" if guarded else "")
        metrics.paused = self.mode.paused or self.guard.state == "open" or self.valve.paused
        metrics.pause_reason = self.mode.pause_reason or (
            self.guard.reason() if guarded else None) or (
            f"backpressure: the next stage lags {self.valve.lag} messages "
            f"(resumes under {self.valve.low})" if self.valve.paused else None)
        metrics.breakers["dead-letters"] = self.guard.state
        if guarded:
            log.warning("%s: %s (%s)", self.runtime.stage, self.guard.state, self.guard.reason())
        self.runtime.emit_health_soon()

    async def wait_while_paused(self) -> None:
        """Return at once when running; while paused, wait for a resume or the guard's probe."""
        while self.blocked():
            await asyncio.sleep(0.2)

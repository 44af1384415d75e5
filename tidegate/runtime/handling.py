"""Calling a stage's handler so that no exception escapes: every event ends somewhere.

Faust acks an event even when the agent body raises, so an escaped exception is a lost record.
A batch whose handler call raises is retried message by message; a message that still fails
becomes one ``INTERNAL_ERROR`` dead letter per original event. What the handler staged
(``Staged``) is kept only for calls that returned. The batch's trace span
(``tidegate.runtime.tracing.current_batch``) is linked to the events of every call that
returned, and marked as an error when the whole batch failed.

Example::

    handling = Handling(stage="validation", dead_letter_topic="p.dlq.validation",
                        codec=codec, metrics=metrics, internal=True)
    outgoing = await handling.run(handler, events)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from tidegate.batches import event_letters
from tidegate.codec import Codec
from tidegate.deadletter import Code, DeadLetter, source_record
from tidegate.outputs import Handler, Outgoing, Outputs, Staged
from tidegate.runtime.metrics import StageMetrics
from tidegate.runtime.tracing import current_batch

__all__ = ["Handling"]

log = logging.getLogger(__name__)


class Handling:
    """One stage's handler calls: outputs counted, failures contained, dead letters addressed.

    ``dead_letter_topic`` None (monitoring) logs and drops what it cannot process: it reads only
    its own inputs, which have no dead-letter topic.
    """

    def __init__(self, *, stage: str, dead_letter_topic: str | None, codec: Codec,
                 metrics: StageMetrics, internal: bool, staged: Sequence[Staged] = ()) -> None:
        self.stage, self.dead_letter_topic = stage, dead_letter_topic
        self.codec, self.metrics, self.internal = codec, metrics, internal
        self.staged = tuple(staged)

    async def run(self, handler: Handler, events: Sequence[Any]) -> list[Outgoing]:
        """The batch's messages: the handler's outputs, counted, with its dead letters."""
        try:
            return self._settle(await self._call(handler, events))
        except Exception as exc:
            self.metrics.record_error()
            current_batch().failed_over(exc)  # the batch span's status: ERROR
            log.exception("batch of %d failed; retrying message by message", len(events))
        outgoing: list[Outgoing] = []
        for event in events:
            try:
                outgoing.extend(self._settle(await self._call(handler, [event])))
            except Exception as exc:  # noqa: BLE001 -- isolate the poison message
                self.metrics.record_error()
                outgoing.extend(self.dead_letters(self._failure_letters(event, exc)))
        return outgoing

    def dead_letters(self, letters: Sequence[DeadLetter]) -> list[Outgoing]:
        """Messages for the stage's dead-letter topic; the metrics count them by code."""
        if not letters:
            return []
        self.metrics.record_dead_letters(letter.code for letter in letters)
        if self.dead_letter_topic is None:
            for letter in letters:
                log.error("unprocessable %s record dropped: %s", self.stage, letter.code)
            return []
        for letter in letters:
            log.info("dead letter %s", letter.code,
                     extra={"event_id": letter.event_id, "code": letter.code})
        return [Outgoing(topic=self.dead_letter_topic, key=letter.key, value=letter.value,
                         headers=letter.headers) for letter in letters]

    def _settle(self, outputs: Outputs) -> list[Outgoing]:
        self.metrics.record_batch(records_in=outputs.records_in, records_out=outputs.records_out,
                                  latencies_ms=outputs.latencies_ms)
        current_batch().link(outputs.traceparents)  # up to the cap; nothing when not traced
        return outputs.messages + self.dead_letters(outputs.dead)

    async def _call(self, handler: Handler, events: Sequence[Any]) -> Outputs:
        """One handler call; what it staged is kept for the batch only if it returned."""
        try:
            outputs = await handler(events)
        except BaseException:
            for staged in self.staged:
                staged.drop()
            raise
        for staged in self.staged:
            staged.keep()
        return outputs

    def _failure_letters(self, event: Any, exc: Exception) -> list[DeadLetter]:
        """INTERNAL_ERROR dead letters for a message that failed alone: one per original event."""
        message, error_class = str(exc) or type(exc).__name__, type(exc).__name__
        if not self.internal:
            return [DeadLetter.of(source_record(event), stage=self.stage, code=Code.INTERNAL_ERROR,
                                  error_class=error_class, message=message)]
        return event_letters(self.codec, event, stage=self.stage, error_class=error_class,
                             message=message, on_traceparents=current_batch().link)

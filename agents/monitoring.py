"""monitoring: health events and predictions in; per-stage status served over HTTP."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from tidegate.errors import CodecError
from tidegate.settings import Settings
from tidegate.stage import Outgoing, StageRuntime
from tidegate.status import StatusBoard
from tidegate.topics import by_key

__all__ = ["STAGE", "build"]

STAGE = "monitoring"
log = logging.getLogger("tidegate.monitoring")


def build(settings: Settings) -> StageRuntime:
    """The monitoring stage: ``health`` and ``predictions`` in; ``/status`` and ``/metrics``."""
    runtime = StageRuntime(STAGE, settings)
    board = StatusBoard(stale_after=max(10.0, settings.health_interval * 5))
    app = runtime.app
    predictions = runtime.topic(by_key("predictions"))

    async def watch_health(events: Sequence[Any]) -> list[Outgoing]:
        for event in events:
            try:
                board.on_health(runtime.codec.decode(event.message.value))
            except CodecError as exc:  # nothing to dead-letter to: count it and go on
                runtime.metrics.record_error()
                log.warning("unreadable health event: %s", exc)
        runtime.metrics.record_batch(records_in=len(events), records_out=0)
        return []

    async def watch_predictions(events: Sequence[Any]) -> list[Outgoing]:
        records = []
        for event in events:
            try:
                records.append(runtime.codec.decode(event.message.value))
            except CodecError as exc:
                runtime.metrics.record_error()
                log.warning("unreadable prediction: %s", exc)
        board.on_predictions(records)
        return []

    runtime.run_batches(watch_health, name="watch_health")
    runtime.run_batches(watch_predictions, name="watch_predictions", source=predictions)

    @app.page("/status")
    async def status(web: Any, request: Any) -> Any:
        return web.json(board.snapshot())

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        return web.text(board.prometheus(), content_type="text/plain; version=0.0.4")

    return runtime

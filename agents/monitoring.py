"""monitoring: health events in; per-stage status served over HTTP.

Prediction counts by path come from inference's health events rather than from reading every
prediction: a Faust hop costs more per record than scoring it (see the benchmark).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from tidegate.errors import CodecError
from tidegate.settings import Settings
from tidegate.stage import Outgoing, StageRuntime
from tidegate.status import StatusBoard

__all__ = ["STAGE", "build"]

STAGE = "monitoring"
log = logging.getLogger("tidegate.monitoring")


def build(settings: Settings) -> StageRuntime:
    """The monitoring stage: ``health`` in; ``/status`` and ``/metrics`` out."""
    runtime = StageRuntime(STAGE, settings)
    board = StatusBoard(stale_after=max(10.0, settings.health_interval * 5))
    app = runtime.app

    async def watch_health(events: Sequence[Any]) -> list[Outgoing]:
        for event in events:
            try:
                board.on_health(runtime.codec.decode(event.message.value))
            except CodecError as exc:  # nothing to dead-letter to: count it and go on
                runtime.metrics.record_error()
                log.warning("unreadable health event: %s", exc)
        runtime.metrics.record_batch(records_in=len(events), records_out=0)
        return []

    runtime.run_batches(watch_health, name="watch_health")

    @app.page("/status")
    async def status(web: Any, request: Any) -> Any:
        return web.json(board.snapshot())

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        return web.text(board.prometheus(), content_type="text/plain; version=0.0.4")

    return runtime

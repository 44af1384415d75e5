"""monitoring: health events in; status, alerts, crisis levels and automatic commands out.

Prediction counts by path come from inference's health events; predictions are read (with a
librdkafka batch reader) only to join them with labels for online accuracy. The analysis lives
in tidegate.monitoring.analyst, its inputs and outputs in tidegate.monitoring.oversight.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from prometheus_client.exposition import choose_encoder

from tidegate.errors import CodecError
from tidegate.monitoring.exposition import metrics_registry
from tidegate.monitoring.oversight import Oversight
from tidegate.monitoring.page import status_page
from tidegate.monitoring.status import History, StatusBoard
from tidegate.outputs import Outputs
from tidegate.runtime.stage import StageRuntime
from tidegate.settings import Settings

__all__ = ["HISTORY_POINTS", "STAGE", "build"]

STAGE = "monitoring"
# 24 minutes of chart points at the default two-second health interval.
HISTORY_POINTS = 720
log = logging.getLogger(__name__)


def build(settings: Settings) -> StageRuntime:
    """The monitoring stage: ``health`` in; the page (``/``), ``/status``, ``/history`` and
    ``/metrics`` out."""
    runtime = StageRuntime(STAGE, settings)
    board = StatusBoard(stale_after=max(10.0, settings.health_interval * 5))
    history = History(size=HISTORY_POINTS)
    page = status_page()
    app = runtime.app
    oversight = Oversight(runtime, board)
    snapshot = oversight.snapshot  # what /status serves and the page reads
    registry = metrics_registry(snapshot, board.batch_durations)

    async def watch_health(events: Sequence[Any]) -> Outputs:
        for event in events:
            try:
                oversight.on_health(runtime.codec.decode(event.message.value))
            except CodecError as exc:  # nothing to dead-letter to: count it and go on
                runtime.metrics.record_error()
                log.warning("unreadable health event: %s", exc)
        return Outputs(records_in=len(events))

    runtime.run_batches(watch_health, name="watch_health")

    async def record_history() -> None:
        try:
            await oversight.assess()
        except Exception:  # the next interval tries again; status stays served
            log.exception("assessment failed")
        history.record(snapshot())

    app.timer(settings.health_interval)(record_history)

    @app.page("/")
    async def index(web: Any, request: Any) -> Any:
        return web.html(page)

    @app.page("/status.html")
    async def index_html(web: Any, request: Any) -> Any:
        return web.html(page)

    @app.page("/status")
    async def status(web: Any, request: Any) -> Any:
        return web.json(snapshot())

    @app.page("/history")
    async def history_points(web: Any, request: Any) -> Any:
        since = _since(request.query.get("since"))
        return web.json({"size": history.size, "interval": settings.health_interval,
                         "points": history.points(since=since)})

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        # the text format, or OpenMetrics when the scraper asks for it
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.bytes(encode(registry), headers={"Content-Type": content_type})

    return runtime


def _since(value: str | None) -> float | None:
    """The ``since`` query parameter; anything unreadable means the whole history."""
    try:
        since = float(value) if value else None
    except ValueError:
        return None
    return since if since is not None and math.isfinite(since) else None

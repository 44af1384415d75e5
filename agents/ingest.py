"""ingest: raw bytes in; decoded, checked, de-duplicated, traced micro-batches out."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any

from tidegate.batches import Batch
from tidegate.deadletter import source_record
from tidegate.outputs import Outgoing, Outputs, forward, prediction_messages
from tidegate.pipeline.inference import shed_columns
from tidegate.pipeline.ingest import STAGE, Dedupe, IngestLimits, ingest_batch
from tidegate.runtime.stage import StageRuntime
from tidegate.settings import Settings
from tidegate.topics import by_key

__all__ = ["build"]


def build(settings: Settings) -> StageRuntime:
    """The ingest stage: consumes the input topic, produces ``ingested`` and ``dlq.ingest``."""
    runtime = StageRuntime(STAGE, settings)
    steering = runtime.follow_control()
    assert runtime.topics.sink is not None
    predictions_topic = runtime.name(by_key("predictions"))
    encode_prediction = runtime.codec.columns_encoder("tidegate.Prediction",
                                                      topic=predictions_topic)
    sink = runtime.topics.sink
    sink_name = runtime.name(sink)
    dedupe = Dedupe(window_ms=int(settings.dedupe_window_seconds * 1000))
    limits = IngestLimits(max_future_ms=int(settings.max_future_seconds * 1000))

    async def ingest_events(events: Sequence[Any]) -> Outputs:
        now_ms = int(time.time() * 1000)
        records = [source_record(event) for event in events]
        batch, dead = ingest_batch(records, codec=runtime.codec, dedupe=dedupe, now_ms=now_ms,
                                   limits=limits, partitions=sink.partitions)
        traceparents = batch.traceparents  # before shedding: shed events were handled too
        shed: list[Outgoing] = []
        if steering.mode.shed_share > 0:
            batch, dropped = _shed(batch, steering.mode.shed_share)
            shed = prediction_messages(shed_columns(dropped), dropped.traceparents,
                                       encode=encode_prediction, topic=predictions_topic)
            runtime.metrics.count("predictions.shed", len(shed))
        return Outputs(forward(runtime.codec, batch, topic=sink_name, stage=STAGE) + shed,
                       dead=dead, records_in=len(records), records_out=len(batch),
                       latencies_ms=[now_ms - r.timestamp for r in records if r.timestamp],
                       traceparents=traceparents)

    # ids count as seen once their batch is delivered
    runtime.consume(ingest_events, name="ingest_events", state=[dedupe])
    return runtime


def _shed(batch: Batch, share: float) -> tuple[Batch, Batch]:
    """Split off a random ``share`` of the accepted events, to be answered as shed."""
    drop = [random.random() < share for _ in range(len(batch))]
    return (batch.take([i for i, gone in enumerate(drop) if not gone]),
            batch.take([i for i, gone in enumerate(drop) if gone]))

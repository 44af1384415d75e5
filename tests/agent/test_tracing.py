"""Batch spans of the real stages, recorded by the OpenTelemetry SDK's in-memory exporter.

Each stage runs its real Faust agent (``drive`` from the stage tests): the runtime's batch loop
opens the span, the handling links it to the events' trace contexts, the inference handler's
model call is its child. All of a test's events ride in one internal message, so one batch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tests.agent.conftest import PREFIX, MakeSettings
from tests.agent.test_stages import Put, as_puts, drive, events
from tidegate.agents import validation
from tidegate.batches import pack
from tidegate.codec import Codec
from tidegate.deadletter import SourceRecord
from tidegate.pipeline.ingest import Dedupe, ingest_batch

pytestmark = pytest.mark.agent


def one_message(records: Sequence[dict[str, object]]) -> tuple[Put, list[str]]:
    """What ingest would write for these events, all in one internal message (partition 0),
    and the events' traceparents."""
    codec, now = Codec(), int(time.time() * 1000)
    sources = [SourceRecord(topic=PREFIX + "events", partition=0, offset=i, timestamp=now,
                            key=None, value=codec.encode("tidegate.example.CardTransaction", r),
                            headers=[]) for i, r in enumerate(records)]
    batch, dead = ingest_batch(sources, codec=codec, dedupe=Dedupe(), now_ms=now, partitions=1)
    assert dead == []
    [(partition, value)] = list(pack(codec, batch, stage="ingest"))
    return Put(value, partition), list(batch.traceparents)


def batch_span(spans: InMemorySpanExporter, stage: str) -> ReadableSpan:
    [span] = [s for s in spans.get_finished_spans() if s.name == f"{stage} batch"]
    return span


def linked(span: ReadableSpan) -> list[str]:
    """The span's links as traceparents."""
    return [f"00-{link.context.trace_id:032x}-{link.context.span_id:016x}-01"
            for link in span.links]


def test_a_batch_is_one_consumer_span_linked_to_its_events(
        make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch,
        spans: InMemorySpanExporter) -> None:
    records = events(12)
    records[3] = {**records[3], "amount": -5.0}  # dead-lettered by a rule
    put, traceparents = one_message(records)

    run = drive("validation", [put], make_settings(), monkeypatch)

    span = batch_span(spans, "validation")
    assert span.kind is SpanKind.CONSUMER
    assert span.parent is None  # a batch has many parents: links, not a parent
    attributes: dict[str, Any] = dict(span.attributes or {})
    assert attributes == {
        "messaging.system": "kafka", "messaging.operation.type": "process",
        "messaging.destination.name": PREFIX + "ingested",
        "messaging.consumer.group.name": PREFIX + "validation",
        "messaging.batch.message_count": 1, "tidegate.stage": "validation",
        "tidegate.records.in": 12, "tidegate.records.out": 11,
        "tidegate.records.dead_lettered": 1, "tidegate.links.dropped": 0,
    }
    assert linked(span) == traceparents  # every event, the dead-lettered one too
    assert span.status.status_code is StatusCode.UNSET
    assert len(run.to("validated")) == 1 and len(run.to("dlq.validation")) == 1


def test_links_stop_at_the_cap_and_the_rest_are_counted(
        make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch,
        spans: InMemorySpanExporter) -> None:
    put, traceparents = one_message(events(300))

    drive("validation", [put], make_settings(), monkeypatch)

    span = batch_span(spans, "validation")
    assert linked(span) == traceparents[:128]  # the SDK's default link limit
    assert (span.attributes or {})["tidegate.links.dropped"] == 300 - 128
    assert span.dropped_links == 0  # capped before the SDK had to drop any


class _ExplodingRules:
    def check_fields(self, fields: Any, size: int) -> Any:
        raise RuntimeError("rule engine bug")


def test_a_batch_that_failed_over_to_single_messages_is_an_error(
        make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch,
        spans: InMemorySpanExporter) -> None:
    monkeypatch.setattr(validation, "shipped_rules", lambda settings: _ExplodingRules())
    put, traceparents = one_message(events(5))

    drive("validation", [put], make_settings(), monkeypatch)

    span = batch_span(spans, "validation")
    assert span.status.status_code is StatusCode.ERROR
    [exception] = [e for e in span.events if e.name == "exception"]
    assert (exception.attributes or {})["exception.type"] == "RuntimeError"
    assert (span.attributes or {})["tidegate.records.dead_lettered"] == 5
    assert linked(span) == traceparents  # from the dead letters: the message failed alone too


def test_the_model_call_is_a_child_of_the_inference_batch(
        make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch,
        spans: InMemorySpanExporter) -> None:
    put, traceparents = one_message(events(8))
    features = drive("feature", [put], make_settings(), monkeypatch)
    [featured] = features.to("features")
    spans.clear()

    drive("inference", as_puts([featured]), make_settings(), monkeypatch)

    batch = batch_span(spans, "inference")
    [score] = [s for s in spans.get_finished_spans() if s.name == "score"]
    assert score.parent is not None and batch.context is not None
    assert score.parent.span_id == batch.context.span_id
    assert score.context is not None and score.context.trace_id == batch.context.trace_id
    assert dict(score.attributes or {}) == {"tidegate.model.rows": 8,
                                             "tidegate.model.path": "primary",
                                             "tidegate.model.version": "fraud-primary:v1"}
    assert sorted(linked(batch)) == sorted(traceparents)
    assert (batch.attributes or {})["tidegate.records.out"] == 8

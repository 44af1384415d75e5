"""Traces from the running stages, exported over OTLP/HTTP to a collector stand-in on loopback.

The stand-in is a plain HTTP server that decodes every export with the OTLP protobuf classes of
``opentelemetry-proto``: what arrives is what a real collector would receive.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.integration.pipeline import (
    produce,
    read_predictions,
    running_pipeline,
    wait_for_outputs,
    wait_until_healthy,
)
from tidegate.example.stream import example_messages
from tidegate.settings import Settings
from tidegate.topics import DATA_STAGES

pytestmark = pytest.mark.integration

EVENTS = 300


class Collector:
    """Spans received, by the ``service.name`` of the resource that sent them."""

    def __init__(self) -> None:
        self.spans: dict[str, list[Span]] = defaultdict(list)
        self.paths: set[str] = set()
        self.lock = threading.Lock()

    def receive(self, path: str, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        with self.lock:
            self.paths.add(path)
            for resource_spans in request.resource_spans:
                service = next(a.value.string_value for a in resource_spans.resource.attributes
                               if a.key == "service.name")
                for scope_spans in resource_spans.scope_spans:
                    self.spans[service].extend(scope_spans.spans)

    def batches(self, stage: str) -> list[Span]:
        with self.lock:
            return [s for s in self.spans[f"tidegate-{stage}"] if s.name == f"{stage} batch"]


@pytest.fixture
def collector() -> Iterator[tuple[Collector, str]]:
    """An OTLP/HTTP endpoint on loopback, and its base URL."""
    received = Collector()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.receive(self.path, body)
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield received, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def attribute(span: Span, key: str) -> int | str:
    [value] = [a.value for a in span.attributes if a.key == key]
    return int(value.int_value) if value.HasField("int_value") else str(value.string_value)


def accounted(spans: list[Span]) -> int:
    """Events a stage's batch spans cover: links plus the links dropped past the cap."""
    return sum(len(s.links) + int(attribute(s, "tidegate.links.dropped")) for s in spans)


def test_every_data_stage_exports_batch_spans_linked_to_its_events(
        pipeline_settings: Settings, collector: tuple[Collector, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    received, endpoint = collector
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")  # export within 0.2 s, not 5 s
    messages = list(example_messages(EVENTS, seed=5, bad_rate=0.0))
    with running_pipeline(pipeline_settings, stages=DATA_STAGES) as supervisor:
        wait_until_healthy(pipeline_settings, DATA_STAGES)
        began_ms = int(time.time() * 1000)
        produce(pipeline_settings, messages)
        outputs = wait_for_outputs(pipeline_settings, EVENTS, supervisor=supervisor)
        deadline = time.monotonic() + 30
        while (any(accounted(received.batches(stage)) < EVENTS for stage in DATA_STAGES)
               and time.monotonic() < deadline):
            time.sleep(0.2)
    assert outputs.total == EVENTS
    assert received.paths == {"/v1/traces"}
    trace_ids = {p["trace_id"] for p in read_predictions(pipeline_settings, since_ms=began_ms)}
    for stage in DATA_STAGES:
        spans = received.batches(stage)
        assert accounted(spans) == EVENTS, f"{stage}: {accounted(spans)} events in its spans"
        assert all(s.kind == Span.SPAN_KIND_CONSUMER for s in spans)
        assert {attribute(s, "messaging.destination.name") for s in spans} == {
            pipeline_settings.topic_prefix + ("events" if stage == "ingest" else
                                              {"validation": "ingested",
                                               "feature": "validated",
                                               "inference": "features"}[stage])}
        linked = {link.trace_id.hex() for s in spans for link in s.links}
        assert linked and linked <= trace_ids, f"{stage} links to traces of no prediction"
    batch_ids = {s.span_id for s in received.batches("inference")}
    scores = [s for s in received.spans["tidegate-inference"] if s.name == "score"]
    assert scores and all(s.parent_span_id in batch_ids for s in scores)
    assert sum(int(attribute(s, "tidegate.model.rows")) for s in scores) == EVENTS

"""The tracing module without a broker: when a provider is made, what it says about the stage,
and what a batch span records (through the SDK's in-memory exporter)."""

from __future__ import annotations

import os
import socket
import time

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import INVALID_SPAN, NoOpTracer, StatusCode

from tidegate.errors import ConfigError
from tidegate.runtime.tracing import (
    BatchTrace,
    StageTracer,
    current_batch,
    shutdown,
    stage_provider,
)

pytestmark = pytest.mark.unit

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def otel_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No OTEL_* variable from the machine: each test sets its own."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_no_endpoint_means_no_provider_and_no_exporter(otel_env: pytest.MonkeyPatch) -> None:
    assert stage_provider("ingest", instance="ingest@h:1") is None
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    assert stage_provider("ingest", instance="ingest@h:1") is None


@pytest.mark.parametrize("variable", ["OTEL_EXPORTER_OTLP_ENDPOINT",
                                      "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"])
def test_an_endpoint_makes_a_provider_named_after_the_stage(
        variable: str, otel_env: pytest.MonkeyPatch) -> None:
    otel_env.setenv(variable, "http://127.0.0.1:4318")
    otel_env.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=test")
    otel_env.setenv("OTEL_SERVICE_NAME", "ignored")
    provider = stage_provider("feature", instance="feature@h:7")
    assert isinstance(provider, TracerProvider)
    try:
        attributes = provider.resource.attributes
        assert attributes["service.name"] == "tidegate-feature"
        assert attributes["service.namespace"] == "tidegate"
        assert attributes["service.instance.id"] == "feature@h:7"
        assert attributes["deployment.environment.name"] == "test"  # the SDK read it
    finally:
        provider.shutdown()


@pytest.mark.parametrize("protocol", ["grpc", "http/json"])
def test_a_protocol_other_than_http_protobuf_is_a_config_error(
        protocol: str, otel_env: pytest.MonkeyPatch) -> None:
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        stage_provider("ingest", instance="i")


def test_the_traces_protocol_variable_wins_over_the_general_one(
        otel_env: pytest.MonkeyPatch) -> None:
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")  # for other signals
    otel_env.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
    provider = stage_provider("ingest", instance="i")
    assert provider is not None
    provider.shutdown()


def test_a_stopping_stage_waits_a_bounded_time_for_an_absent_collector(
        otel_env: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    provider = stage_provider("ingest", instance="i")
    assert provider is not None
    with provider.get_tracer("t").start_as_current_span("left behind"):
        pass
    assert shutdown(provider, timeout=0.5) is False  # the exporter was still retrying


def test_outside_a_batch_and_without_a_recording_span_nothing_is_recorded() -> None:
    outside = current_batch()
    outside.link([TRACEPARENT])
    outside.failed_over(RuntimeError("x"))
    assert outside.linked == 0 and outside.dropped == 0
    quiet = BatchTrace(INVALID_SPAN, 128)
    quiet.link([TRACEPARENT] * 10)
    assert quiet.linked == 0 and quiet.dropped == 0  # not even counted: no per-event work


def test_links_accumulate_over_calls_up_to_the_cap(spans: InMemorySpanExporter) -> None:
    tracer = StageTracer("validation", topic="p.ingested", group=None, max_links=5)
    parents = [f"00-{i + 1:032x}-{i + 1:016x}-01" for i in range(8)]
    with tracer.batch(messages=2) as batch:
        assert current_batch() is batch
        batch.link(parents[:3])
        batch.link(["not a traceparent", "00-" + "0" * 32 + "-" + "0" * 16 + "-01"])
        batch.link(parents[3:])
        batch.finish(records_in=8, records_out=8, dead_lettered=0)
    assert current_batch() is not batch
    [span] = spans.get_finished_spans()
    assert [link.context.trace_id for link in span.links] == [1, 2, 3, 4, 5]
    assert batch.dropped == 3 and (span.attributes or {})["tidegate.links.dropped"] == 3
    assert "messaging.consumer.group.name" not in (span.attributes or {})


def test_an_exception_out_of_the_batch_ends_the_span_as_an_error(
        spans: InMemorySpanExporter) -> None:
    tracer = StageTracer("ingest", topic="p.events", group="p.ingest-input")
    with pytest.raises(ValueError), tracer.batch(messages=1):
        raise ValueError("delivery gave up")
    [span] = spans.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR


def test_the_cost_per_batch_of_2000_events_with_and_without_a_provider() -> None:
    """Prints the figures (``pytest -s``); asserts what each run recorded, never the time."""
    traceparents = [f"00-{i + 1:032x}-{i + 1:016x}-01" for i in range(2000)]
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))  # what a stage process uses
    costs: dict[str, float] = {}
    for name, tracer in (("no provider", NoOpTracer()),
                         ("SDK, batch processor", provider.get_tracer("bench"))):
        stage = StageTracer("validation", topic="p.ingested", group="p.validation-input")
        stage.tracer = tracer
        rounds = 200
        began = time.perf_counter()
        for _ in range(rounds):
            with stage.batch(messages=4) as batch:
                batch.link(traceparents)
                batch.finish(records_in=2000, records_out=1990, dead_lettered=10)
        costs[name] = (time.perf_counter() - began) / rounds * 1e6
    provider.force_flush()
    recorded = exporter.get_finished_spans()
    provider.shutdown()
    print("\ntracing cost per 2,000-event batch: " + ", ".join(
        f"{name} {cost:.1f} µs" for name, cost in costs.items()))
    assert len(recorded) == 200  # the no-op tracer recorded nothing
    assert {len(span.links) for span in recorded} == {128}
    assert {(span.attributes or {})["tidegate.links.dropped"] for span in recorded} == {1872}


def test_the_sdk_disabled_by_its_own_variable_hands_out_a_no_op_tracer(
        otel_env: pytest.MonkeyPatch) -> None:
    otel_env.setenv("OTEL_SDK_DISABLED", "true")
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    provider = stage_provider("ingest", instance="i")
    assert provider is not None
    try:
        assert isinstance(provider.get_tracer("tidegate.runtime"), NoOpTracer)
    finally:
        provider.shutdown()

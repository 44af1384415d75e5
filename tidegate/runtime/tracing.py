"""Traces through the OpenTelemetry SDK: one span per stage per batch, linked to its events.

A stage process installs a ``TracerProvider`` (:func:`install`; :func:`shutdown` when it
stops) only when an OTLP endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``); its spans go to the collector over OTLP/HTTP
(protobuf) through a ``BatchSpanProcessor``. Every other ``OTEL_*`` variable
(``OTEL_SDK_DISABLED``, the sampler, headers, timeouts, the batch processor's sizes,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_SPAN_LINK_COUNT_LIMIT``) is read by the SDK itself.
Without an endpoint the API's no-op tracer answers: a batch costs a few microseconds and
nothing is done per event.

:class:`StageTracer` opens the batch span around handling, delivery and commit. A batch holds
up to thousands of events, each with its own trace context, so the span carries links to the
first ``max_links`` of them (the SDK's link limit, 128 by default) and counts the rest in
``tidegate.links.dropped``. The handler's own spans (the model call) become its children,
since the batch span is the current span while the handler runs.

Example::

    install("validation", instance="validation@host:42")   # in the stage process, once
    tracer = StageTracer("validation", topic="p.ingested", group="p.validation-input")
    with tracer.batch(messages=len(events)) as batch:
        ...                                   # handler: batch.link(traceparents)
        batch.finish(records_in=512, records_out=509, dead_lettered=3)
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from itertools import islice

from opentelemetry import trace
from opentelemetry.sdk.environment_variables import (
    OTEL_EXPORTER_OTLP_PROTOCOL,
    OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.semconv._incubating.attributes import messaging_attributes as messaging
from opentelemetry.semconv.attributes import service_attributes as service
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from tidegate.errors import ConfigError

__all__ = ["ENDPOINT_VARIABLES", "SHUTDOWN_SECONDS", "BatchTrace", "StageTracer",
           "current_batch", "install", "shutdown", "stage_provider"]

log = logging.getLogger(__name__)

SHUTDOWN_SECONDS = 3.0  # what a stopping stage gives the exporter for its last spans
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_PROPAGATOR = TraceContextTextMapPropagator()


def stage_provider(stage: str, *, instance: str) -> TracerProvider | None:
    """The stage's provider exporting over OTLP/HTTP, or None when no endpoint is set.

    ``service.name`` is ``tidegate-<stage>`` (one service per stage, whatever
    ``OTEL_SERVICE_NAME`` says); ``service.instance.id`` is the instance name of the stage's
    health events. The exporter reads its endpoint, headers, TLS files, compression and timeout
    from the ``OTEL_EXPORTER_OTLP_*`` variables. The provider does not shut down at exit by
    itself: :func:`shutdown` bounds how long a stopping stage waits for the collector.
    """
    if not any(os.environ.get(name) for name in ENDPOINT_VARIABLES):
        return None
    for variable in (OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, OTEL_EXPORTER_OTLP_PROTOCOL):
        protocol = os.environ.get(variable, "").strip()
        if protocol and protocol != "http/protobuf":
            raise ConfigError(f"invalid setting {variable}: {protocol!r}; tidegate exports "
                              "OTLP over http/protobuf only (a collector's port 4318)")
        if protocol:
            break
    # imported here: the exporter pulls in requests and protobuf, needed only when exporting
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    resource = Resource.create({service.SERVICE_NAME: f"tidegate-{stage}",
                                service.SERVICE_NAMESPACE: "tidegate",
                                service.SERVICE_INSTANCE_ID: instance})
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def install(stage: str, *, instance: str) -> TracerProvider | None:
    """Make the stage's provider the process's global one (once per process); None: no-op."""
    provider = stage_provider(stage, instance=instance)
    if provider is not None:
        trace.set_tracer_provider(provider)
    return provider


def shutdown(provider: TracerProvider, *, timeout: float = SHUTDOWN_SECONDS) -> bool:
    """Export the queued spans and stop, waiting at most ``timeout`` seconds: with the
    collector away the exporter retries for its whole timeout (10 s by default), and a stopping
    stage must not outlast its supervisor's patience. False: spans were left unexported."""
    stopping = threading.Thread(target=provider.shutdown, name="otel-shutdown", daemon=True)
    stopping.start()
    stopping.join(timeout)
    if stopping.is_alive():
        log.warning("trace spans not exported within %.0f s of stopping; dropped", timeout)
        return False
    return True


class BatchTrace:
    """The span of one batch while it is handled: links, failures and outcome counts."""

    def __init__(self, span: trace.Span, max_links: int | None) -> None:
        self.span, self.max_links = span, max_links
        self.recording = span.is_recording()
        self.linked = 0
        self.dropped = 0

    def link(self, traceparents: Sequence[str]) -> None:
        """Link the span to events' W3C trace contexts, up to the cap; count the rest.

        Nothing happens per event when the span is not recording (no provider, not sampled).
        """
        if not self.recording or not traceparents:
            return
        room = len(traceparents) if self.max_links is None else max(
            0, self.max_links - self.linked)
        for traceparent in islice(traceparents, room):
            context = trace.get_current_span(
                _PROPAGATOR.extract({"traceparent": traceparent})).get_span_context()
            if context.is_valid:
                self.span.add_link(context)
                self.linked += 1
        self.dropped += max(0, len(traceparents) - room)

    def failed_over(self, exc: BaseException) -> None:
        """The handler failed on the whole batch, which was retried message by message."""
        if self.recording:
            self.span.record_exception(exc)
            self.span.set_status(Status(StatusCode.ERROR,
                                        "batch failed; retried message by message"))

    def finish(self, *, records_in: int, records_out: int, dead_lettered: int) -> None:
        """The batch's outcome, once its outputs were delivered and its input committed."""
        if self.recording:
            self.span.set_attributes({
                "tidegate.records.in": records_in, "tidegate.records.out": records_out,
                "tidegate.records.dead_lettered": dead_lettered,
                "tidegate.links.dropped": self.dropped})


_NOT_TRACED = BatchTrace(trace.INVALID_SPAN, 0)
_current: ContextVar[BatchTrace] = ContextVar("tidegate_batch_trace", default=_NOT_TRACED)


def current_batch() -> BatchTrace:
    """The trace of the batch being handled in this task (a no-op one outside a batch)."""
    return _current.get()


class StageTracer:
    """Opens one ``CONSUMER`` span per batch of a stage, with messaging attributes."""

    def __init__(self, stage: str, *, topic: str, group: str | None,
                 max_links: int | None = None) -> None:
        self.stage, self.name = stage, f"{stage} batch"
        self.tracer = trace.get_tracer("tidegate.runtime")  # follows the global provider
        # the SDK's own limit (OTEL_SPAN_LINK_COUNT_LIMIT, 128 by default): links past it
        # would be dropped by the SDK anyway, after being parsed for nothing
        self.max_links = SpanLimits().max_links if max_links is None else max_links
        self.attributes: dict[str, str | int] = {
            messaging.MESSAGING_SYSTEM: "kafka",
            messaging.MESSAGING_OPERATION_TYPE: "process",
            messaging.MESSAGING_DESTINATION_NAME: topic,
            "tidegate.stage": stage,
        }
        if group is not None:
            self.attributes[messaging.MESSAGING_CONSUMER_GROUP_NAME] = group

    @contextmanager
    def batch(self, *, messages: int) -> Iterator[BatchTrace]:
        """The span of one batch of ``messages`` Kafka messages, current while it runs."""
        attributes = {**self.attributes, messaging.MESSAGING_BATCH_MESSAGE_COUNT: messages}
        span = self.tracer.start_span(self.name, kind=SpanKind.CONSUMER, attributes=attributes)
        batch = BatchTrace(span, self.max_links)
        token = _current.set(batch)
        try:
            with trace.use_span(span, end_on_exit=True):
                yield batch
        finally:
            _current.reset(token)

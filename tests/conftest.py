"""Fixtures shared by every tier: one real Kafka broker per session, unique topic prefixes,
and the spans the process records.

The broker is the embedded Apache Kafka (or the cluster in KAFKA_BOOTSTRAP_SERVERS). A broker
that cannot start fails every test that needs it; nothing is skipped.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tidegate.kafka.broker import start_broker, stop_broker
from tidegate.settings import Settings, load_settings


@dataclass(frozen=True)
class Cluster:
    """The Kafka cluster under test."""

    bootstrap: str
    embedded: bool
    start_seconds: float


_started: list[Cluster] = []


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One real broker for the whole run, started on first use."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        cluster = Cluster(bootstrap=external, embedded=False, start_seconds=0.0)
        _started.append(cluster)
        yield cluster
        return
    data_dir = tmp_path_factory.mktemp("kafka")
    settings = _embedded_settings(data_dir)
    began = time.monotonic()
    state = start_broker(settings, die_with_parent=True)
    cluster = Cluster(bootstrap=state.bootstrap, embedded=True,
                      start_seconds=round(time.monotonic() - began, 2))
    _started.append(cluster)
    try:
        yield cluster
    finally:
        stop_broker(settings)


def _embedded_settings(data_dir: Path) -> Settings:
    old = os.environ.get("TIDEGATE_DATA_DIR")
    os.environ["TIDEGATE_DATA_DIR"] = str(data_dir)
    try:
        return load_settings()
    finally:
        if old is None:
            del os.environ["TIDEGATE_DATA_DIR"]
        else:
            os.environ["TIDEGATE_DATA_DIR"] = old


@pytest.fixture(scope="session")
def span_exporter() -> InMemorySpanExporter:
    """The SDK's in-memory exporter behind the process's tracer provider, installed on first
    use: the OpenTelemetry API lets a process set its global provider once."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    assert trace.get_tracer_provider() is provider, "another tracer provider was set first"
    return exporter


@pytest.fixture
def spans(span_exporter: InMemorySpanExporter) -> Iterator[InMemorySpanExporter]:
    """The spans finished during the test (the exporter starts empty)."""
    span_exporter.clear()
    yield span_exporter
    span_exporter.clear()


@pytest.fixture
def prefix() -> str:
    """A topic prefix no other test uses, so tests share the broker without seeing each other."""
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture
def settings(kafka: Cluster, prefix: str, tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings pointing at the session broker, with this test's prefix and data dir."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka.bootstrap)
    monkeypatch.setenv("TIDEGATE_TOPIC_PREFIX", prefix)
    monkeypatch.setenv("TIDEGATE_DATA_DIR", str(tmp_path / "data"))
    return load_settings()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    tiers: dict[str, dict[str, int]] = {}
    for outcome in ("passed", "failed", "error", "skipped"):
        for report in terminalreporter.stats.get(outcome, []):
            if getattr(report, "when", "call") not in ("call", "setup"):
                continue
            if outcome == "passed" and report.when != "call":
                continue
            keywords = getattr(report, "keywords", {})
            tier = next((t for t in ("chaos", "integration", "agent", "unit") if t in keywords),
                        "untiered")
            tiers.setdefault(tier, {}).setdefault(outcome, 0)
            tiers[tier][outcome] += 1
    if tiers:
        terminalreporter.section("tidegate tiers")
        for tier, counts in sorted(tiers.items()):
            parts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
            terminalreporter.write_line(f"{tier:12} {parts}")
    for cluster in _started:
        where = "embedded Apache Kafka" if cluster.embedded else "external cluster"
        terminalreporter.write_line(
            f"broker: {where} at {cluster.bootstrap}, ready in {cluster.start_seconds:.1f} s"
        )

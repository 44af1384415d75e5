"""The whole pipeline as real processes against the session broker, for integration tests."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from tidegate.cli.supervisor import Supervisor
from tidegate.codec import Codec
from tidegate.deadletter import context_of
from tidegate.example.stream import ExampleMessage
from tidegate.kafka.admin import ensure_topics
from tidegate.kafka.scan import read_topic
from tidegate.models.registry import ModelRegistry
from tidegate.settings import ClientConfig, Settings
from tidegate.topics import CATALOG, STAGES

STAGE_NAMES = ("ingest", "validation", "feature", "inference", "monitoring")
_trained: dict[str, Path] = {}


def cluster_config(settings: Settings) -> ClientConfig:
    """The test's cluster, with the security settings of the environment (none: plaintext)."""
    return settings.client_config(str(settings.kafka_bootstrap_servers))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def example_registry(root: Path) -> Path:
    """A registry with the example models, trained once per session and copied per test."""
    import shutil

    from tidegate.models.training import train_example

    if "models" not in _trained:
        source = root.parent / "trained-models"
        if not source.exists():
            train_example(ModelRegistry(source), events=30000)
        _trained["models"] = source
    shutil.copytree(_trained["models"], root)
    return root


def install_faulty_primary(settings: Settings, switch: Path) -> None:
    """The example registry with a copy of the production primary whose failures the file
    ``switch`` turns on from outside the stage processes (``tidegate.models.faults``)."""
    from tidegate.models.faults import FaultyModel, register_like
    from tidegate.models.training import PRIMARY

    example_registry(settings.registry_dir)
    registry = ModelRegistry(settings.registry_dir)
    current = registry.require_production(PRIMARY)
    faulty = FaultyModel(registry.load(PRIMARY, current.version), switch=switch)
    registry.promote(PRIMARY, register_like(registry, PRIMARY, faulty).version, reason="drill")


@contextmanager
def running_pipeline(settings: Settings, *, stages: Iterable[str] = STAGE_NAMES,
                     child_env: Mapping[str, Mapping[str, str]] | None = None,
                     ) -> Iterator[Supervisor]:
    """Topics, models and one supervised process per stage; everything stops afterwards.

    ``child_env`` adds variables per stage (its own Kafka principal on a secured broker).
    """
    config = cluster_config(settings)
    ensure_topics(config, CATALOG, prefix=settings.topic_prefix, replication=1)
    if not settings.registry_dir.exists():
        example_registry(settings.registry_dir)
    env = {**os.environ, "TIDEGATE_LOG_LEVEL": "WARNING"}
    supervisor = Supervisor(
        {stage: [sys.executable, "-m", "tidegate.cli.main", "stage", "run", stage]
         for stage in stages},
        log_dir=settings.data_dir / "logs", env=env, child_env=child_env, backoff=0.5,
    )
    supervisor.start()
    try:
        yield supervisor
    finally:
        supervisor.stop()


def produce(settings: Settings, messages: Iterable[ExampleMessage], *,
            rate: float = 0.0) -> list[ExampleMessage]:
    """Send the messages to the input topic; return them once the broker acked every one."""
    producer = Producer({**cluster_config(settings), "linger.ms": 10, "acks": "all"})
    topic = settings.topic_prefix + "events"
    sent: list[ExampleMessage] = []
    began = time.monotonic()
    for message in messages:
        if rate:  # ahead of schedule: wait (never a negative sleep on a loaded machine)
            time.sleep(max(0.0, len(sent) / rate - (time.monotonic() - began)))
        while True:
            try:
                producer.produce(topic, key=message.key, value=message.value)
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.05)
        producer.poll(0)
        sent.append(message)
    assert producer.flush(60) == 0, "the broker did not acknowledge every input event"
    return sent


@dataclass
class Outputs:
    """Everything the pipeline wrote: predictions by event id, dead letters by stage."""

    predictions: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    paths: Counter[str] = field(default_factory=Counter)
    # (stage, code, original value bytes) per dead letter
    dead: Counter[tuple[str, str, bytes]] = field(default_factory=Counter)
    last_prediction_at: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.predictions.values()) + sum(self.dead.values())


def read_predictions(settings: Settings, *, since_ms: int = 0) -> list[dict[str, Any]]:
    """The decoded predictions made at or after ``since_ms``, from the start of the topic."""
    config = cluster_config(settings)
    codec = Codec()
    records = (codec.decode(message.value() or b"") for message in
               read_topic(config, settings.topic_prefix + "predictions"))
    return [record for record in records if record["predicted_at"] >= since_ms]


def paused_for(settings: Settings, stage: str, reason: str) -> bool:
    """Whether a health event of ``stage`` reported it paused with ``reason`` in the reason."""
    return any(event["stage"] == stage and event["paused"]
               and reason in (event["pause_reason"] or "")
               for event in health_events(settings))


def read_outputs(settings: Settings) -> Outputs:
    """Read predictions and every dead-letter topic from the start to their current end."""
    config = cluster_config(settings)
    codec = Codec()
    outputs = Outputs()
    for message in read_topic(config, settings.topic_prefix + "predictions"):
        record = codec.decode(message.value() or b"")
        outputs.predictions[record["event_id"]] += 1
        outputs.latencies_ms.append(record["latency_ms"])
        outputs.paths[record["path"]] += 1
        outputs.last_prediction_at = max(outputs.last_prediction_at,
                                         record["predicted_at"] / 1000)
    for stage, spec in STAGES.items():
        if spec.dead_letter is None:
            continue
        for message in read_topic(config, spec.dead_letter.name(settings.topic_prefix)):
            code = context_of(message.headers()).get("error.code", "?")
            outputs.dead[(stage, code, message.value() or b"")] += 1
    return outputs


def wait_for_outputs(settings: Settings, expected: int, *, timeout: float = 180.0,
                     supervisor: Supervisor | None = None,
                     done: Callable[[Outputs], bool] | None = None) -> Outputs:
    """Poll the outputs until ``expected`` records arrived, or ``done`` says so, or the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        outputs = read_outputs(settings)
        finished = done(outputs) if done is not None else outputs.total >= expected
        if finished or time.monotonic() > deadline:
            return outputs
        if supervisor is not None:
            supervisor.poll()
        time.sleep(1.0)


def wait_until_healthy(settings: Settings, stages: Iterable[str] = STAGE_NAMES, *,
                       timeout: float = 90.0) -> float:
    """Wait until every stage has sent a health event; return how long that took."""
    config = cluster_config(settings)
    codec = Codec()
    wanted, began = set(stages), time.monotonic()
    while time.monotonic() - began < timeout:
        seen = {codec.decode(m.value() or b"")["stage"]
                for m in read_topic(config, settings.topic_prefix + "health")}
        if wanted <= seen:
            return time.monotonic() - began
        time.sleep(0.5)
    raise AssertionError(f"stages never reported healthy: {sorted(wanted - seen)}")


def health_events(settings: Settings) -> list[dict[str, Any]]:
    """Every health event on the topic so far, decoded."""
    config = cluster_config(settings)
    codec = Codec()
    return [codec.decode(m.value() or b"")
            for m in read_topic(config, settings.topic_prefix + "health")]


Expected = tuple[Counter[str], Counter[tuple[str, str, bytes]]]


def expectations(sent: Iterable[ExampleMessage]) -> Expected:
    """Event ids that must be predicted, and (stage, code, value) that must be dead-lettered."""
    predicted: Counter[str] = Counter()
    dead: Counter[tuple[str, str, bytes]] = Counter()
    for message in sent:
        if message.expected is None:
            assert message.event_id is not None
            predicted[message.event_id] += 1
        else:
            dead[(message.expected.stage, message.expected.code, message.value)] += 1
    return predicted, dead

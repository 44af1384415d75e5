"""Our outputs read by a client we did not write: Kafka's own console consumer."""

from __future__ import annotations

import subprocess

import pytest

from tests.integration.pipeline import produce, running_pipeline, wait_for_outputs
from tidegate.example.badrecords import kind_by_name
from tidegate.example.stream import example_messages
from tidegate.kafka.jars import classpath, require_tool
from tidegate.settings import Settings

pytestmark = pytest.mark.integration


def _console(settings: Settings, topic: str, count: int) -> list[str]:
    """Records as Kafka's ConsoleConsumer prints them: headers, key, value, tab-separated."""
    result = subprocess.run(
        [require_tool("java"), "-Xmx256m", "-cp",
         classpath(settings.cache_dir, settings.kafka_version),
         "org.apache.kafka.tools.consumer.ConsoleConsumer",
         "--bootstrap-server", str(settings.kafka_bootstrap_servers), "--topic", topic,
         "--from-beginning", "--max-messages", str(count), "--timeout-ms", "20000",
         "--formatter-property", "print.headers=true",
         "--formatter-property", "print.key=true"],
        capture_output=True, text=True, errors="replace", timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-1500:]
    return [line for line in result.stdout.splitlines() if line.strip()]


def test_dead_letters_and_predictions_read_with_kafkas_console_consumer(
        pipeline_settings: Settings) -> None:
    kinds = [kind_by_name("amount_nan")]
    messages = list(example_messages(300, seed=31, bad_rate=0.1, kinds=kinds, json_share=1.0,
                                     events_per_second=20_000))
    bad = [m for m in messages if m.expected is not None]
    with running_pipeline(pipeline_settings) as supervisor:
        sent = produce(pipeline_settings, messages)
        wait_for_outputs(pipeline_settings, len(sent), supervisor=supervisor)
    prefix = pipeline_settings.topic_prefix
    letters = _console(pipeline_settings, prefix + "dlq.validation", len(bad))
    assert len(letters) == len(bad)
    for line in letters:
        assert "tidegate.dlq.stage:validation" in line
        assert "tidegate.dlq.error.code:NOT_FINITE" in line
        assert "tidegate.dlq.event.id:" in line
        assert '"amount":NaN' in line, "the original JSON value must be there, untouched"
    # Avro values are binary and may hold newline bytes: a record starts with its headers.
    predictions = [line for line in _console(pipeline_settings, prefix + "predictions", 20)
                   if line.startswith("traceparent:")]
    good_ids = {m.event_id for m in messages if m.expected is None}
    assert len(predictions) == 20
    for line in predictions:
        headers, key = line.split("\t")[:2]
        assert headers.startswith("traceparent:00-")
        assert key in good_ids

"""Replay of dead letters on the real broker: fix then replay, the loop guard, dry runs, pace."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from tests.integration.pipeline import Outputs, produce, running_pipeline, wait_for_outputs
from tidegate.cli.main import main
from tidegate.cli.replay import ReplayRequest, replay, replay_group
from tidegate.codec import Codec
from tidegate.deadletter import DeadLetter, Headers, SourceRecord, context_of
from tidegate.example.generator import TransactionGenerator
from tidegate.example.stream import ExampleMessage, example_messages
from tidegate.kafka.admin import ensure_topics
from tidegate.kafka.scan import read_topic
from tidegate.settings import ClientConfig, Settings
from tidegate.topics import CATALOG

pytestmark = pytest.mark.integration

TRACEPARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
SCORING = ("ingest", "validation", "feature", "inference")


def _config(settings: Settings) -> ClientConfig:
    return {"bootstrap.servers": str(settings.kafka_bootstrap_servers)}


def _events(count: int, *, seed: int, **fields: object) -> list[ExampleMessage]:
    """Generated events with some fields overridden (``amount=5e6`` makes them OUT_OF_RANGE)."""
    encode = Codec().encoder("tidegate.example.CardTransaction")
    out = []
    for event, label in TransactionGenerator(seed=seed).generate(count):
        event.update(fields)
        out.append(ExampleMessage(key=str(event["account_id"]).encode(), value=encode(event),
                                  event_id=str(event["event_id"]), expected=None, label=label))
    return out


def _write_dead_letters(settings: Settings, count: int, *, seed: int,
                        code: str = "OUT_OF_RANGE") -> list[ExampleMessage]:
    """Dead letters in dlq.validation as the validation stage writes them."""
    messages = list(example_messages(count, seed=seed))
    producer = Producer({**_config(settings), "linger.ms": 5})
    for offset, message in enumerate(messages):
        source = SourceRecord(topic=settings.topic_prefix + "events", partition=0, offset=offset,
                              timestamp=0, key=message.key, value=message.value,
                              headers=[("traceparent", TRACEPARENT)])
        dead = DeadLetter.of(source, stage="validation", code=code, event_id=message.event_id,
                             error_class="ValidationError", message="synthetic")
        headers: list[tuple[str, str | bytes | None]] = list(dead.headers)
        producer.produce(settings.topic_prefix + "dlq.validation", key=dead.key,
                         value=dead.value, headers=headers)
    assert producer.flush(30) == 0
    return messages


def _end_offsets(settings: Settings) -> dict[str, list[int]]:
    consumer = Consumer({**_config(settings), "group.id": "tidegate-test-ends"})
    try:
        ends = {}
        for spec in CATALOG:
            name = spec.name(settings.topic_prefix)
            ends[name] = [consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)[1]
                          for p in range(spec.partitions)]
        return ends
    finally:
        consumer.close()


def _committed(settings: Settings, stage: str = "validation") -> list[int]:
    topic = f"{settings.topic_prefix}dlq.{stage}"
    consumer = Consumer({**_config(settings),
                         "group.id": replay_group(settings.topic_prefix, topic)})
    try:
        return [tp.offset for tp in consumer.committed(
            [TopicPartition(topic, p) for p in range(3)], timeout=10)]
    finally:
        consumer.close()


def _letters_of(settings: Settings, event_ids: Iterable[str],
                stage: str = "validation") -> Counter[str]:
    wanted = set(event_ids)
    found: Counter[str] = Counter()
    for message in read_topic(_config(settings), f"{settings.topic_prefix}dlq.{stage}"):
        event_id = context_of(message.headers()).get("event.id")
        if event_id in wanted:
            found[event_id] += 1
    return found


def _ls(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["dlq", "ls", "--json"]) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


def test_fix_the_rule_then_replay_yields_each_prediction_once(
        pipeline_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    shipped = (files("tidegate.example") / "rules.toml").read_text("utf-8")
    assert "max = 1_000_000.0" in shipped
    rules = tmp_path / "rules.toml"
    rules.write_text(shipped.replace("max = 1_000_000.0", "max = 1e9"), "utf-8")
    good, large = _events(150, seed=21), _events(25, seed=22, amount=5e6)
    large_ids = {m.event_id for m in large}
    monkeypatch.delenv("TIDEGATE_RULES_FILE", raising=False)
    with running_pipeline(pipeline_settings, stages=SCORING) as supervisor:
        produce(pipeline_settings, [*good, *large])
        before = wait_for_outputs(pipeline_settings, len(good) + len(large), timeout=120,
                                  supervisor=supervisor)
    assert set(before.predictions) == {m.event_id for m in good}
    assert set(before.dead) == {("validation", "OUT_OF_RANGE", m.value) for m in large}
    assert sum(before.dead.values()) == len(large)
    rejected = _ls(capsys)
    assert rejected["open"]["validation"] == {"OUT_OF_RANGE": len(large)}
    assert rejected["validation"] == {"OUT_OF_RANGE": len(large)}

    monkeypatch.setenv("TIDEGATE_RULES_FILE", str(rules))
    with running_pipeline(pipeline_settings, stages=SCORING) as supervisor:
        capsys.readouterr()
        assert main(["dlq", "replay", "validation", "--code", "OUT_OF_RANGE"]) == 0
        assert f"replayed {len(large)} of {len(large)} dead letters" in capsys.readouterr().out
        after = wait_for_outputs(pipeline_settings, 0, timeout=120, supervisor=supervisor,
                                 done=lambda out: large_ids <= set(out.predictions))
    assert after.predictions == Counter({m.event_id: 1 for m in [*good, *large]})
    assert sum(after.dead.values()) == len(large), "a replay was dead-lettered again"
    resolved = _ls(capsys)
    assert resolved["resolved"]["validation"] == {"OUT_OF_RANGE": len(large)}
    assert resolved["open"]["validation"] == {"OUT_OF_RANGE": 0}
    assert resolved["totals"] == {"dead_letters": len(large), "events": len(large), "open": 0,
                                  "resolved": len(large)}


def test_the_loop_guard_stops_a_record_that_always_fails(pipeline_settings: Settings) -> None:
    bad = _events(1, seed=31, currency="XXX")
    event_id = bad[0].event_id
    assert event_id is not None
    config, prefix = _config(pipeline_settings), pipeline_settings.topic_prefix
    request = ReplayRequest(topic="validation", codes=("NOT_ALLOWED",), max_replays=3)
    runs = []
    with running_pipeline(pipeline_settings, stages=("ingest", "validation")) as supervisor:
        produce(pipeline_settings, [*_events(20, seed=32), *bad])
        for attempt in range(1, 6):
            def failed_again(_: Outputs, n: int = attempt) -> bool:
                return _letters_of(pipeline_settings, [event_id])[event_id] >= n

            wait_for_outputs(pipeline_settings, 0, timeout=60, supervisor=supervisor,
                             done=failed_again)
            summary = replay(config, request, prefix=prefix)
            runs.append((summary.replayed, summary.refused))
            if summary.refused:
                break
        events_end = _end_offsets(pipeline_settings)[prefix + "events"]
        again = replay(config, request, prefix=prefix)
        from_start = replay(config, ReplayRequest(topic="validation", from_beginning=True),
                            prefix=prefix)
        assert _end_offsets(pipeline_settings)[prefix + "events"] == events_end
    assert runs == [(1, 0), (1, 0), (1, 0), (0, 1)]
    assert _letters_of(pipeline_settings, [event_id])[event_id] == 4  # the original + 3 replays
    assert (again.replayed, again.refused, again.examined) == (0, 0, 0)
    assert (from_start.replayed, from_start.refused) == (0, 1)
    assert from_start.skipped["superseded"] == 3


def test_a_dry_run_changes_nothing(settings: Settings,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    ensure_topics(_config(settings), CATALOG, prefix=settings.topic_prefix, replication=1)
    _write_dead_letters(settings, 30, seed=41)
    assert main(["dlq", "replay", "validation", "--max", "10"]) == 0
    _write_dead_letters(settings, 5, seed=42, code="NOT_ALLOWED")
    ends, committed = _end_offsets(settings), _committed(settings)
    capsys.readouterr()
    assert main(["dlq", "replay", "validation", "--dry-run", "--code", "OUT_OF_RANGE"]) == 0
    out = capsys.readouterr().out
    assert "dry run: would replay 20 of 25 dead letters" in out
    assert "code OUT_OF_RANGE" in out and f"to   {settings.topic_prefix}events" in out
    samples = [json.loads(line) for line in out.splitlines() if line.startswith("  {")]
    assert len(samples) == 5 and all(s["error.code"] == "OUT_OF_RANGE" for s in samples)
    assert _end_offsets(settings) == ends, "a dry run wrote to a topic"
    assert _committed(settings) == committed, "a dry run moved the replay group"
    assert sum(ends[settings.topic_prefix + "audit"]) == 1  # the real run only
    for argv in (["validation", "--to", "no-such-topic"], ["no-such-dlq"]):
        assert main(["dlq", "replay", *argv]) == 1
        assert "does not exist" in capsys.readouterr().err
    assert _end_offsets(settings) == ends, "a failed run wrote to a topic"


def test_rate_limit_holds(settings: Settings) -> None:
    config, prefix = _config(settings), settings.topic_prefix
    ensure_topics(config, CATALOG, prefix=prefix, replication=1)
    _write_dead_letters(settings, 300, seed=51)
    began = time.monotonic()
    summary = replay(config, ReplayRequest(topic="validation", rate=100), prefix=prefix)
    took = time.monotonic() - began
    assert summary.replayed == 300
    measured = summary.replayed / summary.seconds
    print(f"\nreplay --rate 100: 300 dead letters in {summary.seconds:.2f} s = {measured:.1f}/s "
          f"({took:.2f} s = {300 / took:.1f}/s with connecting and reading the topic twice)")
    assert 70 <= measured <= 115, f"{measured:.1f}/s for a limit of 100/s"


def test_progress_is_remembered_unless_all(settings: Settings) -> None:
    config, prefix = _config(settings), settings.topic_prefix
    ensure_topics(config, CATALOG, prefix=prefix, replication=1)
    first = _write_dead_letters(settings, 12, seed=61)
    request = ReplayRequest(topic="dlq.validation")
    assert replay(config, request, prefix=prefix).replayed == 12
    second = replay(config, request, prefix=prefix)
    assert (second.examined, second.replayed) == (0, 0)
    later = _write_dead_letters(settings, 3, seed=62)
    assert replay(config, request, prefix=prefix).replayed == 3
    again = replay(config, ReplayRequest(topic=prefix + "dlq.validation", from_beginning=True),
                   prefix=prefix)
    assert again.replayed == 15
    replayed = list(read_topic(config, prefix + "events"))
    by_event: Counter[str] = Counter()
    originals = {m.event_id: m for m in [*first, *later]}
    for message in replayed:
        headers: Headers = list(message.headers() or [])  # type: ignore[arg-type]
        event_id = Codec().decode_any(message.value() or b"")[1]["event_id"]
        original = originals[event_id]
        by_event[event_id] += 1
        assert (message.key(), message.value()) == (original.key, original.value)
        names = [name for name, _ in headers]
        assert names == ["traceparent", "tidegate.replay.count", "tidegate.replay.dlq.offset",
                         "tidegate.replay.at"]
        assert dict(headers)["traceparent"] == TRACEPARENT
        assert dict(headers)["tidegate.replay.count"] == b"1"
        assert (dict(headers)["tidegate.replay.dlq.offset"] or b"").startswith(
            f"{prefix}dlq.validation:".encode())
    assert by_event == Counter({event_id: 2 for event_id in originals})
    audits = [json.loads(m.value() or b"") for m in read_topic(config, prefix + "audit")]
    assert [a["replayed"] for a in audits] == [12, 0, 3, 15]
    assert {a["outcome"] for a in audits} == {"ok"}
    assert audits[-1]["request"]["from_beginning"] is True
    assert len({a["run_id"] for a in audits}) == 4 and all(a["issuer"] for a in audits)
    assert {a["kind"] for a in audits} == {"replay"}

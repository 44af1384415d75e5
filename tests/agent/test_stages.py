"""The stages' real Faust agents driven through ``agent.test_context()``, without a broker.

Each stage is built with ``tidegate.agents.<name>.build(settings)``; its agent loop
(``stream.take_events``) runs unchanged. Two seams stand in for Kafka: the runtime's
``_send_all`` (the producer call behind ``deliver``) captures outgoing messages, and a table's
``send_changelog`` records changelog writes; the control topic reads as empty. Every wait has
an explicit stop condition: the number of input events the runtime has handled, with a timeout
that fails the test.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from tests.agent.conftest import PREFIX, MakeSettings
from tidegate.agents import feature, inference, ingest, validation
from tidegate.batches import Batch, pack, partition_for, unpack
from tidegate.codec import Codec
from tidegate.deadletter import CONTEXT_PREFIX, Headers, SourceRecord, context_of
from tidegate.example.badrecords import BadKind, BadRecordInjector
from tidegate.example.generator import TransactionGenerator
from tidegate.outputs import Outgoing
from tidegate.pipeline.feature import FEATURE_NAMES
from tidegate.pipeline.ingest import Dedupe, ingest_batch
from tidegate.runtime.stage import StageRuntime
from tidegate.settings import Settings

pytestmark = pytest.mark.agent

SCHEMA = "tidegate.example.CardTransaction"
WAIT_SECONDS = 20.0
BUILDERS: dict[str, Callable[[Settings], StageRuntime]] = {
    "ingest": ingest.build, "validation": validation.build,
    "feature": feature.build, "inference": inference.build,
}
SINKS = {"ingest": "ingested", "validation": "validated", "feature": "features",
         "inference": "predictions"}


@dataclass(frozen=True)
class Put:
    """One message for an agent's input channel."""

    value: bytes
    partition: int = 0
    key: bytes | None = None
    headers: Headers = field(default_factory=list)


@dataclass
class Run:
    """What one stage did with its input."""

    runtime: StageRuntime
    sent: list[Outgoing]
    send_attempts: int
    changelog: list[tuple[str, Any]]

    def to(self, key: str) -> list[Outgoing]:
        return [item for item in self.sent if item.topic == PREFIX + key]


def drive(stage: str, puts: Sequence[Put], settings: Settings, monkeypatch: pytest.MonkeyPatch,
          *, failed_sends: int = 0) -> Run:
    """Build ``stage``, put every message through its agent, return what it sent."""

    # No control topic to recover a mode from: every stage starts in the normal mode.
    monkeypatch.setattr("tidegate.runtime.stage.read_topic", lambda *args, **kwargs: iter(()))

    async def main() -> Run:
        runtime = BUILDERS[stage](settings)
        [agent] = [agent for name, agent in runtime.app.agents.items()
                   if "follow_control" not in name]
        sent: list[Outgoing] = []
        changelog: list[tuple[str, Any]] = []
        attempts = 0
        handled = 0
        done = asyncio.Event()
        handle = runtime._handle

        async def counting_handle(handler: Any, events: Sequence[Any]) -> list[Outgoing]:
            nonlocal handled
            outgoing = await handle(handler, events)
            handled += len(events)
            return outgoing

        async def send_all(outgoing: Sequence[Outgoing]) -> None:
            nonlocal attempts
            attempts += 1
            if attempts <= failed_sends:
                raise ConnectionError("broker went away")
            sent.extend(outgoing)
            if handled >= len(puts):
                done.set()

        def send_changelog(partition: int | None, key: str, value: Any,
                           *args: Any, **kwargs: Any) -> Any:
            changelog.append((key, value))
            return SimpleNamespace(message=SimpleNamespace(partition=partition_for(key, 6)))

        monkeypatch.setattr(runtime, "_handle", counting_handle)
        monkeypatch.setattr(runtime, "_send_all", send_all)
        for table in runtime.app.tables.values():
            monkeypatch.setattr(table, "send_changelog", send_changelog)
        async with agent.test_context() as context:
            for put in puts:
                await context.put(put.value, key=put.key, partition=put.partition,
                                  headers=list(put.headers))
            await asyncio.wait_for(done.wait(), WAIT_SECONDS)
        return Run(runtime, sent, attempts, changelog)

    return asyncio.run(main())


def events(n: int, *, seed: int = 1) -> list[dict[str, object]]:
    start = int(time.time() * 1000) - 600_000
    return [event for event, _ in TransactionGenerator(seed=seed, start_time_ms=start).generate(n)]


def ingested_batches(records: Sequence[dict[str, object]]) -> list[Put]:
    """What ingest would write for these events: one batch per partition, routed by account."""
    codec, now = Codec(), int(time.time() * 1000)
    sources = [SourceRecord(topic=PREFIX + "events", partition=0, offset=i, timestamp=now,
                            key=None, value=json.dumps(r).encode(), headers=[("app", b"t")])
               for i, r in enumerate(records)]
    batch, dead = ingest_batch(sources, codec=codec, dedupe=Dedupe(), now_ms=now, partitions=6)
    assert dead == []
    return [Put(value, partition) for partition, value in pack(codec, batch, stage="ingest")]


def batch_events(items: Sequence[Outgoing]) -> list[dict[str, Any]]:
    codec = Codec()
    return [event for item in items for event in per_event(unpack(codec, item.value))]


def per_event(batch: Batch) -> list[dict[str, Any]]:
    """One dict per event of a batch's columns, for assertions (``fields``: the event's fields,
    empty once the batch no longer carries them)."""
    fields = batch.records() if batch.fields else [{} for _ in range(len(batch))]
    return [{"event_id": batch.event_ids[i], "trace_id": batch.trace_ids[i],
             "value": batch.values[i], "fields": fields[i],
             "feature_quality": batch.feature_quality[i] if batch.feature_quality else "",
             "feature_vector": batch.features[i].tobytes()}
            for i in range(len(batch))]


def as_puts(items: Sequence[Outgoing]) -> list[Put]:
    return [Put(item.value, item.partition or 0, item.key, list(item.headers or []))
            for item in items]


# --- validation -----------------------------------------------------------------------------


def test_validation_sends_good_events_on_and_bad_ones_to_its_dead_letter_topic(
        make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    records = events(12)
    records[3] = {**records[3], "amount": -5.0}
    records[7] = {**records[7], "currency": "ZZZ", "merchant_category": "teleportation"}
    puts = [*ingested_batches(records), Put(b"\xc3\x01 not a batch", partition=2, key=b"k")]

    run = drive("validation", puts, make_settings(), monkeypatch)

    bad_ids = {str(records[3]["event_id"]), str(records[7]["event_id"])}
    passed = batch_events(run.to("validated"))
    assert sorted(env["event_id"] for env in passed) == sorted(
        str(r["event_id"]) for r in records if r["event_id"] not in bad_ids)
    for item in run.to("validated"):  # partitions are kept: per-account state downstream
        assert {partition_for(env["fields"]["account_id"], 6)
                for env in per_event(unpack(Codec(), item.value))} == {item.partition}
    letters = {context_of(item.headers).get("event.id"): item for item in run.to("dlq.validation")}
    assert set(letters) == {*bad_ids, None}
    amount = letters[str(records[3]["event_id"])]
    assert context_of(amount.headers)["error.code"] == "OUT_OF_RANGE"
    assert json.loads(amount.value) == records[3]  # the original input bytes
    assert amount.headers is not None and amount.headers[0] == ("app", b"t")
    two = context_of(letters[str(records[7]["event_id"])].headers)
    assert two["error.code"] == "NOT_ALLOWED"
    assert {d["field"] for d in json.loads(two["error.details"])} == {
        "currency", "merchant_category"}
    not_a_batch = letters[None]
    assert context_of(not_a_batch.headers)["error.code"] == "BAD_BATCH"
    assert (not_a_batch.value, not_a_batch.key) == (b"\xc3\x01 not a batch", b"k")
    assert run.runtime.metrics.by_code == {"OUT_OF_RANGE": 1, "NOT_ALLOWED": 1, "BAD_BATCH": 1}
    assert (run.runtime.metrics.records_in, run.runtime.metrics.records_out) == (12, 10)


class _ExplodingRules:
    def check_fields(self, fields: Any, size: int) -> Any:
        raise RuntimeError("rule engine bug")


def test_an_internal_error_dead_letters_each_original_event(
        make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validation, "shipped_rules", lambda settings: _ExplodingRules())
    records = events(5)
    run = drive("validation", ingested_batches(records), make_settings(), monkeypatch)
    letters = run.to("dlq.validation")
    assert {context_of(item.headers)["error.code"] for item in letters} == {"INTERNAL_ERROR"}
    assert sorted(context_of(item.headers).get("event.id", "") for item in letters) == sorted(
        str(r["event_id"]) for r in records)
    assert sorted(json.loads(item.value)["event_id"] for item in letters) == sorted(
        str(r["event_id"]) for r in records)


# --- ingest ---------------------------------------------------------------------------------


def test_ingest_routes_by_account_and_dead_letters_with_the_original_record(
        make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    codec = Codec()
    records = events(10)
    traceparent = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    puts = [Put(codec.encode(SCHEMA, r), partition=i % 6, key=str(r["event_id"]).encode(),
                headers=[("traceparent", traceparent)]) for i, r in enumerate(records[:5])]
    puts += [Put(json.dumps(r).encode(), key=b"j") for r in records[5:]]
    puts += [Put(b"\xffjunk", key=b"bad", headers=[("origin", b"shop"), ("empty", None)]),
             puts[0]]

    run = drive("ingest", puts, make_settings(), monkeypatch)

    envelopes = []
    for item in run.to("ingested"):
        batch = per_event(unpack(codec, item.value))
        assert {partition_for(str(env["fields"]["account_id"]), 6)
                for env in batch} == {item.partition}
        envelopes += batch
    assert sorted(env["event_id"] for env in envelopes) == sorted(
        str(r["event_id"]) for r in records)
    traced = [env for env in envelopes if env["value"] == puts[0].value]
    assert [env["trace_id"] for env in traced] == ["4bf92f3577b34da6a3ce929d0e0e4736"]
    letters = run.to("dlq.ingest")
    assert [context_of(item.headers)["error.code"] for item in letters] == [
        "BAD_MAGIC", "DUPLICATE_EVENT_ID"]
    junk = letters[0]
    assert (junk.key, junk.value) == (b"bad", b"\xffjunk")
    assert junk.headers is not None
    assert list(junk.headers[:2]) == [("origin", b"shop"), ("empty", None)]
    assert all(name.startswith(CONTEXT_PREFIX) for name, _ in junk.headers[2:])
    assert letters[1].value == puts[0].value
    assert context_of(letters[1].headers)["event.id"] == records[0]["event_id"]


def test_a_poison_message_is_isolated_and_the_rest_of_its_batch_goes_on(
        make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    real = ingest_batch

    def fragile(records: Sequence[SourceRecord], **kwargs: Any) -> Any:
        if any(record.value == b'{"poison": true}' for record in records):
            raise RuntimeError("decoder crashed")
        return real(records, **kwargs)

    monkeypatch.setattr(ingest, "ingest_batch", fragile)
    records = events(4)
    puts = [Put(json.dumps(r).encode()) for r in records[:2]]
    puts += [Put(b'{"poison": true}', key=b"p")]
    puts += [Put(json.dumps(r).encode()) for r in records[2:]]

    run = drive("ingest", puts, make_settings(batch_size="100"), monkeypatch)

    assert sorted(env["event_id"] for env in batch_events(run.to("ingested"))) == sorted(
        str(r["event_id"]) for r in records)
    [letter] = run.to("dlq.ingest")
    context = context_of(letter.headers)
    assert (context["error.code"], context["error.class"]) == ("INTERNAL_ERROR", "RuntimeError")
    assert (letter.key, letter.value) == (b"p", b'{"poison": true}')
    assert run.runtime.metrics.errors >= 2  # the batch, then the poison message alone


def test_outputs_are_redelivered_after_a_failed_send(
        make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    records = events(3)
    puts = [Put(json.dumps(r).encode()) for r in records]
    run = drive("ingest", puts, make_settings(batch_size="3"), monkeypatch, failed_sends=2)
    assert run.send_attempts == 3
    assert sorted(env["event_id"] for env in batch_events(run.to("ingested"))) == sorted(
        str(r["event_id"]) for r in records)


# --- feature and inference ------------------------------------------------------------------


def test_feature_adds_vectors_and_keeps_account_state_in_its_table(
        make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = events(2)
    second = {**second, "account_id": first["account_id"],
              "event_time": int(str(first["event_time"])) + 1_000}
    puts = [*ingested_batches([first]), *ingested_batches([second])]

    run = drive("feature", puts, make_settings(batch_size="1"), monkeypatch)

    out = batch_events(run.to("features"))
    assert [env["event_id"] for env in out] == [first["event_id"], second["event_id"]]
    assert all(len(env["feature_vector"]) == 8 * len(FEATURE_NAMES) for env in out)
    assert "no_state" in out[0]["feature_quality"]
    assert "no_state" not in out[1]["feature_quality"]  # the table remembered the account
    assert [key for key, _ in run.changelog] == [first["account_id"]] * 2
    assert run.to("dlq.feature") == []


def test_inference_predicts_every_event_and_dead_letters_misshapen_features(
        make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    codec = Codec()
    records = events(8)
    features = drive("feature", ingested_batches(records), make_settings(), monkeypatch)
    misshapen = ingested_batches([events(1, seed=9)[0]])  # no features at all

    run = drive("inference", [*as_puts(features.to("features")), *misshapen],
                make_settings(), monkeypatch)

    predictions = [codec.decode(item.value) for item in run.to("predictions")]
    assert sorted(p["event_id"] for p in predictions) == sorted(
        str(r["event_id"]) for r in records)
    assert {p["path"] for p in predictions} == {"primary"}
    assert {p["model_version"] for p in predictions} == {"fraud-primary:v1"}
    assert all(0.0 <= p["score"] <= 1.0 for p in predictions)
    assert all(p["label"] == (p["score"] >= p["threshold"]) for p in predictions)
    assert [item.key for item in run.to("predictions")] == [
        p["event_id"].encode() for p in predictions]
    [letter] = run.to("dlq.inference")
    assert context_of(letter.headers)["error.code"] == "FEATURE_SHAPE"
    assert context_of(letter.headers)["event.id"] == events(1, seed=9)[0]["event_id"]


# --- the whole pipeline ---------------------------------------------------------------------


def test_every_event_ends_in_exactly_one_place(
        make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    codec = Codec()
    injector = BadRecordInjector(seed=4, rate=0.3, json_share=0.3)
    good_ids: list[str] = []
    expected_dead: Counter[tuple[str, str, bytes]] = Counter()
    puts: list[Put] = []
    for event in events(120, seed=2):
        value, kind = injector.inject(event, lambda e: codec.encode(SCHEMA, e))
        puts.append(Put(value, key=(injector.last_event_id or "").encode()))
        if kind is None:
            good_ids.append(str(event["event_id"]))
        else:
            expected_dead[_where(kind, value)] += 1
    assert good_ids
    assert {topic for topic, _, _ in expected_dead} == {f"{PREFIX}dlq.ingest",
                                                        f"{PREFIX}dlq.validation"}

    settings = make_settings()
    dead: Counter[tuple[str, str, bytes]] = Counter()
    predicted: list[str] = []
    for stage in ("ingest", "validation", "feature", "inference"):
        assert puts, f"nothing reached {stage}"
        run = drive(stage, puts, settings, monkeypatch)
        for item in run.to(f"dlq.{stage}"):
            dead[(item.topic, context_of(item.headers)["error.code"], item.value)] += 1
        if stage == "inference":
            predicted = [codec.decode(item.value)["event_id"] for item in run.to("predictions")]
        puts = as_puts(run.to(SINKS[stage]))

    assert dead == expected_dead
    assert sorted(predicted) == sorted(good_ids)
    assert sum(dead.values()) + len(predicted) == 120


def _where(kind: BadKind, value: bytes) -> tuple[str, str, bytes]:
    return (f"{PREFIX}dlq.{kind.stage}", kind.code, value)

"""Retry topics on the real broker: a model that fails transiently for a while, or for good.

Both tests keep the primary's breaker closed (``TIDEGATE_BREAKER_MINIMUM_CALLS`` far above the
calls they make): an open breaker sends chunks to the fallback model at once, by design, and
these tests are about the records that wait in the retry topics.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.integration.pipeline import (
    cluster_config,
    expectations,
    install_faulty_primary,
    produce,
    running_pipeline,
    wait_for_outputs,
    wait_until_healthy,
)
from tidegate.cli.replay import ReplayRequest, replay
from tidegate.codec import Codec
from tidegate.deadletter import Code, context_of, header_value
from tidegate.example.stream import ExampleMessage, example_messages
from tidegate.kafka.scan import read_topic
from tidegate.redelivery import ATTEMPT_HEADER, Attempts, due_ms_of
from tidegate.settings import Settings
from tidegate.topics import DATA_STAGES

pytestmark = pytest.mark.integration



def _trickle(settings: Settings, rounds: int, *, seed: int) -> list[ExampleMessage]:
    """20 events every 0.1 s: many small batches, so many model calls."""
    sent: list[ExampleMessage] = []
    for n in range(rounds):
        sent += produce(settings, example_messages(20, seed=seed + n, json_share=0.0,
                                                   events_per_second=5000))
        time.sleep(0.1)
    return sent


def _predictions(settings: Settings) -> list[tuple[dict[str, Any], int]]:
    """Every prediction with the attempt that made it (1 unless retried)."""
    codec = Codec()
    return [(codec.decode(m.value() or b""), int(header_value(m.headers(), ATTEMPT_HEADER) or 1))
            for m in read_topic(cluster_config(settings), settings.topic_prefix + "predictions")]


def _retry_records(settings: Settings, n: int) -> list[Any]:
    return list(read_topic(cluster_config(settings),
                           f"{settings.topic_prefix}inference.retry.{n}"))


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_a_blip_is_answered_by_the_primary_after_a_retry_without_blocking_the_input(
        pipeline_settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        guarantee: str) -> None:
    monkeypatch.setenv("TIDEGATE_PROCESSING_GUARANTEE", guarantee)
    monkeypatch.setenv("TIDEGATE_RETRY_DELAYS", "1.5,1")
    monkeypatch.setenv("TIDEGATE_BREAKER_MINIMUM_CALLS", "1000")
    switch = tmp_path / "model.fault"
    switch.write_text("unavailable 3")  # the first three primary calls fail, then it answers
    install_faulty_primary(pipeline_settings, switch)
    with running_pipeline(pipeline_settings, stages=DATA_STAGES) as supervisor:
        wait_until_healthy(pipeline_settings, DATA_STAGES)
        sent = _trickle(pipeline_settings, 40, seed=1)
        outputs = wait_for_outputs(pipeline_settings, len(sent), supervisor=supervisor,
                                   timeout=60)
        restarts = {name: child.restarts for name, child in supervisor.children.items()}
    predicted, dead = expectations(sent)
    assert restarts == dict.fromkeys(restarts, 0), f"a stage crashed: {restarts}"
    assert outputs.predictions == predicted, "an event was lost or predicted twice"
    assert outputs.dead == dead
    made = _predictions(pipeline_settings)
    retried = [record for record, attempt in made if attempt > 1]
    assert retried, "no prediction came from a retry"
    assert {record["path"] for record in retried} == {"primary"}, "a retry fell back"
    assert {record["path"] for record, _ in made} == {"primary"}, "the blip was answered by "\
        "the fallback"
    waiting = _retry_records(pipeline_settings, 1)
    assert waiting, "nothing went through the first retry topic"
    # while a record waited for its due time, the input went on being scored
    history = [(Attempts.of(m.headers()).failures[0].at_ms, due_ms_of(m.headers()))
               for m in waiting]
    first_failed, first_due = min(history)
    meanwhile = [record for record, attempt in made
                 if attempt == 1 and first_failed < record["predicted_at"] < first_due]
    print(f"\nblip ({guarantee}): {len(retried)} predictions after a retry, "
          f"{len(waiting)} retry messages, {len(meanwhile)} input events scored while the "
          "first waited")
    assert meanwhile, "the input was not scored while a retry waited"


def test_attempts_spent_end_in_the_dead_letter_topic_with_every_attempt_and_replay(
        pipeline_settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TIDEGATE_RETRY_DELAYS", "0.3,0.3")
    monkeypatch.setenv("TIDEGATE_BREAKER_MINIMUM_CALLS", "1000")
    switch = tmp_path / "model.fault"
    switch.write_text("unavailable")  # every primary call fails transiently
    install_faulty_primary(pipeline_settings, switch)
    messages = list(example_messages(600, seed=3, bad_rate=0.05, json_share=0.0,
                                     events_per_second=5000))
    with running_pipeline(pipeline_settings, stages=DATA_STAGES) as supervisor:
        wait_until_healthy(pipeline_settings, DATA_STAGES)
        sent = produce(pipeline_settings, messages)
        outputs = wait_for_outputs(pipeline_settings, len(sent), supervisor=supervisor,
                                   timeout=60)
        predicted, dead = expectations(sent)
        letters = list(read_topic(cluster_config(pipeline_settings),
                                  pipeline_settings.topic_prefix + "dlq.inference"))
        # the model server is back: the exhausted dead letters replay into predictions
        switch.write_text("")
        summary = replay(cluster_config(pipeline_settings), ReplayRequest(
            topic="inference", codes=(Code.RETRIES_EXHAUSTED,)),
            prefix=pipeline_settings.topic_prefix)
        replayed = wait_for_outputs(pipeline_settings, 0, supervisor=supervisor, timeout=60,
                                    done=lambda out: set(predicted) <= set(out.predictions))
    assert not outputs.predictions, "an event was predicted although the model always failed"
    exhausted = Counter({(stage, code, value): n for (stage, code, value), n
                         in outputs.dead.items() if code == Code.RETRIES_EXHAUSTED})
    assert exhausted.total() == sum(predicted.values()), "an event was lost or repeated"
    assert outputs.dead - exhausted == dead, "poison did not go straight to its dead letters"
    ids = Counter(context_of(m.headers()).get("event.id") for m in letters)
    assert ids == predicted, "not every event ended as exactly one dead letter"
    for message in letters:
        context = context_of(message.headers())
        assert context["error.code"] == Code.RETRIES_EXHAUSTED
        assert context["attempt"] == "3"
        assert context["error.class"] == "ModelUnavailableError"
        attempts = [json.loads(context[f"attempt.{n}"]) for n in (1, 2, 3)]
        assert [a["class"] for a in attempts] == ["ModelUnavailableError"] * 3
        assert attempts[0]["at"] <= attempts[1]["at"] <= attempts[2]["at"]
        assert len(json.loads(context["error.details"])) == 3
        assert "attempt.4" not in context
    assert summary.replayed == len(letters)
    assert replayed.predictions == predicted, "a replayed event was lost or predicted twice"


def test_kill_9_while_records_wait_in_a_retry_topic_loses_and_repeats_nothing(
        pipeline_settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Exactly once: the retry record, the input offsets and later its outcome and the retry
    offsets commit in transactions, so a killed inference neither loses nor repeats an event.
    Each process fails its first two calls, so no record fails more than twice."""
    monkeypatch.setenv("TIDEGATE_PROCESSING_GUARANTEE", "exactly_once")
    monkeypatch.setenv("TIDEGATE_RETRY_DELAYS", "5,0.5,0.5")
    monkeypatch.setenv("TIDEGATE_BREAKER_MINIMUM_CALLS", "1000")
    switch = tmp_path / "model.fault"
    switch.write_text("unavailable 2")
    install_faulty_primary(pipeline_settings, switch)
    with running_pipeline(pipeline_settings, stages=DATA_STAGES) as supervisor, \
            ThreadPoolExecutor(1) as pool:
        wait_until_healthy(pipeline_settings, DATA_STAGES)
        sending = pool.submit(_trickle, pipeline_settings, 30, seed=7)
        deadline = time.monotonic() + 60
        while not _retry_records(pipeline_settings, 1):
            assert time.monotonic() < deadline, "nothing went to the retry topic"
            time.sleep(0.2)
        process = supervisor.children["inference"].process
        assert process is not None
        os.kill(process.pid, signal.SIGKILL)
        answered_before = sum(attempt > 1 for _, attempt in _predictions(pipeline_settings))
        supervisor.poll()
        sent = sending.result()
        predicted, dead = expectations(sent)
        outputs = wait_for_outputs(pipeline_settings, len(sent), supervisor=supervisor,
                                   timeout=90,
                                   done=lambda out: set(predicted) <= set(out.predictions))
        restarts = supervisor.children["inference"].restarts
    assert restarts >= 1, "inference was not restarted"
    assert set(predicted) <= set(outputs.predictions), "an event was lost"
    assert outputs.predictions == predicted, "an event was predicted twice"
    assert outputs.dead == dead
    retried = sum(attempt > 1 for _, attempt in _predictions(pipeline_settings))
    print(f"\nkill -9 of inference with records waiting: {len(sent)} events, none lost or "
          f"repeated; {retried} predictions after a retry ({answered_before} before the kill)")
    assert retried > answered_before, "no retry was answered after the restart"

"""validation: every record of a micro-batch judged by the declarative rules at once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from importlib.resources import files
from typing import Any

from tidegate.batches import Batch, pack
from tidegate.deadletter import DeadLetter
from tidegate.outputs import Outgoing
from tidegate.pipeline.validation import RuleSet, load_rules
from tidegate.runtime.stage import StageRuntime
from tidegate.settings import Settings

__all__ = ["STAGE", "build", "shipped_rules"]

STAGE = "validation"


def shipped_rules(settings: Settings) -> RuleSet:
    """The configured rules file, or the one that ships with the example."""
    return load_rules(settings.rules_file or files("tidegate.example") / "rules.toml")


def build(settings: Settings) -> StageRuntime:
    """The validation stage: ``ingested`` in, ``validated`` and ``dlq.validation`` out."""
    runtime = StageRuntime(STAGE, settings)
    runtime.follow_control()
    assert runtime.topics.sink is not None
    sink_name = runtime.name(runtime.topics.sink)
    rules = shipped_rules(settings)

    async def validate_events(events: Sequence[Any]) -> list[Outgoing]:
        batches, dead = runtime.unpack_batches(events)
        batch = Batch.concat(batches)
        result = rules.check(batch.records())
        for index in result.failed():
            violations = result.for_record(index)
            dead.append(DeadLetter.of(
                batch.source(index), stage=STAGE, code=violations[0].code,
                error_class="ValidationError",
                message="; ".join(f"{v.field}: {v.message}" for v in violations),
                event_id=batch.event_ids[index], trace_id=batch.trace_ids[index],
                details=[asdict(v) for v in violations],
            ))
        good = batch.take(result.passed())
        runtime.metrics.record_batch(records_in=len(batch), records_out=len(good),
                                     latencies_ms=good.ages_ms())
        for warning in result.warnings:
            runtime.metrics.extra[f"warning.{warning.field}"] = warning.message
        out = [Outgoing(topic=sink_name, partition=partition, value=value)
               for partition, value in pack(runtime.codec, good, stage=STAGE)]
        return out + runtime.dead_letters(dead)

    runtime.consume(validate_events, name="validate_events")
    return runtime

"""validation: every record of a micro-batch judged by the declarative rules at once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from importlib.resources import files
from typing import Any

from tidegate.batches import Batch, unpack_messages
from tidegate.deadletter import DeadLetter
from tidegate.errors import ValidationError
from tidegate.outputs import Outputs, forward
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

    async def validate_events(events: Sequence[Any]) -> Outputs:
        batches, dead = unpack_messages(runtime.codec, events, stage=STAGE)
        batch = Batch.concat(batches)
        result = rules.check_fields(batch.by_field(), len(batch))
        for index in result.failed():
            violations = result.for_record(index)
            dead.append(DeadLetter.of(
                batch.source(index), stage=STAGE, code=violations[0].code,
                error_class=ValidationError.__name__,
                message="; ".join(f"{v.field}: {v.message}" for v in violations),
                event_id=batch.event_ids[index], trace_id=batch.trace_ids[index],
                details=[asdict(v) for v in violations],
            ))
        good = batch.take(result.passed())
        for warning in result.warnings:
            runtime.metrics.extra[f"warning.{warning.field}"] = warning.message
        return Outputs(forward(runtime.codec, good, topic=sink_name, stage=STAGE), dead=dead,
                       records_in=len(batch), records_out=len(good), latencies_ms=good.ages_ms(),
                       traceparents=batch.traceparents)

    runtime.consume(validate_events, name="validate_events")
    return runtime

"""The topic catalog: the single source of truth for every topic tidegate reads or writes.

Pure data, importable without a broker. Names take a configurable prefix so several pipelines
(and parallel tests) share one cluster.

Example::

    from tidegate.topics import CATALOG, stage_topics
    names = [spec.name("shop.") for spec in CATALOG]
    stage_topics("validation").dead_letter.name("shop.")   # 'shop.dlq.validation'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "ACCOUNTS",
    "CATALOG",
    "DATA_STAGES",
    "MAX_RETRIES",
    "STAGES",
    "STAGE_ORDER",
    "CleanupPolicy",
    "StageTopics",
    "TopicSpec",
    "by_key",
    "downstream_of",
    "retry_topic",
    "stage_topics",
]

CleanupPolicy = Literal["delete", "compact"]

_HOUR_MS = 3_600_000
_DAY_MS = 24 * _HOUR_MS


@dataclass(frozen=True, kw_only=True)
class TopicSpec:
    """One topic: its logical key, size, retention, cleanup policy and value schema."""

    key: str
    partitions: int
    retention_ms: int
    cleanup_policy: CleanupPolicy = "delete"
    value_schema: str | None = None
    dead_letter_of: str | None = None
    retry_of: str | None = None  # the stage this retry topic feeds back (retry topics only)
    internal: bool = False
    # an internal topic whose batches are split by account, one message per partition (the
    # next stage keeps per-account order or state); otherwise a batch goes whole, as one
    # message to a partition the producer picks
    by_account: bool = False
    # the broker stamps each record when it appends it, so no writer can backdate one
    log_append_time: bool = False
    description: str = ""

    def name(self, prefix: str) -> str:
        return prefix + self.key

    def configs(self) -> dict[str, str]:
        """The topic-level configuration tidegate creates and checks."""
        configs = {"cleanup.policy": self.cleanup_policy, "retention.ms": str(self.retention_ms)}
        if self.log_append_time:
            configs["message.timestamp.type"] = "LogAppendTime"
        return configs


def _dead_letter(stage: str) -> TopicSpec:
    return TopicSpec(
        key=f"dlq.{stage}", partitions=3, retention_ms=30 * _DAY_MS, dead_letter_of=stage,
        description=f"records the {stage} stage rejected: original key, value and headers, "
        "plus error context in headers",
    )


EVENTS = TopicSpec(
    key="events", partitions=6, retention_ms=7 * _DAY_MS,
    value_schema="tidegate.example.CardTransaction",
    description="input events from producers (Avro in either framing, or JSON)",
)
INGESTED = TopicSpec(
    key="ingested", partitions=6, retention_ms=_DAY_MS, internal=True, by_account=True,
    value_schema="tidegate.internal.EventPack",
    description="decoded, de-duplicated, traced micro-batches, partitioned by account",
)
VALIDATED = TopicSpec(
    key="validated", partitions=6, retention_ms=_DAY_MS, internal=True, by_account=True,
    value_schema="tidegate.internal.EventPack",
    description="micro-batches that passed every rule, partitioned by account",
)
FEATURES = TopicSpec(
    key="features", partitions=6, retention_ms=_DAY_MS, internal=True,
    value_schema="tidegate.internal.EventPack",
    description="micro-batches with their feature vectors, each whole in one message: "
    "inference scores events one by one and keeps no per-account order",
)
ACCOUNTS = TopicSpec(
    key="feature.accounts", partitions=VALIDATED.partitions, retention_ms=365 * _DAY_MS,
    cleanup_policy="compact", internal=True,
    description="the feature stage's per-account state, compacted; partition n holds the "
    "accounts of validated partition n",
)
PREDICTIONS = TopicSpec(
    key="predictions", partitions=6, retention_ms=7 * _DAY_MS,
    value_schema="tidegate.Prediction",
    description="one prediction per accepted event, keyed by event id",
)
HEALTH = TopicSpec(
    key="health", partitions=1, retention_ms=_DAY_MS, value_schema="tidegate.HealthEvent",
    description="health events every stage emits every few seconds",
)
CONTROL = TopicSpec(
    key="control", partitions=1, retention_ms=365 * _DAY_MS, cleanup_policy="compact",
    value_schema="tidegate.ControlCommand", log_append_time=True,
    description="control commands keyed by target, compacted: a restarted stage recovers its "
    "mode; stamped by the broker, so a signed command's age is the broker's to judge",
)
LABELS = TopicSpec(
    key="labels", partitions=3, retention_ms=30 * _DAY_MS, value_schema="tidegate.Label",
    description="ground-truth labels joined to predictions by event id",
)
ALERTS = TopicSpec(
    key="alerts", partitions=1, retention_ms=30 * _DAY_MS, value_schema="tidegate.Alert",
    description="alerts raised and resolved by monitoring",
)

AUDIT = TopicSpec(
    key="audit", partitions=1, retention_ms=365 * _DAY_MS,
    description="one JSON record per operator action (a command, a dead-letter replay) and per "
    "command a stage refused: who, what, why",
)

_DLQ = {stage: _dead_letter(stage) for stage in ("ingest", "validation", "feature", "inference")}

# Retry topics, one per retry (TIDEGATE_RETRY_DELAYS names how long each waits): a fixed
# number, so the catalog, the ACLs and compose need not follow a setting.
MAX_RETRIES = 3


def retry_topic(stage: str, attempt: int) -> TopicSpec:
    """Where a record of ``stage`` waits after its ``attempt``-th transient failure.

    >>> retry_topic("inference", 1).key
    'inference.retry.1'
    """
    return TopicSpec(
        key=f"{stage}.retry.{attempt}", partitions=FEATURES.partitions, retention_ms=_DAY_MS,
        internal=True, value_schema="tidegate.internal.EventPack", retry_of=stage,
        description=f"{stage}'s records waiting for retry attempt {attempt + 1} after a "
        "transient failure, with the due time and earlier errors in headers",
    )


_RETRY = tuple(retry_topic("inference", n) for n in range(1, MAX_RETRIES + 1))

CATALOG: tuple[TopicSpec, ...] = (
    EVENTS, INGESTED, VALIDATED, FEATURES, ACCOUNTS, PREDICTIONS, *_DLQ.values(), *_RETRY,
    HEALTH, CONTROL, LABELS, ALERTS, AUDIT,
)


@dataclass(frozen=True, kw_only=True)
class StageTopics:
    """The topics one stage consumes, produces and dead-letters to."""

    stage: str
    source: TopicSpec
    sink: TopicSpec | None
    dead_letter: TopicSpec | None
    retry: tuple[TopicSpec, ...] = ()  # by attempt: retry[0] holds records after a first failure


STAGES: dict[str, StageTopics] = {
    "ingest": StageTopics(stage="ingest", source=EVENTS, sink=INGESTED,
                          dead_letter=_DLQ["ingest"]),
    "validation": StageTopics(stage="validation", source=INGESTED, sink=VALIDATED,
                              dead_letter=_DLQ["validation"]),
    "feature": StageTopics(stage="feature", source=VALIDATED, sink=FEATURES,
                           dead_letter=_DLQ["feature"]),
    "inference": StageTopics(stage="inference", source=FEATURES, sink=PREDICTIONS,
                             dead_letter=_DLQ["inference"], retry=_RETRY),
    "monitoring": StageTopics(stage="monitoring", source=HEALTH, sink=CONTROL, dead_letter=None),
}


def by_key(key: str) -> TopicSpec:
    """The catalog entry for a logical key such as ``"dlq.validation"``."""
    for spec in CATALOG:
        if spec.key == key:
            return spec
    raise KeyError(key)


def stage_topics(stage: str) -> StageTopics:
    return STAGES[stage]


def downstream_of(stage: str) -> str | None:
    """The stage that reads ``stage``'s output, or None (inference and monitoring)."""
    sink = STAGES[stage].sink
    return next((other.stage for other in STAGES.values() if sink and other.source == sink), None)


# The stages in the order events pass through them, then monitoring; those with a dead-letter
# topic are the ones events pass through.
STAGE_ORDER: tuple[str, ...] = tuple(STAGES)
DATA_STAGES: tuple[str, ...] = tuple(s for s, spec in STAGES.items() if spec.dead_letter)

"""Least-privilege ACLs for the pipeline's principals, derived from the topic catalog.

One principal per stage (``ingest``, ``validation``, ``feature``, ``inference``,
``monitoring``) and ``operator`` for people and the CLI. A stage may read its source, the
control and the health topic, read and write its retry topics, write its sink, its dead-letter
topic, the health and the audit topic (refused commands), use its own consumer groups and
transactional ids, and keep the Faust app's own topics. Only ``operator`` and ``monitoring``
may write the control topic. Everything not granted is denied (the broker runs with
``allow.everyone.if.no.acl.found=false``).

Example::

    for grant in pipeline_acls(settings):
        print(grant.line())   # User:ingest ALLOW READ topic tidegate.events (literal)
    apply_acls(admin_config(settings), pipeline_acls(settings))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from tidegate.errors import ConfigError
from tidegate.kafka.refusal import Refusals
from tidegate.kafka.secure import OPERATOR
from tidegate.settings import ClientConfig, Settings
from tidegate.topics import ACCOUNTS, STAGES, by_key, downstream_of

__all__ = ["Grant", "apply_acls", "pipeline_acls"]

Resource = Literal["topic", "group", "transactional_id"]
Pattern = Literal["literal", "prefixed"]
Operation = Literal["READ", "WRITE", "CREATE", "DESCRIBE", "DESCRIBE_CONFIGS"]

# Reads of a whole topic (tidegate tail, dlq, a stage recovering its mode) assign partitions
# themselves; they only name this group and never commit (tidegate.kafka.scan).
SCAN_GROUP = "tidegate-reader"


@dataclass(frozen=True, kw_only=True, order=True)
class Grant:
    """One ALLOW binding: ``principal`` may do ``operation`` on a resource (any host)."""

    principal: str
    resource: Resource
    name: str
    pattern: Pattern
    operation: Operation

    def line(self) -> str:
        """The grant as one line, as ``init --acls --dry-run`` prints it."""
        return (f"User:{self.principal} ALLOW {self.operation} {self.resource} {self.name} "
                f"({self.pattern})")

    def binding(self) -> AclBinding:
        return AclBinding(ResourceType[self.resource.upper()], self.name,
                          ResourcePatternType[self.pattern.upper()], f"User:{self.principal}",
                          "*", AclOperation[self.operation], AclPermissionType.ALLOW)


def pipeline_acls(settings: Settings) -> tuple[Grant, ...]:
    """Every grant the pipeline needs under ``settings.topic_prefix``, sorted, no repeats.

    Both readers (librdkafka and Faust) and both guarantees are covered, so switching one
    needs no new ACLs.

    >>> sorted({g.principal for g in pipeline_acls(Settings(topic_prefix="shop."))})
    ['feature', 'inference', 'ingest', 'monitoring', 'operator', 'validation']
    """
    prefix = settings.topic_prefix
    if not prefix:  # every grant is scoped by it; without one, they would cover the cluster
        raise ConfigError("ACLs need a topic prefix: set TIDEGATE_TOPIC_PREFIX")
    grants = [grant for stage in STAGES for grant in _stage(stage, prefix)]
    return tuple(sorted(set(grants + _operator(prefix))))


def _stage(stage: str, prefix: str) -> list[Grant]:
    topics = STAGES[stage]
    own = f"{prefix}{stage}"  # the Faust app id: its consumer group, and what its names start with

    def grant(resource: Resource, name: str, *operations: Operation,
              pattern: Pattern = "literal") -> list[Grant]:
        return [Grant(principal=stage, resource=resource, name=name, pattern=pattern,
                      operation=op) for op in operations]

    # every stage audits the control commands it refuses, and reads its own last health
    # reports back at start (a dead-letter guard open when its predecessor stopped)
    writes = [spec for spec in (topics.sink, topics.dead_letter, by_key("health"),
                                by_key("audit")) if spec]
    reads = [topics.source, by_key("control"), by_key("health")]
    # records waiting out a transient failure leave and come back through the retry topics
    reads += topics.retry
    writes += topics.retry
    if stage == "ingest":
        writes.append(by_key("predictions"))  # shed events are answered at ingest
    if stage == "feature":
        reads.append(ACCOUNTS)
        writes.append(ACCOUNTS)
    if stage == "monitoring":  # it follows predictions and labels, and issues audited commands
        reads += [by_key("predictions"), by_key("labels")]
        writes += [by_key("alerts")]
    result = [g for spec in reads for g in grant("topic", spec.name(prefix), "READ")]
    result += [g for spec in writes for g in grant("topic", spec.name(prefix), "WRITE")]
    result += grant("group", own, "READ")  # the Faust app's group
    # its input group (<app>-input), monitoring's follower groups (<app>-predictions, ...)
    result += grant("group", f"{own}-", "READ", pattern="prefixed")
    result += grant("group", SCAN_GROUP, "READ")
    # exactly once: the transactional id is <input group>-<worker>
    result += grant("transactional_id", f"{own}-", "WRITE", pattern="prefixed")
    # Faust creates and uses its own topics: the leader topic (<app>-__assignor-__leader)
    # and, with the Faust reader, table changelogs (<app>-<table>-changelog)
    result += grant("topic", f"{own}-", "CREATE", "READ", "WRITE", pattern="prefixed")
    if stage == "feature":  # restoring the account state reads its changelog with this group
        result += grant("group", f"{ACCOUNTS.name(prefix)}-restore", "READ")
    following = downstream_of(stage)
    if following is not None:  # backpressure probes the next stage's lag on the sink
        result += grant("group", f"{prefix}{following}-input", "DESCRIBE")
    return result


def _operator(prefix: str) -> list[Grant]:
    """The operator works on every topic of this pipeline: it creates the catalog, produces
    events, tails and replays dead letters, issues control commands and reads their audit."""
    operations: tuple[Operation, ...] = ("READ", "WRITE", "CREATE", "DESCRIBE_CONFIGS")
    topics = [Grant(principal=OPERATOR, resource="topic", name=prefix, pattern="prefixed",
                    operation=op) for op in operations]
    group_names: tuple[tuple[str, Pattern], ...] = ((prefix, "prefixed"), (SCAN_GROUP, "literal"))
    groups = [Grant(principal=OPERATOR, resource="group", name=name, pattern=pattern,
                    operation="READ") for name, pattern in group_names]
    return [*topics, *groups]


def apply_acls(config: ClientConfig, grants: Sequence[Grant], *,
               timeout: float = 30.0) -> int:
    """Create the grants on the cluster (creating one twice is harmless); return how many."""
    refusals = Refusals(config)
    admin = AdminClient({**config, **refusals.hooks()})
    try:
        futures = admin.create_acls([grant.binding() for grant in grants],
                                    request_timeout=timeout)
    except KafkaException as exc:
        raise refusals.explain(admin, exc.args[0], "create ACLs") from exc
    for binding, future in futures.items():
        try:
            future.result()
        except KafkaException as exc:
            raise refusals.explain(admin, exc.args[0], f"create the ACL {binding}") from exc
    return len(futures)

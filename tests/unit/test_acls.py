"""The ACL builder: least privilege from the catalog, no broker needed."""

from __future__ import annotations

import pytest
from confluent_kafka.admin import ResourcePatternType

from tidegate.errors import ConfigError
from tidegate.kafka.acls import SCAN_GROUP, Grant, pipeline_acls
from tidegate.runtime.app import input_group
from tidegate.settings import Settings
from tidegate.topics import CATALOG, STAGES, by_key

pytestmark = pytest.mark.unit

PREFIX = "shop."


@pytest.fixture
def grants() -> tuple[Grant, ...]:
    return pipeline_acls(Settings(topic_prefix=PREFIX))


def allowed(grants: tuple[Grant, ...], principal: str, resource: str, name: str,
            operation: str) -> bool:
    """Whether the grants let ``principal`` do ``operation`` on ``name``, as the broker
    decides: a literal or prefixed match, and READ/WRITE/CREATE imply DESCRIBE."""
    implied = {operation} | ({"READ", "WRITE", "CREATE", "DESCRIBE_CONFIGS"}
                             if operation == "DESCRIBE" else set())
    return any(g.principal == principal and g.resource == resource
               and g.operation in implied
               and (g.name == name if g.pattern == "literal" else name.startswith(g.name))
               for g in grants)


def test_sorted_without_repeats_and_one_line_each(grants: tuple[Grant, ...]) -> None:
    assert list(grants) == sorted(set(grants))
    assert grants[0].line() == f"User:feature ALLOW READ group {PREFIX}feature (literal)"
    assert all("\n" not in g.line() for g in grants)


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_stage_reads_its_source_and_control_and_writes_its_outputs(
        grants: tuple[Grant, ...], stage: str) -> None:
    topics = STAGES[stage]
    assert allowed(grants, stage, "topic", topics.source.name(PREFIX), "READ")
    assert allowed(grants, stage, "topic", PREFIX + "control", "READ")
    for spec in (topics.sink, topics.dead_letter, by_key("health")):
        if spec is not None:
            assert allowed(grants, stage, "topic", spec.name(PREFIX), "WRITE")
    for reader in ("librdkafka", "faust"):
        group = input_group(stage, Settings(topic_prefix=PREFIX, reader=reader))
        assert allowed(grants, stage, "group", group, "READ")
    transactional = f"{input_group(stage, Settings(topic_prefix=PREFIX))}-3"
    assert allowed(grants, stage, "transactional_id", transactional, "WRITE")
    leader = f"{PREFIX}{stage}-__assignor-__leader"  # Faust creates it at start
    assert allowed(grants, stage, "topic", leader, "CREATE")


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_stage_touches_nothing_of_another_stage(grants: tuple[Grant, ...],
                                                  stage: str) -> None:
    for other, topics in STAGES.items():
        if other == stage:
            continue
        if topics.dead_letter is not None:
            assert not allowed(grants, stage, "topic", topics.dead_letter.name(PREFIX), "WRITE")
        assert not allowed(grants, stage, "group", input_group(other, Settings(
            topic_prefix=PREFIX)), "READ")
        assert not allowed(grants, stage, "transactional_id", f"{PREFIX}{other}-input-0",
                           "WRITE")
    assert not allowed(grants, stage, "topic", PREFIX + "events", "WRITE")
    assert not any(g.principal == stage and g.operation == "CREATE"
                   and not g.name.startswith(f"{PREFIX}{stage}-") for g in grants)


def test_only_inference_reads_and_writes_the_retry_topics(grants: tuple[Grant, ...]) -> None:
    for spec in STAGES["inference"].retry:
        for operation in ("READ", "WRITE"):
            users = {p for p in {g.principal for g in grants}
                     if allowed(grants, p, "topic", spec.name(PREFIX), operation)}
            assert users == {"inference", "operator"}
    assert allowed(grants, "inference", "group", f"{PREFIX}inference-retry", "READ")


def test_only_operator_and_monitoring_write_control(grants: tuple[Grant, ...]) -> None:
    writers = {p for p in {g.principal for g in grants}
               if allowed(grants, p, "topic", PREFIX + "control", "WRITE")}
    assert writers == {"operator", "monitoring"}


def test_every_principal_audits_and_reads_health_back(grants: tuple[Grant, ...]) -> None:
    for principal in {g.principal for g in grants}:  # refused commands; the guard at start
        assert allowed(grants, principal, "topic", PREFIX + "audit", "WRITE")
        assert allowed(grants, principal, "topic", PREFIX + "health", "READ")


def test_every_catalog_topic_is_written_by_someone_and_read_by_operator(
        grants: tuple[Grant, ...]) -> None:
    for spec in CATALOG:
        assert allowed(grants, "operator", "topic", spec.name(PREFIX), "READ")
    stage_writes = {spec.key for spec in CATALOG for stage in STAGES
                    if allowed(grants, stage, "topic", spec.name(PREFIX), "WRITE")}
    assert set(s.key for s in CATALOG) - stage_writes == {"events", "labels"}  # from outside


def test_nothing_outside_the_prefix_but_the_scan_group(grants: tuple[Grant, ...]) -> None:
    outside = {g.name for g in grants if not g.name.startswith(PREFIX)}
    assert outside == {SCAN_GROUP}
    assert all(g.name != "*" for g in grants)


def test_a_binding_for_the_admin_client(grants: tuple[Grant, ...]) -> None:
    binding = next(g for g in grants if g.resource == "transactional_id").binding()
    assert binding.principal == "User:feature" and binding.host == "*"
    assert binding.resource_pattern_type == ResourcePatternType.PREFIXED


def test_an_empty_prefix_is_refused() -> None:
    with pytest.raises(ConfigError, match="TIDEGATE_TOPIC_PREFIX"):
        pipeline_acls(Settings(topic_prefix=""))

"""The topic catalog on the real broker: create, idempotence, mismatch reporting, the CLI."""

from __future__ import annotations

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from tests.conftest import Cluster
from tidegate.cli.main import main
from tidegate.kafka.admin import describe_topics, ensure_topics
from tidegate.settings import ClientConfig, Settings
from tidegate.topics import CATALOG, by_key

pytestmark = pytest.mark.integration


def test_create_twice_changes_nothing(kafka: Cluster, prefix: str) -> None:
    config: ClientConfig = {"bootstrap.servers": kafka.bootstrap}
    first = ensure_topics(config, CATALOG, prefix=prefix, replication=1)
    second = ensure_topics(config, CATALOG, prefix=prefix, replication=1)
    assert {r.action for r in first} == {"created"}
    assert {r.action for r in second} == {"exists"}
    control = next(r for r in second if r.name == prefix + "control")
    assert control.configs["cleanup.policy"] == "compact"
    assert [r.partitions for r in second] == [spec.partitions for spec in CATALOG]


def test_mismatch_is_reported_not_accepted(kafka: Cluster, prefix: str) -> None:
    config: ClientConfig = {"bootstrap.servers": kafka.bootstrap}
    events = by_key("events")
    admin = AdminClient(config)
    admin.create_topics([NewTopic(events.name(prefix), num_partitions=2,
                                  replication_factor=1)])[events.name(prefix)].result()
    reports = ensure_topics(config, [events], prefix=prefix, replication=1)
    assert reports[0].action == "mismatch"
    assert any("partitions 2, catalog says 6" in p for p in reports[0].problems)
    assert any("retention.ms" in p for p in reports[0].problems)
    again = describe_topics(config, [events], prefix=prefix, replication=1)
    assert again[0].partitions == 2, "a mismatch must never be altered silently"


def test_cli_create_list_describe(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topics", "create"]) == 0
    assert main(["topics", "list"]) == 0
    listed = capsys.readouterr().out
    for spec in CATALOG:
        assert spec.name(settings.topic_prefix) in listed
    assert main(["topics", "describe", "dlq.validation", "--json"]) == 0
    described = capsys.readouterr().out
    assert '"dead_letter_of": "validation"' in described
    assert main(["topics", "describe", "no-such-topic"]) == 2
    assert "not in the catalog" in capsys.readouterr().err

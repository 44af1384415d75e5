"""When a reader's offsets reach the broker: refused commits logged, the last ones waited for."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, TopicPartition

from tidegate.kafka.reader import PendingCommits, report_commit

pytestmark = pytest.mark.unit


def test_a_refused_offset_commit_is_logged_with_its_partitions(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="tidegate.kafka.reader"):
        report_commit(None, [TopicPartition("t.ingested", 0, 5)])
        assert not caplog.records
        report_commit(KafkaError(KafkaError.REBALANCE_IN_PROGRESS),
                       [TopicPartition("t.ingested", 2, 41), TopicPartition("t.ingested", 3, 7)])
    assert len(caplog.records) == 1
    assert "offset commit failed" in caplog.text
    assert "t.ingested[2]@41, t.ingested[3]@7" in caplog.text


class _Commits:
    """A consumer that records its commits: (offsets by partition, asynchronous)."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[int, int], bool]] = []

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> None:
        self.calls.append(({tp.partition: tp.offset for tp in offsets}, asynchronous))


def test_closing_commits_again_and_waits_for_what_an_asynchronous_commit_sent() -> None:
    # the feature stage's stop: its deferred offsets go out asynchronously, then it closes;
    # librdkafka need not finish that commit, so the close commits it again and waits
    consumer = _Commits()
    pending = PendingCommits(consumer, interval=60.0)
    pending.add([TopicPartition("t.validated", 0, 10), TopicPartition("t.validated", 1, 4)])
    pending.now()
    pending.add([TopicPartition("t.validated", 1, 9)])
    pending.flush()
    assert consumer.calls == [({0: 10, 1: 4}, True), ({0: 10, 1: 9}, False)]
    pending.flush()  # nothing new: nothing to send
    assert len(consumer.calls) == 2


def test_a_lost_partition_is_never_committed_again_and_a_revoked_one_is_handed_over() -> None:
    consumer = _Commits()
    pending = PendingCommits(consumer, interval=60.0)
    pending.add([TopicPartition("t.validated", p, 5) for p in range(3)])
    pending.now()
    pending.forget([TopicPartition("t.validated", 0)])  # another member may own it already
    pending.hand_over([TopicPartition("t.validated", 1)])
    pending.flush()
    assert consumer.calls == [({0: 5, 1: 5, 2: 5}, True), ({1: 5}, False), ({2: 5}, False)]

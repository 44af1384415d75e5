"""``LagProbe`` on the real broker: committed and end offsets per partition, and no reading at all
(rather than a wrong one, or a crash) when the topic is not there."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from tests.conftest import Cluster
from tests.integration.test_reader import _create_topic
from tidegate.runtime.backpressure import LagProbe, PartitionOffsets
from tidegate.settings import ClientConfig

pytestmark = pytest.mark.integration


def test_the_probe_reads_each_partitions_committed_and_end_offset(kafka: Cluster) -> None:
    config: ClientConfig = {"bootstrap.servers": kafka.bootstrap}
    topic, group = f"probe-{uuid.uuid4().hex[:8]}", "probe-group"
    _create_topic(config, topic, 3)
    producer = Producer(config)
    for partition, count in ((0, 10), (1, 4)):  # partition 2 stays empty
        for i in range(count):
            producer.produce(topic, value=b"x%d" % i, partition=partition)
    assert producer.flush(30) == 0
    committer = Consumer({**config, "group.id": group, "enable.auto.commit": False})
    committer.commit(offsets=[TopicPartition(topic, 0, 7)], asynchronous=False)
    committer.close()

    probe = LagProbe(config, group=group, topic=topic)
    try:
        offsets = probe.offsets()
        lag = probe.lag()
    finally:
        probe.close()

    assert offsets == {0: PartitionOffsets(committed=7, end=10),
                       1: PartitionOffsets(committed=-1, end=4),
                       2: PartitionOffsets(committed=-1, end=0)}
    assert lag == 3 + 4


def test_a_probe_of_a_missing_topic_reads_nothing(kafka: Cluster) -> None:
    probe = LagProbe({"bootstrap.servers": kafka.bootstrap}, group="probe-none",
                     topic=f"absent-{uuid.uuid4().hex[:8]}", timeout=2.0)
    try:
        assert probe.offsets() is None
        assert probe.lag() is None
    finally:
        probe.close()

"""The bench's latency breakdown on the real broker: each event's age when each stage wrote it,
read back from the internal topics' message timestamps and the batches' event times."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
from confluent_kafka import Producer

from tests.conftest import Cluster
from tidegate.batches import pack
from tidegate.cli.hops import hop_ages, hop_line
from tidegate.codec import Codec
from tidegate.deadletter import SourceRecord
from tidegate.example.stream import example_messages
from tidegate.kafka.admin import ensure_topics
from tidegate.pipeline.dedupe import Dedupe
from tidegate.pipeline.ingest import ingest_batch
from tidegate.settings import ClientConfig
from tidegate.topics import CATALOG, by_key

pytestmark = pytest.mark.integration

# the run's first event time: a minute ago (the broker refuses timestamps an hour ahead)
START_MS = (int(time.time()) - 60) * 1000


def test_each_hop_is_the_message_stamp_less_the_event_time_of_the_runs_events(
        kafka: Cluster, prefix: str) -> None:
    config: ClientConfig = {"bootstrap.servers": kafka.bootstrap}
    ensure_topics(config, CATALOG, prefix=prefix, replication=1)
    codec = Codec()
    records = [SourceRecord(topic="events", partition=0, offset=i, timestamp=0, key=m.key,
                            value=m.value, headers=[])
               for i, m in enumerate(example_messages(100, seed=7, json_share=0.0))]
    batch, dead = ingest_batch(records, codec=codec, dedupe=Dedupe(max_ids=1000),
                               now_ms=int(time.time() * 1000), partitions=6)
    assert not dead
    # events 0..99 due 10 ms apart; the first ten before the run (they must not count)
    times = START_MS + np.arange(-100, 900, 10, dtype=np.int64)
    batch = dataclasses.replace(batch, event_times=times, ingested_at=times + 30)
    producer = Producer(config)
    # every stage writes its message at a fixed stamp after the batch's last event time
    for topic_key, after_ms in (("ingested", 40), ("validated", 45), ("features", 60)):
        for partition, value in pack(codec, batch, stage="test"):
            producer.produce(by_key(topic_key).name(prefix), value=value, partition=partition,
                             timestamp=int(times[-1]) + after_ms)
    assert producer.flush(30) == 0

    hops = hop_ages(config, prefix, start_ms=START_MS, end_ms=START_MS + 1000)

    run = times[times >= START_MS]  # the 90 events inside the window
    for hop, stamp in (("ingest", 40), ("validation", 45), ("feature", 60)):
        ages = int(times[-1]) + stamp - run
        assert hops[hop] == {"events": 90, "p50_ms": float(np.percentile(ages, 50)),
                             "p99_ms": float(np.percentile(ages, 99))}, hop
    assert hops["ingest start"] == {"events": 90, "p50_ms": 30.0, "p99_ms": 30.0}
    assert hop_line(hops).startswith("  event time to each hop, p50/p99 ms: ingest start 30/30, "
                                     "ingest 485/")


def test_a_window_with_no_events_reads_as_unmeasured(kafka: Cluster, prefix: str) -> None:
    config: ClientConfig = {"bootstrap.servers": kafka.bootstrap}
    ensure_topics(config, CATALOG, prefix=prefix, replication=1)
    hops = hop_ages(config, prefix, start_ms=START_MS, end_ms=START_MS + 1000)
    assert all(found == {"events": 0} for found in hops.values())
    assert hop_line(hops) == "  event time to each hop, p50/p99 ms: not measured"

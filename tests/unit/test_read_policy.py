"""How much a stage reads at once, and how long it waits for a batch to fill."""

from __future__ import annotations

import pytest

from tidegate.kafka.reader import batch_messages, read_linger
from tidegate.settings import Settings
from tidegate.topics import by_key

pytestmark = pytest.mark.unit


def test_the_input_topic_is_read_in_events_and_waits_for_the_batch_to_fill() -> None:
    settings = Settings(batch_size=300, batch_linger=0.04)
    events = by_key("events")
    assert (batch_messages(settings, events), read_linger(settings, events)) == (300, 0.04)


@pytest.mark.parametrize("key", ["ingested", "validated"])
def test_internal_topics_are_read_in_batch_messages_gathering_an_upstream_batch(key: str) -> None:
    settings = Settings(batch_size=2000, batch_linger=0.04)
    topic = by_key(key)
    # a moment, for the other partitions' messages of the same upstream batch
    assert (batch_messages(settings, topic), read_linger(settings, topic)) == (8, 0.004)
    assert read_linger(Settings(hop_linger=0.0), topic) == 0.0  # take what has arrived
    assert batch_messages(Settings(batch_size=10), topic) == 1  # never none


def test_a_negative_linger_is_refused() -> None:
    with pytest.raises(ValueError, match="batch_linger"):
        Settings(batch_linger=-0.1)
    with pytest.raises(ValueError, match="hop_linger"):
        Settings(hop_linger=-0.1)


def test_a_topic_of_whole_batches_is_read_without_waiting_for_more() -> None:
    # the feature stage writes each batch as one message: there is nothing to gather
    features = by_key("features")
    assert not features.by_account
    settings = Settings(batch_size=2000, hop_linger=0.004)
    assert (batch_messages(settings, features), read_linger(settings, features)) == (8, 0.0)

"""The handler helpers: forwarding a batch and building prediction messages."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from tests.unit.test_batches import batch_of
from tidegate.batches import unpack
from tidegate.codec import Codec
from tidegate.outputs import forward, prediction_messages

pytestmark = pytest.mark.unit


def test_forward_sends_one_message_per_partition_that_unpacks_to_the_batch() -> None:
    codec = Codec()
    batch = batch_of(10, partitions=[i % 3 for i in range(10)])
    out = forward(codec, batch, topic="p.validated", stage="validation")
    assert sorted(m.partition for m in out if m.partition is not None) == [0, 1, 2]
    assert {m.topic for m in out} == {"p.validated"}
    ids = [event_id for m in out for event_id in unpack(codec, m.value).event_ids]
    assert sorted(ids) == sorted(batch.event_ids)


def test_forward_of_a_whole_batch_sends_one_message_the_producer_places() -> None:
    codec = Codec()
    batch = batch_of(10, partitions=[i % 3 for i in range(10)])
    out = forward(codec, batch, topic="p.features", stage="feature", by_account=False)
    assert [m.partition for m in out] == [None]
    assert unpack(codec, out[0].value).event_ids == batch.event_ids  # in order


def test_forward_of_an_empty_batch_sends_nothing() -> None:
    assert forward(Codec(), batch_of(0), topic="t", stage="validation") == []
    assert forward(Codec(), batch_of(0), topic="t", stage="feature", by_account=False) == []


def test_prediction_messages_are_keyed_by_event_id_and_carry_the_trace() -> None:
    def encode(columns: Mapping[str, Sequence[Any]], rows: int) -> list[bytes]:
        return [json.dumps({name: values[row] for name, values in columns.items()}).encode()
                for row in range(rows)]

    records: dict[str, list[Any]] = {"event_id": ["e1", "e2"], "score": [0.1, 0.9]}
    out = prediction_messages(records, ["00-a-b-01", "00-c-d-01"], encode=encode,
                              topic="p.predictions")
    assert [m.key for m in out] == [b"e1", b"e2"]
    assert [m.headers for m in out] == [[("traceparent", b"00-a-b-01")],
                                        [("traceparent", b"00-c-d-01")]]
    assert json.loads(out[1].value) == {"event_id": "e2", "score": 0.9}
    with pytest.raises(ValueError):  # one trace per prediction, no silent truncation
        prediction_messages(records, ["00-a-b-01"], encode=encode, topic="p.predictions")

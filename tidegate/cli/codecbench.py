"""``tidegate bench --codec``: CPU per prediction framed, column by column and by fastavro; per
input record read, column by column and by fastavro (Avro), by msgspec and by the standard
library (JSON); and per event of an internal batch packed into its partitions' messages, into
one message, and read back.

No broker: inference's predictions for the example's events, framed the way the stage frames
them (``Codec.batch_encoder``: ``tidegate.flatavro`` for the whole batch) and one record at a
time by fastavro, on the same records; the bytes must be the same. CPU time, not wall time, so
a busy machine changes the figures less.

Example::

    report = measure_prediction_framing(records=2000, rounds=5)
    report["columns_us"], report["fastavro_us"]
    reading = measure_input_reading(records=2000, rounds=5)
    packing = measure_packing(sizes=(100, 2000), rounds=5)
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable
from typing import Any, cast

from tidegate.batches import Batch, pack, pack_whole, unpack
from tidegate.codec import Codec, decode_json, schema
from tidegate.deadletter import SourceRecord
from tidegate.example.generator import TransactionGenerator
from tidegate.flatread import FlatReader
from tidegate.pipeline.ingest import Dedupe, ingest_batch
from tidegate.topics import by_key

__all__ = ["measure_input_reading", "measure_packing", "measure_prediction_framing",
           "render_framing", "render_packing", "render_reading"]

PREDICTION = "tidegate.Prediction"
CARD = "tidegate.example.CardTransaction"


def _predictions(count: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    now = 1_796_394_896_000
    return [{"event_id": str(uuid.UUID(int=rng.getrandbits(128))), "trace_id":
             f"{rng.getrandbits(128):032x}", "account_id": f"acct-{rng.randrange(5000):05d}",
             "score": rng.random() ** 4, "label": rng.random() < 0.03, "threshold": 0.2394,
             "model_version": "fraud-primary:v1", "path": "primary",
             "latency_ms": 40 + 200 * rng.random(), "event_time": now - rng.randrange(10**5),
             "predicted_at": now, "feature_quality": "ok", "shed": False}
            for _ in range(count)]


def measure_prediction_framing(*, records: int = 2000, rounds: int = 5,
                               seed: int = 7) -> dict[str, Any]:
    """CPU µs per prediction of each way of framing a batch of ``records``; best of ``rounds``."""
    batch = _predictions(records, seed)
    frame = Codec().batch_encoder(PREDICTION, topic="predictions")
    avro = schema(PREDICTION)
    header = frame(batch[:1])[0][: -len(avro.write(batch[0]))]

    def one_by_one() -> list[bytes]:
        return [avro.write(record, header) for record in batch]

    def columns() -> list[bytes]:
        return frame(batch)

    timings = {name: _best_us(run, rounds) / records
               for name, run in (("columns_us", columns), ("fastavro_us", one_by_one))}
    return {"records": records, **timings, "identical": columns() == one_by_one()}


def _best_us(run: Callable[[], object], rounds: int) -> float:
    """The least CPU time of ``rounds`` calls of ``run``, in µs."""
    best = float("inf")
    for _ in range(rounds):
        began = time.process_time()
        run()
        best = min(best, time.process_time() - began)
    return 1e6 * best


def render_framing(report: dict[str, Any]) -> str:
    return (f"framing {report['records']} predictions, CPU per prediction: column by column "
            f"{report['columns_us']:.2f} µs, fastavro one by one {report['fastavro_us']:.2f} µs"
            f"; identical bytes: {'yes' if report['identical'] else 'NO'}")


def measure_input_reading(*, records: int = 2000, rounds: int = 5,
                          seed: int = 7) -> dict[str, Any]:
    """CPU µs per example input record of each way of reading it; best of ``rounds``."""
    events = [event for event, _ in TransactionGenerator(seed=seed).generate(records)]
    avro = schema(CARD)
    bodies = [avro.write(event) for event in events]
    texts = [json.dumps(event).encode() for event in events]
    reader = FlatReader.compile(avro.reading)
    assert reader is not None, "the example schema is flat"

    def by_column() -> list[dict[str, Any]]:
        columns = reader.read_all(bodies) or {}
        return [dict(zip(columns, row, strict=True)) for row in zip(*columns.values(),
                                                                    strict=True)]

    ways: dict[str, Callable[[], object]] = {
        "avro_columns_us": lambda: reader.read_all(bodies),
        "avro_fastavro_us": lambda: [avro.read(body) for body in bodies],
        "json_msgspec_us": lambda: [decode_json(text) for text in texts],
        "json_stdlib_us": lambda: [json.loads(text) for text in texts]}
    timings = {name: _best_us(run, rounds) / records for name, run in ways.items()}
    same = by_column() == [avro.read(body) for body in bodies]
    return {"records": records, **timings, "identical": same}


def render_reading(report: dict[str, Any]) -> str:
    return (f"reading {report['records']} example records, CPU per record: Avro column by "
            f"column {report['avro_columns_us']:.2f} µs, fastavro one by one "
            f"{report['avro_fastavro_us']:.2f} µs (identical values: "
            f"{'yes' if report['identical'] else 'NO'}); JSON by msgspec "
            f"{report['json_msgspec_us']:.2f} µs, by the standard library "
            f"{report['json_stdlib_us']:.2f} µs")


def _ingested(codec: Codec, events: int, seed: int) -> Batch:
    """Ingest's batch of ``events`` example events (JSON), routed to ``ingested``'s partitions."""
    generated = [event for event, _ in TransactionGenerator(seed=seed).generate(events)]
    now = max(cast(int, event["event_time"]) for event in generated) + 1000
    records = [SourceRecord(topic="events", partition=0, offset=offset, timestamp=now,
                            key=str(event["account_id"]).encode(),
                            value=json.dumps(event).encode(), headers=[])
               for offset, event in enumerate(generated)]
    batch, _ = ingest_batch(records, codec=codec, dedupe=Dedupe(max_ids=2 * events),
                            now_ms=now, partitions=by_key("ingested").partitions)
    return batch


def measure_packing(*, sizes: tuple[int, ...] = (100, 2000), rounds: int = 5,
                    seed: int = 7) -> list[dict[str, Any]]:
    """CPU µs per event of ingest's batch of each size packed one message per partition (as
    ingest and validation write), packed whole (as the feature stage writes) and the split
    messages read back and joined (as the next stage reads); best of ``rounds``."""
    codec = Codec()
    return [_packing(codec, _ingested(codec, size, seed), rounds) for size in sizes]


def _packing(codec: Codec, batch: Batch, rounds: int) -> dict[str, Any]:
    split = list(pack(codec, batch, stage="ingest"))

    def split_pack() -> list[tuple[int, bytes]]:
        return list(pack(codec, batch, stage="ingest"))

    def whole_pack() -> list[bytes]:
        return list(pack_whole(codec, batch, stage="ingest"))

    def read_back() -> Batch:
        return Batch.concat([unpack(codec, message, partition=partition)
                             for partition, message in split])

    again = read_back()
    return {"events": len(batch), "messages": len(split),
            "split_us": _best_us(split_pack, rounds) / len(batch),
            "whole_us": _best_us(whole_pack, rounds) / len(batch),
            "read_us": _best_us(read_back, rounds) / len(batch),
            "identical": len(again) == len(batch)
            and sorted(again.event_ids) == sorted(batch.event_ids)}


def render_packing(reports: list[dict[str, Any]]) -> str:
    return "; ".join(
        f"packing {r['events']:,} events, CPU per event: into {r['messages']} partition "
        f"messages {r['split_us']:.2f} µs, whole {r['whole_us']:.2f} µs, read back "
        f"{r['read_us']:.2f} µs (every event back: {'yes' if r['identical'] else 'NO'})"
        for r in reports)

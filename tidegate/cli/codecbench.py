"""``tidegate bench --codec``: CPU per prediction framed, column by column and by fastavro.

No broker: inference's predictions for the example's events, framed the way the stage frames
them (``Codec.batch_encoder``: ``tidegate.flatavro`` for the whole batch) and one record at a
time by fastavro, on the same records; the bytes must be the same. CPU time, not wall time, so
a busy machine changes the figures less.

Example::

    report = measure_prediction_framing(records=2000, rounds=5)
    report["columns_us"], report["fastavro_us"]
"""

from __future__ import annotations

import random
import time
import uuid
from typing import Any

from tidegate.codec import Codec, schema

__all__ = ["measure_prediction_framing", "render_framing"]

PREDICTION = "tidegate.Prediction"


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

    timings: dict[str, float] = {}
    for name, run in (("columns_us", columns), ("fastavro_us", one_by_one)):
        best = float("inf")
        for _ in range(rounds):
            began = time.process_time()
            run()
            best = min(best, time.process_time() - began)
        timings[name] = 1e6 * best / records
    return {"records": records, **timings, "identical": columns() == one_by_one()}


def render_framing(report: dict[str, Any]) -> str:
    return (f"framing {report['records']} predictions, CPU per prediction: column by column "
            f"{report['columns_us']:.2f} µs, fastavro one by one {report['fastavro_us']:.2f} µs"
            f"; identical bytes: {'yes' if report['identical'] else 'NO'}")

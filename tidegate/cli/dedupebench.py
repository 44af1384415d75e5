"""CPU per event id of ingest's de-duplication window, and the memory it gains after warm-up.

No broker: ``count`` random UUIDs (one in a hundred repeated from the batch before) go through a
window of ``max_ids`` in batches of ``batch``, each batch kept and committed as the stage does,
by one ``seen_many`` per batch or by ``seen`` on each id. CPU time, not wall time, so a busy
machine changes the figures less; making the ids is not counted. Memory is read once
``warm_up`` ids have gone through (the window full) and at the end: the process RSS, and, with
``heap=True``, the Python heap under tracemalloc (which slows the calls: CPU figures of such a
run are not comparable).

Example::

    report = measure_dedupe(count=2_000_000, max_ids=500_000, batch=2000)
    report["us_per_id"], report["rss_growth_mb"]
    one_by_one = measure_dedupe(many=False)   # ``seen`` per id; ``make=`` takes any such window
"""

from __future__ import annotations

import os
import random
import time
import tracemalloc
import uuid
from collections.abc import Callable
from typing import Any

from tidegate.cli.endurance import rss_mb
from tidegate.pipeline.dedupe import Dedupe

__all__ = ["measure_dedupe", "render_dedupe"]


def measure_dedupe(*, count: int = 2_000_000, max_ids: int = 500_000,
                   window_ms: int = 3_600_000, batch: int = 2000, warm_up: int | None = None,
                   many: bool = True, heap: bool = False, make: Callable[..., Any] = Dedupe,
                   seed: int = 7) -> dict[str, Any]:
    """CPU µs per id and the growth from ``warm_up`` ids (default: twice ``max_ids``) to the end.

    The clock advances as at 6,000 events/s.
    """
    warm_up = 2 * max_ids if warm_up is None else warm_up
    if not batch <= warm_up < count:
        raise ValueError("warm_up must leave ids to measure: batch <= warm_up < count")
    rng, previous, now_ms = random.Random(seed), [""] * batch, 1_800_000_000_000
    readings: list[tuple[float, int]] = []
    if heap:
        tracemalloc.start()
    window, cpu = make(max_ids=max_ids, window_ms=window_ms), 0.0
    try:
        for done in range(batch, count + 1, batch):
            ids = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(batch)]
            if done > batch:  # one in a hundred seen in the batch before
                ids[::100] = previous[::100]
            previous, now_ms = ids, now_ms + batch // 6
            began = time.process_time()
            if many:
                window.seen_many(ids, now_ms)
            else:
                for event_id in ids:
                    window.seen(event_id, now_ms)
            window.keep()
            window.commit()
            cpu += time.process_time() - began
            if done in (warm_up - warm_up % batch, count - count % batch):
                readings.append((rss_mb(os.getpid()),
                                 tracemalloc.get_traced_memory()[0] if heap else 0))
    finally:
        if heap:
            tracemalloc.stop()
    (rss_warm, heap_warm), (rss_end, heap_end) = readings[0], readings[-1]
    return {"count": count, "max_ids": max_ids, "window_ms": window_ms, "batch": batch,
            "call": "seen_many" if many else "seen", "us_per_id": 1e6 * cpu / count,
            "rss_warm_mb": rss_warm, "rss_growth_mb": rss_end - rss_warm,
            "heap_growth_bytes": heap_end - heap_warm if heap else None}


def render_dedupe(reports: list[dict[str, Any]]) -> str:
    """One line per report: the call, CPU per id, and the memory gained once the window was
    full."""
    return "\n".join(
        f"de-duplication window of {r['max_ids']:,} ids, {r['count']:,} ids in batches of "
        f"{r['batch']:,}, by {r['call']}: {r['us_per_id']:.2f} µs of CPU per id; RSS "
        f"{r['rss_warm_mb']:.0f} MB once full, {r['rss_growth_mb']:+.1f} MB after"
        for r in reports)

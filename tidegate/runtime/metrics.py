"""What a stage counts between two health events, and the health event itself.

Example::

    metrics = StageMetrics(stage="ingest", instance="host-1234")
    metrics.record_batch(records_in=512, records_out=509, latencies_ms=[3.1, ...])
    event = metrics.snapshot(lag=0)   # a tidegate.HealthEvent record; counters start over
"""

from __future__ import annotations

import bisect
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

import numpy as np

__all__ = ["BATCH_SECONDS_BUCKETS", "BATCH_SECONDS_PREFIX", "StageMetrics", "instance_name"]

_LATENCY_SAMPLES = 4096
_RANDOM = np.random.default_rng()
# Upper bounds of the batch-duration histogram (handler plus delivery, seconds); a health event
# carries the interval's count per bucket as ``batch_seconds.le.<bound>`` (``+Inf`` last) and the
# interval's total as ``batch_seconds.sum``: monitoring adds them up into a Prometheus histogram.
BATCH_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_SECONDS_PREFIX = "batch_seconds."
_BUCKET_NAMES = (*(f"{BATCH_SECONDS_PREFIX}le.{b:g}" for b in BATCH_SECONDS_BUCKETS),
                 f"{BATCH_SECONDS_PREFIX}le.+Inf")


def instance_name(stage: str) -> str:
    return f"{stage}@{socket.gethostname()}:{os.getpid()}"


class StageMetrics:
    """Counters and a bounded latency sample for one interval; ``snapshot`` resets them."""

    def __init__(self, *, stage: str, instance: str | None = None) -> None:
        self.stage = stage
        self.instance = instance or instance_name(stage)
        self.mode = "normal"
        self.breakers: dict[str, str] = {}
        self.paused = False
        self.pause_reason: str | None = None
        self.model_version: str | None = None
        self.extra: dict[str, str] = {}
        # called at each snapshot; their entries go into that event's extra only (drift counts)
        self.reporters: list[Callable[[], Mapping[str, str]]] = []
        self.totals: Counter[str] = Counter()
        self._reset(time.monotonic())

    def _reset(self, now: float) -> None:
        self._since = now
        self.records_in = 0
        self.records_out = 0
        self.dead_lettered = 0
        self.errors = 0
        self.by_code: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()
        self._timing = [0.0, 0.0]
        self._batch_buckets = [0] * len(_BUCKET_NAMES)
        self._latencies = np.empty(_LATENCY_SAMPLES)  # the sample: its first ``_filled`` entries
        self._filled = 0
        self._sampled = 0

    def record_batch(self, *, records_in: int, records_out: int,
                     latencies_ms: Iterable[float] = ()) -> None:
        self.records_in += records_in
        self.records_out += records_out
        self.totals["in"] += records_in
        self.totals["out"] += records_out
        # Reservoir sampling: a uniform sample of the whole interval, in bounded memory, a
        # batch at a time (one draw per value, as in the one-by-one algorithm).
        values = np.fromiter(latencies_ms, dtype=np.float64)
        room = min(_LATENCY_SAMPLES - self._filled, len(values))
        if room > 0:
            self._latencies[self._filled:self._filled + room] = values[:room]
            self._filled += room
            self._sampled += room
            values = values[room:]
        if len(values):
            seen = self._sampled + 1 + np.arange(len(values))
            slots = (_RANDOM.random(len(values)) * seen).astype(np.int64)
            kept = slots < _LATENCY_SAMPLES
            self._latencies[slots[kept]] = values[kept]  # a later value wins a shared slot
            self._sampled += len(values)

    def record_dead_letters(self, codes: Iterable[str]) -> None:
        for code in codes:
            self.dead_lettered += 1
            self.by_code[code] += 1
            self.totals["dead_lettered"] += 1

    def record_timing(self, messages: int, handle_s: float, deliver_s: float) -> None:
        """One micro-batch: how many messages, time in the handler, time awaiting acks."""
        self.counters["batches"] += 1
        self.counters["batch_messages"] += messages
        self._timing[0] += handle_s
        self._timing[1] += deliver_s
        self._batch_buckets[bisect.bisect_left(BATCH_SECONDS_BUCKETS, handle_s + deliver_s)] += 1

    def count(self, name: str, n: int = 1) -> None:
        """An interval counter of the stage's own, sent in the health event's ``extra``."""
        self.counters[name] += n

    def record_error(self) -> None:
        self.errors += 1
        self.totals["errors"] += 1

    def snapshot(self, *, lag: int) -> dict[str, object]:
        """The health event for the interval since the last snapshot; starts a new interval."""
        now = time.monotonic()
        p50, p95, p99 = (
            np.percentile(self._latencies[:self._filled], [50, 95, 99]).tolist()
            if self._filled
            else [0.0, 0.0, 0.0]
        )
        batches = self.counters["batches"]
        if batches:
            self.extra["handle_ms_per_batch"] = f"{1000 * self._timing[0] / batches:.1f}"
            self.extra["deliver_ms_per_batch"] = f"{1000 * self._timing[1] / batches:.1f}"
        histogram = {name: str(n) for name, n in zip(_BUCKET_NAMES, self._batch_buckets,
                                                       strict=True) if n}
        if histogram:
            histogram[f"{BATCH_SECONDS_PREFIX}sum"] = repr(sum(self._timing))
        event: dict[str, object] = {
            "stage": self.stage, "instance": self.instance, "time": int(time.time() * 1000),
            "interval_seconds": round(now - self._since, 3),
            "records_in": self.records_in, "records_out": self.records_out,
            "dead_lettered": self.dead_lettered, "dead_letters_by_code": dict(self.by_code),
            "errors": self.errors, "latency_p50_ms": float(p50), "latency_p95_ms": float(p95),
            "latency_p99_ms": float(p99), "lag": lag, "mode": self.mode,
            "breakers": dict(self.breakers), "paused": self.paused,
            "pause_reason": self.pause_reason, "model_version": self.model_version,
            "extra": {**self.extra, **{k: str(v) for k, v in self.counters.items()},
                      **{k: v for report in self.reporters for k, v in report().items()},
                      **histogram},
        }
        self._reset(now)
        return event

"""Load helpers for the chaos tier: pace the input, give the stages a CPU quota, watch their
memory and lag, and bound their memory from the configured limits.

Example::

    with Sampler(settings, supervisor) as sampler, cpu_quota(supervisor, share=0.25):
        sent, seconds = produce_paced(settings, messages, rate=5000)
    print(sampler.peak_rss_mb, sampler.peak_lag)
"""

from __future__ import annotations

import inspect
import os
import re
import signal
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from tests.integration.pipeline import produce
from tidegate.batches import MAX_BATCH_BYTES, pack, unpack
from tidegate.cli.supervisor import Supervisor
from tidegate.codec import Codec
from tidegate.deadletter import SourceRecord
from tidegate.example.stream import ExampleMessage
from tidegate.kafka.reader import QUEUED_MIN_MESSAGES, BatchReader, batch_messages
from tidegate.kafka.scan import read_topic
from tidegate.monitoring.accuracy import LabelJoin
from tidegate.monitoring.analyst import AnalystConfig
from tidegate.pipeline.feature import compute_features
from tidegate.pipeline.ingest import Dedupe, ingest_batch
from tidegate.runtime.app import create_app, input_group
from tidegate.runtime.backpressure import LagProbe
from tidegate.settings import ClientConfig, Settings
from tidegate.topics import STAGES, by_key

__all__ = [
    "DATA_STAGES",
    "Bound",
    "CpuQuota",
    "Footprints",
    "Sampler",
    "cpu_quota",
    "input_groups",
    "measure_footprints",
    "memory_bounds",
    "prediction_times",
    "produce_paced",
    "rss_mb",
    "steady_rate",
]

DATA_STAGES = ("ingest", "validation", "feature", "inference")
MIB = 1024 * 1024

# a librdkafka default the stages leave alone (CONFIGURATION.md of librdkafka 2.x)
PARTITION_FETCH_BYTES = 1 * MIB  # max.partition.fetch.bytes
# What librdkafka keeps per queued message besides its key and value: a standalone consumer
# queueing 100,000 records of 154 bytes grew by 69 MiB of RSS.
QUEUED_MESSAGE_OVERHEAD = 570
STATE_ACCOUNTS_FILL = 60  # events per account when measuring a full per-account state
# What every stage keeps whatever the load: health metrics (a reservoir of 4,096 latencies),
# monitoring's chart history (720 points), logging, and Python's allocator arenas.
RUNTIME_SLACK = 16 * MIB

T = TypeVar("T")


def rss_mb(pid: int, field: str = "VmRSS") -> float | None:
    """A process's resident set (``VmRSS``) or its peak (``VmHWM``) in MiB; None once gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
    return int(found.group(1)) / 1024 if found else None


def input_groups(settings: Settings) -> dict[str, tuple[str, str]]:
    """(consumer group, input topic) of every data stage, as the stages name them."""
    return {stage: (input_group(stage, settings),
                    STAGES[stage].source.name(settings.topic_prefix))
            for stage in DATA_STAGES}


class Sampler(threading.Thread):
    """Samples every stage process's RSS (4 Hz) and every data stage's input lag (1 Hz)."""

    def __init__(self, settings: Settings, supervisor: Supervisor, *,
                 interval: float = 0.25) -> None:
        super().__init__(daemon=True, name="sampler")
        self.supervisor = supervisor
        self.interval = interval
        config: ClientConfig = {"bootstrap.servers": str(settings.kafka_bootstrap_servers)}
        self._probes = {stage: LagProbe(config, group=group, topic=topic)
                        for stage, (group, topic) in input_groups(settings).items()}
        self._stopping = threading.Event()
        self.pids: dict[str, set[int]] = {}
        self.rss_mb: dict[str, float] = {}
        self.peak_rss_mb: dict[str, float] = {}
        self.lag: dict[str, int] = {}
        self.lag_at = 0.0  # when every stage's lag was last read
        self.peak_lag: dict[str, int] = {}

    def run(self) -> None:
        next_lag = 0.0
        while not self._stopping.is_set():
            self._sample_rss()
            if time.monotonic() >= next_lag:
                next_lag = time.monotonic() + 1.0
                self._sample_lag()
            self._stopping.wait(self.interval)

    def _sample_rss(self) -> None:
        for stage, pid in self.supervisor.pids().items():
            if pid is None:
                continue
            self.pids.setdefault(stage, set()).add(pid)
            now, peak = rss_mb(pid), rss_mb(pid, "VmHWM")  # VmHWM: the kernel's own peak
            if now is not None:
                self.rss_mb[stage] = now
            if peak is not None:
                self.peak_rss_mb[stage] = max(self.peak_rss_mb.get(stage, 0.0), peak)

    def _sample_lag(self) -> None:
        began = time.monotonic()
        lags = {stage: probe.lag() for stage, probe in self._probes.items()}
        for stage, lag in lags.items():
            if lag is not None:
                self.lag[stage] = lag
                self.peak_lag[stage] = max(self.peak_lag.get(stage, 0), lag)
        if all(lag is not None for lag in lags.values()):
            self.lag_at = began

    def wait_for_zero_lag(self, since: float, timeout: float,
                          poll: Iterable[Supervisor] = ()) -> float | None:
        """When the lag, read after ``since``, was first 0 on every stage; None on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for supervisor in poll:
                supervisor.poll()
            if self.lag_at > since and not any(self.lag.get(s, 1) for s in DATA_STAGES):
                return self.lag_at
            time.sleep(0.2)
        return None

    def stop(self) -> None:
        self._stopping.set()
        self.join(10)
        for probe in self._probes.values():
            probe.close()
        self._probes.clear()

    def __enter__(self) -> Sampler:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()


class CpuQuota(threading.Thread):
    """Lets the stage processes run ``share`` of every ``period`` and stops them for the rest
    (SIGSTOP, SIGCONT), all at once: a CPU quota like a container's, for the whole pipeline."""

    def __init__(self, supervisor: Supervisor, *, share: float, period: float = 0.4) -> None:
        super().__init__(daemon=True, name="cpu-quota")
        self.supervisor, self.share, self.period = supervisor, share, period
        self._stopping = threading.Event()

    def _signal(self, number: signal.Signals) -> None:
        for pid in self.supervisor.pids().values():
            if pid is not None:
                with suppress(ProcessLookupError):
                    os.kill(pid, number)

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                self._signal(signal.SIGCONT)
                if self._stopping.wait(self.share * self.period):
                    break
                self._signal(signal.SIGSTOP)
                self._stopping.wait((1 - self.share) * self.period)
        finally:
            self._signal(signal.SIGCONT)

    def stop(self) -> None:
        self._stopping.set()
        self.join(10)
        self._signal(signal.SIGCONT)


@contextmanager
def cpu_quota(supervisor: Supervisor, share: float) -> Iterator[CpuQuota]:
    """Every stage process runs only ``share`` of the time while inside."""
    quota = CpuQuota(supervisor, share=share)
    quota.start()
    try:
        yield quota
    finally:
        quota.stop()


def prediction_times(settings: Settings, *, since: float) -> list[float]:
    """When each prediction made after ``since`` (epoch seconds) was made, in order."""
    config: ClientConfig = {"bootstrap.servers": str(settings.kafka_bootstrap_servers)}
    codec = Codec()
    times = [codec.decode(message.value() or b"")["predicted_at"] / 1000
             for message in read_topic(config, settings.topic_prefix + "predictions")]
    return sorted(at for at in times if at >= since)


def steady_rate(times: list[float], *, share: float = 0.6) -> float:
    """Events per second over the middle ``share`` of ``times``, without ramp-up and tail."""
    first = int(len(times) * (1 - share) / 2)
    last = len(times) - 1 - first
    return (last - first) / (times[last] - times[first])


def produce_paced(settings: Settings, messages: Iterable[ExampleMessage], *,
                  rate: float) -> tuple[list[ExampleMessage], float]:
    """Send ``messages`` at ``rate`` per second (or as fast as they come); return them and how
    long sending and the broker's acknowledgement of all took."""
    began = time.monotonic()
    sent = produce(settings, messages, rate=rate)
    return sent, time.monotonic() - began


@dataclass(frozen=True)
class Footprints:
    """Python heap bytes of what a stage holds, measured with the stages' own code."""

    ingest_batch_bytes: float  # one ingest batch: records, decoded fields, columns, packed
    expansion: float  # heap bytes per byte of internal batch: unpacked columns + field columns
    dedupe_bytes: float  # ingest's de-duplication window, allocated whole when it is made
    account_state_bytes: float  # one account's full rolling state in the feature stage
    prediction_bytes: float  # one unlabelled prediction waiting in monitoring's label join


def _heap(action: Callable[[], T]) -> tuple[T, int]:
    """What ``action()`` returns, and the heap it still holds afterwards."""
    before = tracemalloc.get_traced_memory()[0]
    result = action()
    return result, tracemalloc.get_traced_memory()[0] - before


def measure_footprints(sample: list[ExampleMessage], batch_size: int) -> Footprints:
    """Run ingest, pack, unpack, the feature state and the label join under tracemalloc."""
    codec = Codec()
    now_ms = int(time.time() * 1000)
    count = 20_000
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        records = [SourceRecord(topic="events", partition=0, offset=i, timestamp=now_ms,
                                key=m.key, value=m.value, headers=[])
                   for i, m in enumerate(sample[:batch_size])]
        batch, _ = ingest_batch(records, codec=codec, dedupe=Dedupe(), now_ms=now_ms)
        packed = list(pack(codec, batch, stage="ingest"))
        ingest_peak = tracemalloc.get_traced_memory()[1] - base
        raw = sum(len(value) for _, value in packed)
        # as the stages read a batch: unpacked, the fields by column (no record per event)
        decoded, heap = _heap(lambda: [(part, part.by_field()) for part in
                                       (unpack(codec, value) for _, value in packed)])
        del decoded
        first: dict[object, dict[str, object]] = {}
        for record in batch.records():
            first.setdefault(record["account_id"], record)
        chosen = list(first.values())[:50]
        # every account's ring filled: more events inside the window than the ring keeps
        filled = [{**record, "event_time": now_ms - 60_000 + index}
                  for index in range(STATE_ACCOUNTS_FILL) for record in chosen]
        states, state_heap = _heap(lambda: compute_features(filled, {}, now_ms=now_ms)[1])
        join, version = LabelJoin(), 3

        def predict() -> None:  # as decoded records: every string a fresh object
            for index in range(count):
                join.on_prediction({"event_id": str(uuid.uuid4()), "shed": False,
                                    "path": "primary", "model_version": f"primary:{version}",
                                    "score": index / count, "label": False})

        _, join_heap = _heap(predict)
    finally:
        tracemalloc.stop()
    return Footprints(
        ingest_batch_bytes=float(ingest_peak + raw),  # + librdkafka's copy of the output
        expansion=heap / raw, dedupe_bytes=float(Dedupe().nbytes),
        account_state_bytes=state_heap / max(1, len(states)),
        prediction_bytes=join_heap / count,
    )


@dataclass
class Bound:
    """A stage's RSS bound: its idle RSS plus what each bounded buffer can add, in MiB."""

    stage: str
    idle_mb: float
    parts: dict[str, float] = field(default_factory=dict)

    @property
    def total_mb(self) -> float:
        return self.idle_mb + sum(self.parts.values())

    def render(self) -> str:
        terms = " + ".join(f"{name} {mb:.0f}" for name, mb in self.parts.items())
        return f"{self.stage:10} idle {self.idle_mb:.0f} + {terms} = {self.total_mb:.0f} MiB"


def memory_bounds(settings: Settings, idle_mb: dict[str, float], footprints: Footprints, *,
                  events: int, accounts: int) -> tuple[dict[str, Bound], list[str]]:
    """Each stage's bound from the configured limits, and the lines that explain it.

    ``events`` is how many events passed through the pipeline in this run, ``accounts`` how
    many distinct accounts the feature stage may hold state for.
    """
    fp, kib, batch = footprints, 1024, settings.batch_size
    prefetch = inspect.signature(BatchReader).parameters["prefetch_kbytes"].default * kib
    max_ids = inspect.signature(Dedupe).parameters["max_ids"].default
    max_predictions = AnalystConfig().max_predictions
    conf = create_app("monitoring", settings).conf
    buffered, faust_fetch = conf.stream_buffer_maxsize, conf.consumer_max_fetch_size
    # A reader's queue: queued.max.messages.kbytes of payload, overshot by a fetch response per
    # partition being parsed, one arriving and one asked for; on a public topic (one small
    # record per message) also librdkafka's bookkeeping for up to queued.min.messages records.
    overshoot = 3 * 6 * PARTITION_FETCH_BYTES
    internal_queue = prefetch + overshoot
    public_queue = prefetch + QUEUED_MIN_MESSAGES * QUEUED_MESSAGE_OVERHEAD + overshoot
    # A batch takes at most ``batch`` messages of at most MAX_BATCH_BYTES, and only what the queue
    # holds; it lives as message values, decoded envelopes and fields, and outputs of up to
    # 1.5 times its bytes (feature vectors) held by Python and by the producer until acked.
    messages = batch_messages(settings, by_key("validated"))
    in_batch = min(messages * MAX_BATCH_BYTES, internal_queue)
    working = in_batch * (1 + fp.expansion + 2 * 1.5)
    faust = buffered * kib + by_key("control").partitions * faust_fetch  # records < 1 KiB
    health = buffered * 4 * kib + by_key("health").partitions * faust_fetch  # < 4 KiB
    parts: dict[str, dict[str, float]] = {
        "ingest": {"prefetch": public_queue, "batch": fp.ingest_batch_bytes,
                   "dedupe": fp.dedupe_bytes, "faust": faust},
        "validation": {"prefetch": internal_queue, "batch": working, "faust": faust},
        "feature": {"prefetch": internal_queue, "batch": working, "faust": faust,
                    "state": min(accounts, settings.feature_state_max_accounts)
                    * fp.account_state_bytes},
        "inference": {"prefetch": internal_queue, "batch": working, "faust": faust},
        "monitoring": {"prefetch": public_queue, "join": min(events, max_predictions)
                       * fp.prediction_bytes, "faust": health},
    }
    bounds = {stage: Bound(stage, idle, {**{k: v / MIB for k, v in parts[stage].items()},
                                         "slack": RUNTIME_SLACK / MIB})
              for stage, idle in idle_mb.items()}
    lines = [
        f"prefetch, internal topic: queued.max.messages.kbytes {prefetch // kib} KiB + 3 "
        f"fetches of max.partition.fetch.bytes {PARTITION_FETCH_BYTES // kib} KiB x 6 "
        f"partitions = {internal_queue / MIB:.0f} MiB",
        f"prefetch, public topic (events; predictions for monitoring): + queued.min.messages "
        f"{QUEUED_MIN_MESSAGES:,} x {QUEUED_MESSAGE_OVERHEAD} B librdkafka bookkeeping = "
        f"{public_queue / MIB:.0f} MiB",
        f"batch, internal topic: min({messages} messages x {MAX_BATCH_BYTES // kib} KiB, the "
        f"queue) = "
        f"{in_batch / MIB:.0f} MiB x (1 value + {fp.expansion:.1f} decoded + 2 x 1.5 outputs)"
        f" = {working / MIB:.0f} MiB; ingest: {batch} events = "
        f"{fp.ingest_batch_bytes / MIB:.1f} MiB",
        f"dedupe: {max_ids:,} ids in fixed arrays, {fp.dedupe_bytes / MIB:.0f} MiB; "
        f"state: {accounts:,} accounts x {fp.account_state_bytes:,.0f} B; join: "
        f"min({events:,}, {max_predictions:,}) unlabelled predictions x "
        f"{fp.prediction_bytes:.0f} B",
        f"faust: stream_buffer_maxsize {buffered} records + consumer_max_fetch_size "
        f"{faust_fetch // kib} KiB per partition of the control topic (health for monitoring)",
        f"slack: {RUNTIME_SLACK // MIB} MiB per stage for health metrics, monitoring's history "
        "and Python's allocator arenas",
    ]
    return bounds, lines

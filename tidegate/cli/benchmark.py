"""The benchmark: the broker's ceiling, a raw Python passthrough, and the five-stage pipeline.

All three run in one go on the same broker with the same record size, so the ratios mean
something: pipeline/raw says what tidegate costs over the cheapest Python hop, pipeline/ceiling
what it costs over Kafka itself.

Example::

    report = run_bench(settings, events=100_000, half_rate_seconds=20)
    print(render(report))
"""

from __future__ import annotations

import re
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from tidegate.cli.hops import hop_ages, hop_line, percentiles
from tidegate.cli.supervisor import Supervisor
from tidegate.codec import Codec
from tidegate.example.stream import example_messages
from tidegate.kafka.admin import ensure_topics
from tidegate.kafka.broker import start_broker, stop_broker
from tidegate.kafka.clients import CONSUMER_DEFAULTS, HOP_FETCH
from tidegate.kafka.jars import run_tool
from tidegate.kafka.jmx import BrokerMeters, read_meters
from tidegate.settings import Settings
from tidegate.topics import CATALOG, STAGE_ORDER

__all__ = ["fill_topic", "render", "run_bench", "scratch_cluster", "stage_commands"]

STAGES = STAGE_ORDER
SETTLE_SECONDS = 15.0
_TICKS = 100.0  # clock ticks per second in /proc stat files (Linux's USER_HZ)
# Warm-up events: the stages join their groups and load their models, and the broker's JIT
# compiles the paths the pipeline takes (the ceiling's produce and fetch paths are not all of
# them: compressed and idempotent batches, read-committed fetches, a compacted topic).
WARM_EVENTS = 2000
LOW_RATE = 2000.0  # events/s of the second latency run
IDLE_SECONDS = 10.0  # the idle reading: what the processes spend with no events at all
LOAD = "load"  # the bench process itself: the load generator and the predictions reader
# The targets at the maximum rate (CPU per event) and in the latency runs.
TARGETS = {"broker_us": 25.0, "stages_us": 60.0, "half_p99_ms": 250.0, "low_p99_ms": 100.0,
           "events_per_s": 20_000.0, "busy_share": 0.6, "rss_mb": 300.0}


@contextmanager
def scratch_cluster(settings: Settings, jmx: str | None
                    ) -> Iterator[tuple[str, int | None, str | None]]:
    """The configured cluster, or a fresh embedded broker that lives as long as the bench.

    Yields the bootstrap servers, the embedded broker's pid (None for a configured cluster) and
    the broker's JMX address (``jmx`` for a configured cluster, None when not given).
    """
    if settings.kafka_bootstrap_servers:
        yield settings.kafka_bootstrap_servers, None, jmx
        return
    with tempfile.TemporaryDirectory(prefix="tidegate-bench-") as tmp:
        scratch = settings.model_copy(update={"data_dir": Path(tmp)})
        state = start_broker(scratch, die_with_parent=True, jmx=True)
        try:
            yield state.bootstrap, state.pid, f"127.0.0.1:{state.jmx_port}"
        finally:
            stop_broker(scratch)


def _create(bootstrap: str, *names: str, partitions: int = 6) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(n, num_partitions=partitions,
                                                replication_factor=1) for n in names]).values():
        future.result()


def broker_ceiling(settings: Settings, bootstrap: str, *, records: int,
                   size: int) -> dict[str, float]:
    """Kafka's own producer and consumer performance tools on a 6-partition topic."""
    topic = f"bench.ceiling.{int(time.time())}"
    _create(bootstrap, topic)
    out = run_tool(settings.cache_dir, settings.kafka_version, "ProducerPerformance", [
        "--topic", topic, "--num-records", str(records), "--record-size", str(size),
        "--throughput", "-1", "--producer-props", f"bootstrap.servers={bootstrap}", "acks=all",
        "linger.ms=5"])
    line = [ln for ln in out.splitlines() if "records sent" in ln][-1]
    produced = float(re.search(r"([\d.]+) records/sec", line).group(1))  # type: ignore[union-attr]
    out = run_tool(settings.cache_dir, settings.kafka_version, "ConsumerPerformance", [
        "--bootstrap-server", bootstrap, "--topic", topic, "--messages", str(records)])
    row = out.strip().splitlines()[-1].split(",")
    consumed = float(row[5])  # header: start, end, MB, MB/sec, messages, messages/sec, ...
    return {"produce_per_s": produced, "consume_per_s": consumed}


def raw_passthrough(bootstrap: str, values: list[bytes]) -> dict[str, float]:
    """The cheapest Python hop: consume a batch with confluent-kafka, produce it, repeat."""
    stamp = int(time.time())
    source, sink = f"bench.raw.in.{stamp}", f"bench.raw.out.{stamp}"
    _create(bootstrap, source, sink)
    fill_topic(bootstrap, source, values)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-raw-{stamp}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all"})
    consumer.subscribe([source])
    moved, began = 0, 0.0
    while moved < len(values):
        batch = consumer.consume(num_messages=1000, timeout=1.0)
        if batch and not began:
            began = time.monotonic()
        for message in batch:
            if message.error() is None:
                _produce(producer, sink, message.value() or b"")
                moved += 1
        producer.flush()
        consumer.commit(asynchronous=False)
    took = time.monotonic() - began
    consumer.close()
    return {"events_per_s": len(values) / took}


def _produce(producer: Producer, topic: str, value: bytes, key: bytes | None = None) -> None:
    while True:
        try:
            producer.produce(topic, value=value, key=key)
            return
        except BufferError:
            producer.poll(0.05)


def fill_topic(bootstrap: str, topic: str, values: list[bytes],
               keys: list[bytes | None] | None = None, rate: float = 0.0,
               lags: list[float] | None = None, start: float | None = None) -> float:
    """Produce ``values`` (at ``rate`` per second when given, event ``i`` due at ``start`` +
    i / rate, epoch seconds, default now); ``lags`` collects how late each send was against
    its schedule, in ms: what the load generator adds to the latency.

    The generator lingers 20 ms, as a producer of keyed events should: librdkafka sends one
    produce request per partition batch, so at 5 ms a keyed stream over six partitions cost the
    broker up to 1,200 requests a second, its largest cost at moderate rates. The linger counts
    in the latency figures (event time is stamped before the send).
    """
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "all"})
    began, due = time.monotonic(), time.time() if start is None else start
    for index, value in enumerate(values):
        if rate:
            ahead = due + index / rate - time.time()
            # sleep only when 2 ms ahead: a sleep per event cost the generator 40 µs per event
            # at 7,000/s, on the cores the pipeline runs on; an event leaves at most 2 ms early
            if ahead > 0.002:
                time.sleep(ahead)
            if lags is not None:
                lags.append(max(0.0, -ahead) * 1000)
        _produce(producer, topic, value, keys[index] if keys else None)
        producer.poll(0)
    producer.flush()
    return time.monotonic() - began


class _PredictionWatcher(threading.Thread):
    """Follows the predictions topic and keeps each prediction's arrival and event time."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True, name="predictions")
        # configured as the stages' input readers are
        self.consumer = Consumer({**CONSUMER_DEFAULTS, **HOP_FETCH, "bootstrap.servers": bootstrap,
                                  "group.id": f"bench-{topic}", "auto.offset.reset": "latest"})
        self.consumer.subscribe([topic])
        self.codec = Codec()
        self.seen: list[tuple[float, int]] = []  # (arrival s, event time ms)
        self.written: list[float] = []  # the prediction's Kafka timestamp, ms
        self.stopping = threading.Event()
        self.assigned = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            # Wait for one prediction, then take what has arrived with it: consume(n, timeout)
            # alone would hold every batch until n arrive or the timeout passes, and stamp
            # predictions up to that long after they arrived.
            first = self.consumer.poll(0.2)
            batch = [first, *self.consumer.consume(999, 0)] if first is not None else []
            arrived = time.time()
            for message in batch:
                if message.error() is None:
                    record = self.codec.decode(message.value() or b"")
                    self.seen.append((arrived, record["event_time"]))
                    self.written.append(float(message.timestamp()[1]))
            if self.consumer.assignment():
                self.assigned.set()
        self.consumer.close()

    def wait_for(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while len(self.seen) < count and time.monotonic() < deadline:
            time.sleep(0.2)
        return len(self.seen) >= count


def _cpu_seconds(stat: Path) -> float:
    """User plus system CPU seconds from a /proc ``stat`` file (a process's or a thread's)."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _usage(pids: dict[str, int | None]) -> dict[str, dict[str, float]]:
    """CPU seconds and peak RSS (MB) of each stage process."""
    usage = {}
    for stage, pid in pids.items():
        if pid is None:
            continue
        status = Path(f"/proc/{pid}/status").read_text()
        peak = re.search(r"VmHWM:\s+(\d+) kB", status)
        usage[stage] = {"cpu_s": _cpu_seconds(Path(f"/proc/{pid}/stat")),
                        "peak_rss_mb": int(peak.group(1)) / 1024 if peak else 0.0}
    return usage


def _threads(pid: int) -> dict[str, float]:
    """CPU seconds of a process by thread name, numbered threads folded into one name (the
    broker's ``data-plane-kafka-request-handler-3`` counts as ``...-request-handler-#``)."""
    threads: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = re.sub(r"\d+", "#", (task / "comm").read_text().strip())
            cpu = _cpu_seconds(task / "stat")
        except OSError:  # the thread ended meanwhile
            continue
        threads[name] = threads.get(name, 0.0) + cpu
    return threads


def stage_commands(workers: int) -> dict[str, list[str]]:
    """One process per stage, or ``workers`` per data stage (monitoring serves HTTP: one)."""
    commands = {}
    for stage in STAGES:
        count = 1 if stage == "monitoring" else workers
        for index in range(count):
            name = stage if count == 1 else f"{stage}.{index + 1}"
            commands[name] = [sys.executable, "-m", "tidegate.cli.main", "stage", "run", stage,
                              "--worker", str(index)]
    return commands


def _pipeline(settings: Settings, bootstrap: str, *, events: int, half_rate_seconds: float,
              workers: int = 1, broker_pid: int | None = None,
              latency_rate: float | None = None, low_rate: float = LOW_RATE,
              jmx: str | None = None) -> dict[str, Any]:
    prefix = f"bench{int(time.time())}."
    env_settings = settings.model_copy(update={"kafka_bootstrap_servers": bootstrap,
                                               "topic_prefix": prefix})
    ensure_topics({"bootstrap.servers": bootstrap}, CATALOG, prefix=prefix, replication=1)
    from tidegate.models.training import ensure_example_models

    ensure_example_models(env_settings.registry_dir)
    import os

    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "TIDEGATE_TOPIC_PREFIX": prefix,
           "TIDEGATE_DATA_DIR": str(settings.data_dir.resolve()), "TIDEGATE_LOG_LEVEL": "WARNING"}
    supervisor = Supervisor(stage_commands(workers),
                            log_dir=settings.data_dir.resolve() / "bench-logs", env=env)
    watcher = _PredictionWatcher(bootstrap, prefix + "predictions")
    watcher.start()
    supervisor.start()

    def pids() -> dict[str, int | None]:
        return {**supervisor.pids(), **({"broker": broker_pid} if broker_pid else {}),
                LOAD: os.getpid()}

    def reading() -> _Reading:
        return _Reading(usage=_usage(pids()),
                        threads=_threads(broker_pid) if broker_pid else {},
                        meters=read_meters(settings, jmx) if jmx else None)

    def latency_run(rate: float, seconds: float, seed: int) -> dict[str, Any]:
        count = int(rate * seconds)
        steady = list(example_messages(count, seed=seed, events_per_second=rate))
        # Event times start now and advance at the send rate: latency is event time to
        # prediction.
        watcher.seen.clear()
        watcher.written.clear()
        # Restamping takes a moment (16 µs an event; 160,000 events at 8,000/s overran a fixed
        # second, and every event then counted the overrun as latency), and so does reading the
        # broker's meters: start after both, and count neither as the run's CPU. The schedule
        # is the event times, so a late start would show as the generator's lateness.
        timing = time.perf_counter()
        _restamp(steady[:500], 0, rate)
        lead = 3.0 + 2.0 * (time.perf_counter() - timing) / min(500, count) * count
        start_ms = int((time.time() + lead) * 1000)
        shifted = _restamp(steady, start_ms, rate)
        before = reading()
        time.sleep(max(0.0, start_ms / 1000 - time.time()))
        lags: list[float] = []
        began = time.monotonic()
        fill_topic(bootstrap, prefix + "events", shifted, [m.key for m in steady], rate=rate,
              lags=lags, start=start_ms / 1000)
        watcher.wait_for(count, timeout=120)
        took = time.monotonic() - began
        latencies = np.array([arrival * 1000 - event_ms for arrival, event_ms in watcher.seen])
        written = np.array(watcher.written[:len(watcher.seen)]) - [ms for _, ms in watcher.seen]
        spent = reading().since(before, prefix)
        hops = hop_ages({"bootstrap.servers": bootstrap}, prefix, start_ms=start_ms,
                        end_ms=start_ms + int(count / rate * 1000) + 1)
        hops["inference"] = percentiles(written)
        hops["prediction read"] = percentiles(latencies)
        return {"hops": hops, "events_per_s": rate, "events": count, "seen": len(latencies),
                "seconds": took,
                "p50_ms": float(np.percentile(latencies, 50)),
                "p95_ms": float(np.percentile(latencies, 95)),
                "p99_ms": float(np.percentile(latencies, 99)),
                "written_p50_ms": float(np.percentile(written, 50)),
                "written_p99_ms": float(np.percentile(written, 99)),
                "send_lag_p50_ms": float(np.percentile(lags, 50)),
                "send_lag_p99_ms": float(np.percentile(lags, 99)),
                "busy_share": sum(spent["cpu_s"].values()) / took / _cpus(), **spent}

    try:
        # Warm-up: the stages join their groups and load the models.
        warm = list(example_messages(WARM_EVENTS, seed=1, events_per_second=1e6))
        fill_topic(bootstrap, prefix + "events", [m.value for m in warm], [m.key for m in warm])
        if not watcher.wait_for(len(warm), timeout=120):
            raise RuntimeError(f"pipeline did not start: {len(watcher.seen)} of {len(warm)}")
        load = list(example_messages(events, seed=2, events_per_second=1e6))
        values, keys = [m.value for m in load], [m.key for m in load]
        time.sleep(SETTLE_SECONDS / 3)  # the warm-up's tail: health, commits, cleaning
        # What no event costs: timers, health events, lag probes, followers' polls. A cost
        # that grows with batches, not with time, shows as the low-rate run's excess over it.
        idle = _usage(pids())
        time.sleep(IDLE_SECONDS)
        idle_share = {name: (cpu["cpu_s"] - idle[name]["cpu_s"]) / IDLE_SECONDS
                      for name, cpu in _usage(pids()).items() if name in idle}
        before = reading()
        watcher.seen.clear()
        began = time.time()
        fill_topic(bootstrap, prefix + "events", values, keys)
        complete = watcher.wait_for(len(load), timeout=600)
        finished = max(t for t, _ in watcher.seen) if watcher.seen else time.time()
        max_rate = len(watcher.seen) / (finished - began)
        top = {"events": len(load), "complete": complete, "events_per_s": max_rate,
               "seconds": finished - began, **reading().since(before, prefix)}
        # The burst leaves work behind (monitoring's backlog of predictions, the broker's log
        # cleaner on the compacted state topic): let it finish, so the latency runs measure
        # a steady state rather than the burst's tail.
        time.sleep(SETTLE_SECONDS)
        half = latency_run(latency_rate or max(100.0, max_rate / 2), half_rate_seconds, seed=3)
        half["given"] = latency_rate is not None
        time.sleep(SETTLE_SECONDS / 3)
        low = latency_run(low_rate, half_rate_seconds, seed=4)
        usage = _usage(pids())
    finally:
        watcher.stopping.set()
        supervisor.stop()
    return {
        "workers_per_stage": workers,
        "max_rate": top,
        "half_rate": half,
        "low_rate": low,
        "idle_core_share": _per_stage(idle_share, sum),
        "peak_rss_mb": _per_stage({s: usage[s]["peak_rss_mb"] for s in usage
                                   if s not in ("broker", LOAD)}, max),
    }


@dataclass(frozen=True)
class _Reading:
    """What every process had spent at one moment, and the broker's meters then."""

    usage: dict[str, dict[str, float]]
    threads: dict[str, float]
    meters: BrokerMeters | None

    def since(self, before: _Reading, prefix: str) -> dict[str, Any]:
        """CPU per process, broker CPU per thread, broker requests and topic traffic between
        ``before`` and this reading (topic names without the bench's prefix)."""
        threads = {name: cpu - before.threads.get(name, 0.0)
                   for name, cpu in self.threads.items()}
        figures: dict[str, Any] = {
            "cpu_s": _per_stage({s: self.usage[s]["cpu_s"] - before.usage[s]["cpu_s"]
                                 for s in self.usage if s in before.usage}, sum),
            "broker_threads": {name: cpu for name, cpu in threads.items() if cpu >= 0.01},
            "broker": None,
        }
        if self.meters is not None and before.meters is not None:
            spent = self.meters - before.meters

            def short(by_topic: dict[str, float]) -> dict[str, float]:
                return {topic.removeprefix(prefix): value for topic, value in by_topic.items()}

            figures["broker"] = {"requests": spent.requests, "bytes_in": short(spent.bytes_in),
                                 "bytes_out": short(spent.bytes_out),
                                 "messages_in": short(spent.messages_in)}
        return figures


def _per_stage(values: dict[str, float], combine: Any) -> dict[str, float]:
    """Values per process folded into one per stage (``ingest.1``, ``ingest.2`` -> ``ingest``)."""
    grouped: dict[str, list[float]] = {}
    for name, value in values.items():
        grouped.setdefault(name.split(".")[0], []).append(value)
    return {stage: float(combine(items)) for stage, items in grouped.items()}


def _restamp(messages: list[Any], start_ms: int, rate: float) -> list[bytes]:
    """Avro values whose event times are the times they are due to be sent at ``rate``."""
    codec = Codec()
    encode = codec.encoder("tidegate.example.CardTransaction")
    decoded = [codec.decode_any(m.value)[1] for m in messages]
    for index, record in enumerate(decoded):
        record["event_time"] = start_ms + int(index * 1000 / rate)
    return [encode(record) for record in decoded]


def run_bench(settings: Settings, *, events: int = 100_000, half_rate_seconds: float = 20.0,
              workers: int = 1, latency_rate: float | None = None, low_rate: float = LOW_RATE,
              jmx: str | None = None) -> dict[str, Any]:
    """Every measurement, as plain data (see ``render``).

    ``jmx``: the JMX address (host:port) of a configured cluster's broker, for its request
    counts; the embedded broker opens one of its own.
    """
    sample = [m.value for m in example_messages(events, seed=2, events_per_second=1e6)]
    size = int(np.mean([len(v) for v in sample]))
    with scratch_cluster(settings, jmx) as (bootstrap, broker_pid, jmx_address):
        ceiling = broker_ceiling(settings, bootstrap, records=events, size=size)
        raw = raw_passthrough(bootstrap, sample)
        pipeline = _pipeline(settings, bootstrap, events=events,
                             half_rate_seconds=half_rate_seconds, workers=workers,
                             latency_rate=latency_rate, low_rate=low_rate,
                             broker_pid=broker_pid, jmx=jmx_address)
    rate = pipeline["max_rate"]["events_per_s"]
    return {
        "machine": {"cpus": _cpus(), "python": sys.version.split()[0]},
        "record_bytes": size, "ceiling": ceiling, "raw": raw, "pipeline": pipeline,
        "ratios": {"pipeline_over_raw": rate / raw["events_per_s"],
                   "pipeline_over_ceiling": rate / min(ceiling.values())},
    }


def _per_event(run: dict[str, Any]) -> str:
    """CPU microseconds per event of each process (the broker too, when it is embedded)."""
    return ", ".join(f"{s} {c / run['events'] * 1e6:.0f} µs" for s, c in run["cpu_s"].items())


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def _latency_line(name: str, run: dict[str, Any]) -> list[str]:
    return [
        f"pipeline at {name}: {run['events_per_s']:>10,.0f} events/s: latency p50 "
        f"{run['p50_ms']:.0f} ms, p95 {run['p95_ms']:.0f} ms, "
        f"p99 {run['p99_ms']:.0f} ms (event time to prediction read); written: p50 "
        f"{run['written_p50_ms']:.0f} ms, p99 {run['written_p99_ms']:.0f} "
        f"ms; the generator's sends were late by p50 {run['send_lag_p50_ms']:.0f} ms, "
        f"p99 {run['send_lag_p99_ms']:.0f} ms"
        + (f"; cores {run['busy_share']:.0%} busy" if "busy_share" in run else ""),
        *([hop_line(run["hops"])] if "hops" in run else []),
        f"  cpu per event: {_per_event(run)}",
        *(_broker_lines(run) if "broker" in run else []),
    ]


def _broker_lines(run: dict[str, Any]) -> list[str]:
    """Broker CPU by thread, requests per event by API and bytes per event by topic, largest
    first."""
    events, seconds = run["events"], run.get("seconds") or 1.0
    threads = sorted((run.get("broker_threads") or {}).items(), key=lambda item: -item[1])
    lines = ["  broker cpu per event by thread: " + ", ".join(
        f"{name} {cpu / events * 1e6:.1f} µs" for name, cpu in threads[:8])] if threads else []
    broker = run.get("broker")
    if not broker:
        return [*lines,
                "  broker requests: not measured (give the broker's JMX address with --jmx)"]
    requests = sorted(broker["requests"].items(), key=lambda item: -item[1])
    topics = sorted(broker["bytes_in"], key=lambda t: -broker["bytes_in"][t])
    return [
        *lines,
        "  broker requests per event (per second): " + ", ".join(
            f"{api} {count / events:.3f} ({count / seconds:,.0f}/s)"
            for api, count in requests if count / events >= 0.0005),
        "  bytes per event in/out, records in per event, by topic: " + ", ".join(
            f"{topic} {broker['bytes_in'][topic] / events:.0f}/"
            f"{broker['bytes_out'].get(topic, 0.0) / events:.0f} B "
            f"{broker['messages_in'].get(topic, 0.0) / events:.2f}"
            for topic in topics if broker["bytes_in"][topic] / events >= 1),
    ]


def _stage_us(run: dict[str, Any]) -> dict[str, float]:
    return {stage: cpu / run["events"] * 1e6 for stage, cpu in run["cpu_s"].items()
            if stage not in ("broker", LOAD)}


def verdicts(report: dict[str, Any]) -> list[str]:
    """Each target against its figure; a figure short of its target names what holds it."""
    p = report["pipeline"]
    top, half, low = p["max_rate"], p["half_rate"], p.get("low_rate")
    stages = _stage_us(top)
    lines = []

    def judge(label: str, value: float, target: float, unit: str, *, at_least: bool = False,
              holder: str = "") -> None:
        met = value >= target if at_least else value <= target
        sign = ">=" if at_least else "<="
        verdict = "met" if met else f"short; {holder}" if holder else "short"
        lines.append(f"  {label}: {value:,.0f}{unit} (target {sign} {target:,.0f}{unit}): "
                     f"{verdict}")

    largest = max(stages, key=lambda s: stages[s]) if stages else "-"
    judge("maximum", top["events_per_s"], TARGETS["events_per_s"], " events/s", at_least=True,
          holder=f"the largest CPU share: {largest}")
    if "broker" in top["cpu_s"]:
        broker = top.get("broker") or {}
        requests = broker.get("requests") or {}
        busiest = max(requests, key=lambda api: requests[api]) if requests else "unmeasured"
        records = broker.get("messages_in") or {}
        densest = max(records, key=lambda t: records[t]) if records else "unmeasured"
        judge("broker cpu per event", top["cpu_s"]["broker"] / top["events"] * 1e6,
              TARGETS["broker_us"], " µs",
              holder=f"most requests: {busiest}; most records in: {densest}")
    judge("stages' cpu per event", sum(stages.values()), TARGETS["stages_us"], " µs",
          holder=f"the largest: {largest} {stages.get(largest, 0):.0f} µs")
    judge("p99 at half the maximum", half["p99_ms"], TARGETS["half_p99_ms"], " ms",
          holder="see its written p99 (the pipeline) against its read p99 (the reader)")
    if low:
        judge(f"p99 at {low['events_per_s']:,.0f}/s", low["p99_ms"], TARGETS["low_p99_ms"],
              " ms", holder="see its written p99 against its read p99")
    if "busy_share" in half:
        judge("cores busy at half the maximum", half["busy_share"] * 100,
              TARGETS["busy_share"] * 100, "%")
    rss = p["peak_rss_mb"]
    fattest = max(rss, key=lambda s: rss[s]) if rss else "-"
    judge("peak RSS of a stage", rss.get(fattest, 0.0), TARGETS["rss_mb"], " MB",
          holder=fattest)
    return lines


def render(report: dict[str, Any]) -> str:
    """A human-readable summary of ``run_bench``'s report."""
    p = report["pipeline"]
    top = p["max_rate"]
    lines = [
        f"machine: {report['machine']['cpus']} cpus, Python {report['machine']['python']}; "
        f"record size {report['record_bytes']} bytes",
        f"broker ceiling:   produce {report['ceiling']['produce_per_s']:>10,.0f} events/s, "
        f"consume {report['ceiling']['consume_per_s']:>10,.0f} events/s",
        f"raw passthrough:  {report['raw']['events_per_s']:>10,.0f} events/s (one Python hop)",
        f"pipeline maximum: {top['events_per_s']:>10,.0f} events/s "
        f"({top['events']} events, five stages, "
        f"{p['workers_per_stage']} process(es) per data stage)",
        f"  cpu per event: {_per_event(top)}; the stages together "
        f"{sum(_stage_us(top).values()):.0f} µs",
        *(_broker_lines(top) if "broker" in top else []),
        *_latency_line("set" if p["half_rate"].get("given") else "half", p["half_rate"]),
        *(_latency_line("low", p["low_rate"]) if p.get("low_rate") else []),
        *(["idle, share of one core: " + ", ".join(
            f"{s} {share:.1%}" for s, share in p["idle_core_share"].items())]
          if p.get("idle_core_share") else []),
        "peak RSS: " + ", ".join(f"{s} {m:.0f} MB" for s, m in p["peak_rss_mb"].items()),
        f"ratios: pipeline/raw {report['ratios']['pipeline_over_raw']:.2f}, "
        f"pipeline/ceiling {report['ratios']['pipeline_over_ceiling']:.3f}",
        "targets:",
        *verdicts(report),
    ]
    return "\n".join(lines)

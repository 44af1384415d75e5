"""The soak: steady load on the five-stage pipeline for minutes, RSS per stage every 10 s.

It answers two questions the benchmark's short runs cannot: does a stage's memory keep growing
under steady load (the goal: under 10% from minute 5 to the end), and does every event still
come out exactly once, as a prediction or as one dead letter, after millions of them.

Example::

    report = run_soak(settings, minutes=30, rate=7500)
    print(render(report))
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import threading
import time
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np

from tidegate.cli.benchmark import fill_topic, scratch_cluster, stage_commands
from tidegate.cli.supervisor import Supervisor
from tidegate.codec import Codec
from tidegate.deadletter import context_of
from tidegate.example.stream import example_messages
from tidegate.kafka.admin import ensure_topics
from tidegate.kafka.scan import read_topic
from tidegate.settings import ClientConfig, Settings
from tidegate.topics import CATALOG, STAGES

__all__ = ["conservation", "growth", "render", "run_soak"]

SAMPLE_SECONDS = 10.0
GROWTH_GOAL = 0.10  # at most 10% more RSS at the end than at minute 5
BASELINE_SECONDS = 300.0  # minute 5
SHORT_BASELINE_SECONDS = 60.0  # runs under 6 minutes: the first sample after one minute
CHUNK_SECONDS = 10.0  # the load is produced in chunks of this many seconds' events
DRAIN_SECONDS = 180.0  # how long the pipeline may take to finish after the load stops


def rss_mb(pid: int) -> float:
    """The resident set size of a process now, in MB (0 when it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    found = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(found.group(1)) / 1024 if found else 0.0


def baseline_seconds(minutes: float) -> float:
    """Where growth is measured from: minute 5, or after one minute in runs under 6 minutes."""
    return BASELINE_SECONDS if minutes >= 6 else SHORT_BASELINE_SECONDS


def growth(samples: list[dict[str, Any]], since: float) -> dict[str, dict[str, float]]:
    """RSS growth per stage from the first sample at or after ``since`` s to the last sample.

    ``samples``: ``{"t": seconds into the load, "rss_mb": {stage: MB}}`` in time order.
    """
    later = [s for s in samples if s["t"] >= since]
    if len(later) < 2:  # one sample is no interval to grow over
        return {}
    first, last = later[0], samples[-1]
    figures = {}
    for stage, start in first["rss_mb"].items():
        end = last["rss_mb"].get(stage, 0.0)
        figures[stage] = {"from_t": first["t"], "to_t": last["t"], "start_mb": start,
                          "end_mb": end, "growth_mb": end - start,
                          "growth": (end - start) / start if start else 0.0}
    return figures


def verdict(figures: dict[str, dict[str, float]], goal: float = GROWTH_GOAL) -> bool:
    """Whether every stage grew less than ``goal`` (a share); False with nothing measured."""
    return bool(figures) and all(f["growth"] < goal for f in figures.values())


def _digest(identity: str | bytes) -> int:
    data = identity.encode() if isinstance(identity, str) else identity
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def conservation(produced: np.ndarray, outcomes: np.ndarray) -> dict[str, int]:
    """Compare produced event digests with the digests of every outcome.

    Returns how many were produced, how many came out exactly once, how many were lost (no
    outcome), duplicated (two or more) and how many outcomes match no produced event.
    """
    ids, counts = np.unique(outcomes, return_counts=True)
    found = np.searchsorted(ids, produced)
    found = np.minimum(found, max(len(ids) - 1, 0))
    known = (ids[found] == produced) if len(ids) else np.zeros(len(produced), dtype=bool)
    per_event = np.where(known, counts[found] if len(ids) else 0, 0)
    strangers = int(len(ids) - np.isin(ids, produced).sum())
    return {"produced": len(produced), "once": int((per_event == 1).sum()),
            "lost": int((per_event == 0).sum()), "duplicated": int((per_event > 1).sum()),
            "unknown_outcomes": strangers}


def _outcome_digests(config: ClientConfig, prefix: str) -> tuple[np.ndarray, dict[str, int]]:
    """Digests of the event id of every prediction and dead letter, and the count per topic."""
    codec, digests, counts = Codec(), array("Q"), {}
    for message in read_topic(config, prefix + "predictions"):
        digests.append(_digest(codec.decode(message.value() or b"")["event_id"]))
    counts["predictions"] = len(digests)
    for stage, spec in STAGES.items():
        if spec.dead_letter is None:
            continue
        before = len(digests)
        for message in read_topic(config, spec.dead_letter.name(prefix)):
            event_id = context_of(message.headers()).get("event.id")
            digests.append(_digest(event_id if event_id else message.value() or b""))
        counts[f"dlq.{stage}"] = len(digests) - before
    return np.frombuffer(digests, dtype=np.uint64), counts


def _ended(config: ClientConfig, prefix: str) -> int:
    """Records (and transaction markers) on the output topics: a cheap upper bound of outcomes."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**config, "group.id": "tidegate-soak-ends"})
    try:
        total = 0
        names = [prefix + "predictions", *(s.dead_letter.name(prefix) for s in STAGES.values()
                                           if s.dead_letter is not None)]
        for name in names:
            for partition in consumer.list_topics(name, timeout=10).topics[name].partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(name, partition),
                                                           timeout=10)
                total += high - low
        return int(total)
    finally:
        consumer.close()


def run_soak(settings: Settings, *, minutes: float, rate: float,
             echo: Callable[[str], None] = click.echo) -> dict[str, Any]:
    """Run the soak and return its figures as plain data (see ``render``)."""
    with scratch_cluster(settings, None) as (bootstrap, _broker_pid, _jmx):
        return _soak(settings, bootstrap, minutes=minutes, rate=rate, echo=echo)


def _soak(settings: Settings, bootstrap: str, *, minutes: float, rate: float,
          echo: Callable[[str], None]) -> dict[str, Any]:
    from tidegate.models.training import ensure_example_models

    prefix = f"soak{int(time.time())}."
    config: ClientConfig = {"bootstrap.servers": bootstrap}
    ensure_topics(config, CATALOG, prefix=prefix, replication=1)
    ensure_example_models(settings.model_copy(update={"topic_prefix": prefix}).registry_dir)
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "TIDEGATE_TOPIC_PREFIX": prefix,
           "TIDEGATE_DATA_DIR": str(settings.data_dir.resolve()), "TIDEGATE_LOG_LEVEL": "WARNING"}
    supervisor = Supervisor(stage_commands(1),
                            log_dir=settings.data_dir.resolve() / "soak-logs", env=env)
    samples: list[dict[str, Any]] = []
    produced = array("Q")  # 8 bytes an event: 9 million events in a 30-minute run
    stop = threading.Event()
    began = time.time()

    def sample() -> None:
        while not stop.wait(SAMPLE_SECONDS):
            supervisor.poll()
            at = time.time() - began
            rss = {name: rss_mb(pid) for name, pid in supervisor.pids().items() if pid}
            samples.append({"t": at, "rss_mb": rss, "sent": len(produced)})
            if len(samples) % 6 == 0:
                echo(f"soak {int(at) // 60:>3d} min: sent {len(produced):,}; rss "
                     + ", ".join(f"{s} {m:.0f} MB" for s, m in rss.items()))

    supervisor.start()
    sampler = threading.Thread(target=sample, daemon=True, name="soak-sampler")
    try:
        stream = example_messages(int(minutes * 60 * rate), seed=7, events_per_second=rate)
        chunk = max(1, int(rate * CHUNK_SECONDS))
        began = time.time()
        sampler.start()
        while batch := list(itertools.islice(stream, chunk)):
            fill_topic(bootstrap, prefix + "events", [m.value for m in batch],
                       [m.key for m in batch], rate=rate, start=began + len(produced) / rate)
            produced.extend(_digest(m.event_id or m.value) for m in batch)
        sent_seconds = time.time() - began
        deadline = time.monotonic() + DRAIN_SECONDS
        while _ended(config, prefix) < len(produced) and time.monotonic() < deadline:
            time.sleep(2.0)
        done_seconds = time.time() - began
        outcomes, per_topic = _outcome_digests(config, prefix)
        while len(outcomes) < len(produced) and time.monotonic() < deadline:
            time.sleep(5.0)
            done_seconds = time.time() - began
            outcomes, per_topic = _outcome_digests(config, prefix)
    finally:
        stop.set()
        supervisor.stop()
    since = baseline_seconds(minutes)
    # growth while the load ran: the drain's samples are of a pipeline going idle
    figures = growth([s for s in samples if s["t"] <= sent_seconds + 1.0], since)
    return {"minutes": minutes, "rate": rate, "sent": len(produced),
            "sent_per_s": len(produced) / sent_seconds if sent_seconds else 0.0,
            "out_per_s": len(outcomes) / done_seconds if done_seconds else 0.0,
            "outcomes": per_topic, "samples": samples, "baseline_s": since,
            "short": minutes < 6, "growth": figures, "growth_ok": verdict(figures),
            "conservation": conservation(np.frombuffer(produced, dtype=np.uint64), outcomes)}


def conserved(report: dict[str, Any]) -> bool:
    """Whether every event came out exactly once and nothing else came out."""
    c = report["conservation"]
    return bool(c["produced"] and c["once"] == c["produced"] and not c["unknown_outcomes"])


def render(report: dict[str, Any]) -> str:
    """A human-readable summary of ``run_soak``'s report."""
    where = ("after one minute (the run is under 6 minutes, so not from minute 5)"
             if report["short"] else "from minute 5")
    lines = [f"soak: {report['minutes']:g} min at {report['rate']:,.0f} events/s: sent "
             f"{report['sent']:,} events ({report['sent_per_s']:,.0f}/s); outcomes "
             f"{report['out_per_s']:,.0f}/s over the run and drain",
             "  outcomes: " + ", ".join(f"{t} {n:,}" for t, n in report["outcomes"].items()),
             f"RSS growth {where} to the end (goal: under {GROWTH_GOAL:.0%}):"]
    for stage, f in report["growth"].items():
        lines.append(f"  {stage}: {f['start_mb']:.0f} -> {f['end_mb']:.0f} MB "
                     f"({f['growth_mb']:+.1f} MB, {f['growth']:+.1%}, "
                     f"{f['from_t']:.0f}-{f['to_t']:.0f} s): "
                     + ("met" if f["growth"] < GROWTH_GOAL else "over"))
    if not report["growth"]:
        lines.append("  not measured: fewer than two samples after the baseline")
    lines.append(f"  growth: {'met' if report['growth_ok'] else 'NOT met'}")
    c = report["conservation"]
    lines.append(f"conservation: {c['once']:,} of {c['produced']:,} exactly once; lost "
                 f"{c['lost']:,}, duplicated {c['duplicated']:,}, unknown outcomes "
                 f"{c['unknown_outcomes']:,}: " + ("passed" if conserved(report) else "FAILED"))
    return "\n".join(lines)

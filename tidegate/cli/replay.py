"""Replay dead letters into their input topic: filtered, paced, guarded against loops, once.

A run reads a dead-letter topic from where the last one stopped (group ``<prefix>replay.<topic>``)
to its end, sends each selected dead letter to its ``source.topic`` (original key, value, headers
plus ``tidegate.replay.*``), commits what the broker acknowledged, and (unless a dry run, which
changes nothing) writes an audit record to ``<prefix>audit``::

    request = ReplayRequest(topic="validation", codes=("OUT_OF_RANGE",), rate=500)
    summary = replay(client_config(settings), request, prefix=settings.topic_prefix)
"""

from __future__ import annotations

import contextlib
import getpass
import json
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable, Container, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from tidegate.codec import Codec
from tidegate.deadletter import Code, Context, Headers, context_of, header_value
from tidegate.errors import BrokerError, CodecError, ConfigError
from tidegate.kafka.clients import CONSUMER_DEFAULTS
from tidegate.pipeline.ingest import REPLAY_HEADER
from tidegate.retry import retry_sync, stop_after_delay, wait_fixed
from tidegate.settings import ClientConfig
from tidegate.topics import CATALOG, STAGES

__all__ = ["REPLAY_AT_HEADER", "REPLAY_HEADER", "REPLAY_OFFSET_HEADER", "Decision", "Predicate",
           "ReplayRequest", "ReplaySummary", "decide", "dlq_topic", "replay", "replay_count",
           "replay_group", "replay_headers"]

Decision = Literal["replay", "refuse"]
Predicate = Callable[[Mapping[str, Any]], bool]
REPLAY_OFFSET_HEADER = "tidegate.replay.dlq.offset"
REPLAY_AT_HEADER = "tidegate.replay.at"
_KEYS = frozenset(spec.key for spec in CATALOG)


def replay_count(headers: Headers) -> int:
    """How often this record was replayed before (its ``tidegate.replay.count``, else 0)."""
    text = header_value(headers, REPLAY_HEADER) or ""
    return int(text) if text.isdecimal() else 0


def decide(headers: Headers, max_replays: int) -> Decision:
    """The loop guard: refuse a record whose replay count would exceed ``max_replays``."""
    return "replay" if replay_count(headers) + 1 <= max_replays else "refuse"


def replay_headers(headers: Headers, *, position: str, now_ms: int) -> Headers:
    """The original non-tidegate headers, then the replay count, dead-letter position and time."""
    kept = [(name, value) for name, value in headers if not name.startswith("tidegate.")]
    return [*kept, (REPLAY_HEADER, str(replay_count(headers) + 1).encode()),
            (REPLAY_OFFSET_HEADER, position.encode()), (REPLAY_AT_HEADER, str(now_ms).encode())]


def dlq_topic(name: str, prefix: str) -> str:
    """A stage name (``validation``), a catalog key (``dlq.validation``) or a full topic name."""
    spec = STAGES[name].dead_letter if name in STAGES else None
    return spec.name(prefix) if spec is not None else prefix + name if name in _KEYS else name


def replay_group(prefix: str, topic: str) -> str:
    """The consumer group that remembers how far ``topic`` was replayed."""
    return f"{prefix}replay.{topic}"


@dataclass(frozen=True, kw_only=True)
class ReplayRequest:
    """Which dead letters to replay, where to, how fast. ``topic``, ``to``: a stage name, a
    catalog key or a topic name. Selected: code in ``codes`` (if any), failed in [since, until)
    (epoch ms), every ``where`` predicate true of the decoded value (an undecodable one: never),
    e.g. ``where=(lambda event: event["amount"] > 1e6,)``."""

    topic: str
    to: str | None = None
    codes: tuple[str, ...] = ()
    where: tuple[Predicate, ...] = ()
    since_ms: int | None = None
    until_ms: int | None = None
    limit: int | None = None
    rate: float = 0.0
    max_replays: int = 3
    from_beginning: bool = False
    dry_run: bool = False

    def __post_init__(self) -> None:
        until = 2**63 if self.until_ms is None else self.until_ms
        if self.rate < 0 or self.max_replays < 1 or (self.limit is not None and self.limit < 1) \
                or (self.since_ms or 0) >= until:
            raise ConfigError("replay needs rate >= 0, max_replays, limit >= 1, since < until")

    def judge(self, headers: Headers, value: bytes = b"", *, codec: Codec | None = None,
              position: str = "", superseded: Container[str | None] = ()) -> str:
        """``replay``, ``refuse`` (the loop guard) or why the dead letter is skipped."""
        context = context_of(headers)
        at = int(failed) if (failed := context.get(Context.FAILED_AT, "")).isdigit() else -1
        if (self.codes and context.get(Context.ERROR_CODE) not in self.codes) or (
                self.since_ms is not None and at < self.since_ms) or (
                self.until_ms is not None and at >= self.until_ms) or (
                self.where and not _holds(self.where, codec or Codec(), value)):
            return "filtered"
        if position in superseded:
            return "superseded"
        if context.get(Context.ERROR_CODE) == Code.DUPLICATE_EVENT_ID and not self.codes:
            return "duplicate"  # its event was accepted once; ingest lets every replay through
        if not (self.to or context.get(Context.SOURCE_TOPIC)):
            return "no source topic"
        return decide(headers, self.max_replays)


@dataclass(kw_only=True)
class ReplaySummary:
    """What a run did (in a dry run: would do); ``skipped`` counts by reason."""

    run_id: str
    topic: str
    dry_run: bool
    examined: int = 0
    replayed: int = 0
    refused: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    by_code: Counter[str] = field(default_factory=Counter)
    by_target: Counter[str] = field(default_factory=Counter)
    sample: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def replay(
    config: ClientConfig, request: ReplayRequest, *, prefix: str, codec: Codec | None = None,
    user: str | None = None, on_progress: Callable[[int, int], None] = lambda done, total: None,
    clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
) -> ReplaySummary:
    """Replay the dead letters ``request`` selects; return what happened (or would happen).

    Example: ``replay(config, ReplayRequest(topic="validation", dry_run=True), prefix="tidegate.")``
    """
    topic, codec = dlq_topic(request.topic, prefix), codec or Codec()
    target = prefix + request.to if request.to in _KEYS else request.to
    summary = ReplaySummary(run_id=uuid.uuid4().hex, topic=topic, dry_run=request.dry_run)
    consumer = Consumer({**CONSUMER_DEFAULTS, **config, "group.id": replay_group(prefix, topic),
                         "enable.partition.eof": True})
    producer = None if request.dry_run else Producer(
        {**config, "acks": "all", "enable.idempotence": True, "linger.ms": 5, "log_level": 3})
    failures: list[str] = []
    done: dict[int, int] = {}
    began_ms, error = int(time.time() * 1000), None
    try:
        ranges = _ranges(consumer, topic, request.from_beginning, target)
        total = sum(end - start for start, end in ranges.values())
        # a replay that failed again supersedes its dead letter: replay only the newest (its count)
        superseded = {header_value(cast(Headers, m.headers() or []), REPLAY_OFFSET_HEADER)
                      for m in _scan(consumer, topic, ranges)}
        began = clock()
        for message in _scan(consumer, topic, ranges):
            if request.limit is not None and summary.replayed >= request.limit:
                break
            summary.examined += 1
            done[message.partition() or 0] = (message.offset() or 0) + 1
            headers, value = cast(Headers, message.headers() or []), message.value() or b""
            position = f"{topic}:{message.partition()}:{message.offset()}"
            outcome = request.judge(headers, value, codec=codec, position=position,
                                    superseded=superseded)
            if outcome == "refuse":
                summary.refused += 1
            elif outcome != "replay":
                summary.skipped[outcome] += 1
            else:
                context = context_of(headers)
                to = target or context[Context.SOURCE_TOPIC]
                if producer is not None and request.rate > 0:
                    sleep(max(summary.replayed / request.rate - (clock() - began), 0.0))
                if producer is not None:
                    _produce(producer, to, message.key(), value, failures, replay_headers(
                        headers, position=position, now_ms=int(time.time() * 1000)))
                summary.replayed += 1
                summary.by_code[context.get(Context.ERROR_CODE, "?")] += 1
                summary.by_target[to] += 1
                if len(summary.sample) < 5:
                    info = {k: context.get(k) for k in ("error.code", "error.message", "event.id")}
                    summary.sample.append({"dead_letter": position, "target": to, **info,
                                           "replay_count": replay_count(headers) + 1})
            if producer is not None and summary.examined % 1000 == 0:
                _checkpoint(producer, consumer, topic, done, failures)
            on_progress(summary.examined, total)
        if producer is not None:
            _checkpoint(producer, consumer, topic, done, failures)
        summary.seconds = clock() - began
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        consumer.close()
        if producer is not None and (error is None or summary.examined):  # a run that started
            _audit(producer, prefix, request, summary, user, began_ms, error)
    return summary


def _holds(where: tuple[Predicate, ...], codec: Codec, value: bytes) -> bool:
    decoded = codec.decode_batch([value])[0]  # a CodecError in place of an undecodable value
    return not isinstance(decoded, CodecError) and all(p(decoded[1]) for p in where)


def _produce(producer: Producer, topic: str, key: bytes | None, value: bytes,
             failures: list[str], headers: Headers | None = None) -> None:
    sent: list[tuple[str, str | bytes | None]] = list(headers or [])
    while True:
        try:
            producer.produce(topic, value, key, headers=sent, on_delivery=lambda err, _m: (
                failures.append(err.str()) if err is not None else None))
            return
        except BufferError:
            producer.poll(0.1)  # the local queue is full: let deliveries drain it
        except KafkaException as exc:
            raise BrokerError(f"replaying to {topic}: {exc.args[0].str()}") from exc


def _checkpoint(producer: Producer, consumer: Consumer, topic: str, done: dict[int, int],
                failures: list[str]) -> None:
    """Commit how far the topic was read, once the broker acknowledged every replay so far."""
    if producer.flush(60) or failures:
        raise BrokerError(f"replayed records were not delivered ({(failures or ['timeout'])[0]}"
                          "); progress since the last commit was not committed")
    if done:
        _retrying("committing replay progress", lambda: consumer.commit(
            offsets=[TopicPartition(topic, p, o) for p, o in done.items()], asynchronous=False))


def _audit(producer: Producer, prefix: str, request: ReplayRequest, summary: ReplaySummary,
           user: str | None, began_ms: int, error: str | None) -> None:
    with contextlib.suppress(KeyError, OSError):
        user = user or getpass.getuser()
    record = {"kind": "replay", "issuer": user or "unknown", "host": socket.gethostname(),
              "started_at": began_ms, "finished_at": int(time.time() * 1000),
              "request": {**vars(request), "where": [str(p) for p in request.where]},
              **vars(summary), "outcome": error or "ok"}
    failures: list[str] = []
    _produce(producer, prefix + "audit", b"replay", json.dumps(record).encode(), failures)
    if (producer.flush(30) or failures) and error is None:  # never mask the run's own error
        raise BrokerError(f"the audit record of replay {summary.run_id} was not delivered")


def _ranges(consumer: Consumer, topic: str, from_beginning: bool, target: str | None
            ) -> dict[int, tuple[int, int]]:
    """Per partition: the start (the group's offset, or the oldest) and the current end."""
    try:
        for name in filter(None, (target, topic)):  # topic last: `info` is its metadata below
            info = consumer.list_topics(name, timeout=10).topics.get(name)
            if info is None or info.error is not None or not info.partitions:
                raise BrokerError(f"topic {name} does not exist")
        parts = [TopicPartition(topic, p) for p in sorted(info.partitions)]
        committed = {} if from_beginning else {tp.partition: tp.offset for tp in _retrying(
            f"reading {topic}", lambda: consumer.committed(parts, 10))}
        ranges = {}
        for tp in parts:
            low, high = consumer.get_watermark_offsets(tp, timeout=10)
            ranges[tp.partition] = (min(max(committed.get(tp.partition, -1), low), high), high)
    except KafkaException as exc:
        raise BrokerError(f"reading {topic}: {exc.args[0].str()}") from exc
    return ranges


def _retrying(doing: str, call: Callable[[], Any], deadline: float = 30.0) -> Any:
    """A new group's coordinator (or a new ``__consumer_offsets``) takes a moment to be ready."""
    try:
        return retry_sync(call, stop=stop_after_delay(deadline), wait=wait_fixed(0.5),
                          retry_on=KafkaException)
    except KafkaException as exc:
        raise BrokerError(f"{doing}: {exc.args[0].str()}") from exc


def _scan(consumer: Consumer, topic: str, ranges: Mapping[int, tuple[int, int]],
          idle_timeout: float = 10.0) -> Iterator[Message]:
    """The messages of ``topic`` within ``ranges`` (start inclusive, end exclusive)."""
    open_parts = {p for p, (start, end) in ranges.items() if end > start}
    consumer.assign([TopicPartition(topic, p, ranges[p][0]) for p in open_parts])
    quiet_since = time.monotonic()
    while open_parts:
        message = consumer.poll(0.5)
        if message is None:
            if time.monotonic() - quiet_since > idle_timeout:
                raise BrokerError(f"reading {topic} stalled for {idle_timeout:.0f} s")
            continue
        quiet_since = time.monotonic()
        partition, offset, error = message.partition() or 0, message.offset() or 0, message.error()
        if error is not None and error.code() != KafkaError._PARTITION_EOF:
            raise BrokerError(f"reading {topic}: {error.str()}")
        if error is None and partition in open_parts and offset < ranges[partition][1]:
            yield message
        if error is not None or offset + 1 >= ranges[partition][1]:
            open_parts.discard(partition)

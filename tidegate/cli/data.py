"""``tidegate produce`` and ``tidegate tail``: events in, decoded records out."""

from __future__ import annotations

import base64
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

import click
from confluent_kafka import KafkaError, Producer

from tidegate.codec import Codec
from tidegate.errors import BrokerError, CodecError, ConfigError
from tidegate.kafka.clients import client_config
from tidegate.kafka.refusal import Refusals, authorization_error, flush_or_raise
from tidegate.kafka.scan import Message, read_topic
from tidegate.settings import Settings, load_settings
from tidegate.topics import CATALOG, by_key

__all__ = ["produce", "tail", "topic_name"]


def topic_name(settings: Settings, name: str) -> str:
    """A catalog key (``predictions``, ``dlq.ingest``) or a full topic name."""
    keys = {spec.key for spec in CATALOG}
    return settings.topic_prefix + name if name in keys else name


@click.command()
@click.option("--file", "source", type=click.Path(dir_okay=False, allow_dash=True),
              help="JSON lines (or an Avro container file with --format avro); - for stdin.")
@click.option("--format", "fmt", type=click.Choice(["json", "avro"]), default="json",
              show_default=True, help="Format of --file.")
@click.option("--generate", "count", type=click.IntRange(min=1),
              help="Send this many example events from the generator instead of a file.")
@click.option("--rate", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Events per second; 0 sends as fast as the broker takes them.")
@click.option("--bad-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of generated events made bad (every kind of bad record).")
@click.option("--drift", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Shift the generator's distributions (0 none, 1 strong).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--labels/--no-labels", default=False,
              help="Also send each generated event's ground truth to the labels topic.")
@click.option("--topic", default="events", show_default=True, help="Catalog key or topic name.")
def produce(source: str | None, fmt: str, count: int | None, rate: float, bad_rate: float,
            drift: float, seed: int, labels: bool, topic: str) -> None:
    """Produce events: JSON lines or Avro from a file or stdin, or the example generator."""
    if (source is None) == (count is None):
        raise click.UsageError("give exactly one of --file or --generate")
    settings = load_settings()
    target = topic_name(settings, topic)
    config = client_config(settings, **{"linger.ms": 10})
    refusals = Refusals(config)
    producer = Producer({**config, **refusals.hooks()})
    codec = Codec(registry_url=settings.schema_registry_url)
    failures: list[KafkaError] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(err)

    label_topic = by_key("labels").name(settings.topic_prefix)
    encode_label = codec.encoder("tidegate.Label", topic=label_topic)
    messages = (_generated(count, seed, bad_rate, drift, rate) if count is not None
                else _from_file(source or "-", fmt, codec))
    sent = bad = 0
    began = time.monotonic()
    with click.progressbar(messages, length=count or 0, label=f"producing to {target}",
                           file=sys.stderr, show_pos=True) as bar:
        for key, value, label, event_id, is_bad in bar:
            _pace(rate, sent, began)
            _produce(producer, target, key, value, on_delivery)
            if labels and label is not None and event_id:
                record = {"event_id": event_id, "label": label,
                          "labelled_at": int(time.time() * 1000)}
                _produce(producer, label_topic, event_id.encode(), encode_label(record),
                         on_delivery)
            sent += 1
            bad += is_bad
    left = flush_or_raise(producer, refusals, 30.0)
    took = time.monotonic() - began
    if failures:
        raise (authorization_error(failures[0], config, f"write {target}") or BrokerError(
            f"{len(failures)} of {sent} messages were not delivered: {failures[0].str()}"))
    if left:
        raise BrokerError(f"{left} of {sent} messages were not acknowledged within 30 s")
    click.echo(f"sent {sent} events ({bad} bad) to {target} in {took:.1f} s "
               f"({sent / max(took, 1e-9):.0f}/s)")


def _produce(producer: Producer, topic: str, key: bytes | None, value: bytes,
             on_delivery: Any) -> None:
    while True:
        try:
            producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
            break
        except BufferError:
            producer.poll(0.1)  # the local queue is full: let deliveries drain it
    producer.poll(0)


def _pace(rate: float, sent: int, began: float) -> None:
    if rate > 0:
        ahead = sent / rate - (time.monotonic() - began)
        if ahead > 0:
            time.sleep(ahead)


Row = tuple[bytes | None, bytes, bool | None, str | None, bool]


def _generated(count: int, seed: int, bad_rate: float, drift: float, rate: float
               ) -> Iterator[Row]:
    from tidegate.example.stream import example_messages

    pace = rate if rate > 0 else 1000.0
    for message in example_messages(count, seed=seed, bad_rate=bad_rate, drift=drift,
                                    events_per_second=pace):
        yield (message.key, message.value, message.label, message.event_id,
               message.expected is not None)


def _from_file(source: str, fmt: str, codec: Codec) -> Iterator[Row]:
    handle: BinaryIO = sys.stdin.buffer if source == "-" else Path(source).open("rb")  # noqa: SIM115
    try:
        if fmt == "avro":
            yield from _avro_file(handle, codec)
            return
        for line in handle:
            if stripped := line.strip():
                yield None, stripped, None, None, False
    finally:
        if handle is not sys.stdin.buffer:
            handle.close()


def _avro_file(handle: BinaryIO, codec: Codec) -> Iterator[Row]:
    import fastavro

    from tidegate.codec import add_schema

    try:
        reader = fastavro.reader(handle)
        writer = add_schema(cast(dict[str, Any], reader.writer_schema), current=False)
    except (ValueError, CodecError) as exc:
        raise ConfigError(f"--file is not an Avro container file: {exc}") from exc
    encode = codec.encoder(writer.name)
    for record in reader:
        yield None, encode(cast(dict[str, Any], record)), None, None, False


@click.command()
@click.argument("topic")
@click.option("-b", "--from-beginning", is_flag=True, help="Start at the oldest record.")
@click.option("--follow/--no-follow", default=True, show_default=True,
              help="Keep waiting for new records.")
@click.option("-n", "--max", "limit", type=click.IntRange(min=1), help="Stop after N records.")
@click.option("--meta", is_flag=True, help="Wrap each record with partition, offset and key.")
def tail(topic: str, from_beginning: bool, follow: bool, limit: int | None, meta: bool) -> None:
    """Print the records of TOPIC (catalog key or name), decoded, as JSON lines."""
    settings = load_settings()
    codec = Codec(registry_url=settings.schema_registry_url)
    name = topic_name(settings, topic)
    for message in read_topic(client_config(settings), name, from_beginning=from_beginning,
                              follow=follow, limit=limit):
        click.echo(json.dumps(render(message, codec, meta=meta), default=str))


def render(message: Message, codec: Codec, *, meta: bool) -> dict[str, Any]:
    """A record as plain JSON data: the decoded value, or its bytes when it does not decode."""
    value = message.value() or b""
    try:
        decoded: Any = codec.decode_any(value)[1]
        if isinstance(decoded, dict) and "events" in decoded and "batch_id" in decoded:
            decoded = {**decoded, "events": len(decoded["events"])}
        decoded = _plain(decoded)
    except CodecError as exc:
        decoded = {"undecodable": base64.b64encode(value).decode(), "error": exc.code}
    if not meta:
        return decoded if isinstance(decoded, dict) else {"value": decoded}
    key = message.key()
    return {"partition": message.partition(), "offset": message.offset(),
            "key": key.decode("utf-8", "replace") if key else None, "value": decoded}


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value

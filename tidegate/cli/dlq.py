"""``tidegate dlq ls|show``: dead letters by stage and error code, and with their context."""

from __future__ import annotations

import json
from collections import Counter

import click

from tidegate.cli.data import render
from tidegate.cluster import client_config
from tidegate.codec import Codec
from tidegate.deadletter import context_of
from tidegate.reading import read_topic
from tidegate.settings import load_settings
from tidegate.topics import STAGES

__all__ = ["dlq"]

_DLQ_STAGES = tuple(stage for stage, spec in STAGES.items() if spec.dead_letter is not None)


@click.group()
def dlq() -> None:
    """Inspect the dead-letter topics."""


@dlq.command(name="ls")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as one JSON object.")
def ls(as_json: bool) -> None:
    """Count dead letters by stage and error code."""
    settings = load_settings()
    config = client_config(settings)
    counts: dict[str, Counter[str]] = {}
    for stage in _DLQ_STAGES:
        spec = STAGES[stage].dead_letter
        assert spec is not None
        codes: Counter[str] = Counter()
        for message in read_topic(config, spec.name(settings.topic_prefix)):
            codes[context_of(message.headers()).get("error.code", "?")] += 1
        counts[stage] = codes
    if as_json:
        click.echo(json.dumps({stage: dict(codes) for stage, codes in counts.items()}))
        return
    click.echo(f"{'stage':12} {'code':24} {'count':>8}")
    for stage, codes in counts.items():
        click.echo(f"{stage:12} {'(all)':24} {sum(codes.values()):>8}")
        for code, count in codes.most_common():
            click.echo(f"{'':12} {code:24} {count:>8}")


@dlq.command()
@click.argument("stage", type=click.Choice(_DLQ_STAGES))
@click.option("--code", "codes", multiple=True, help="Only these error codes (repeatable).")
@click.option("-n", "--max", "limit", type=click.IntRange(min=1), default=20, show_default=True)
def show(stage: str, codes: tuple[str, ...], limit: int) -> None:
    """Print dead letters of STAGE, decoded, with their error context, as JSON lines."""
    settings = load_settings()
    spec = STAGES[stage].dead_letter
    assert spec is not None
    codec = Codec(registry_url=settings.schema_registry_url)
    shown = 0
    for message in read_topic(client_config(settings), spec.name(settings.topic_prefix)):
        context = context_of(message.headers())
        if codes and context.get("error.code") not in codes:
            continue
        record = render(message, codec, meta=True)
        record["context"] = context
        click.echo(json.dumps(record, default=str))
        shown += 1
        if shown >= limit:
            break

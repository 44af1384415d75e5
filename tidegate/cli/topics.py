"""``tidegate topics create|list|describe``: the catalog on the cluster."""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from tidegate.errors import TopicMismatchError
from tidegate.kafka.admin import TopicReport, describe_topics, ensure_topics
from tidegate.kafka.clients import client_config
from tidegate.settings import Settings, load_settings
from tidegate.topics import CATALOG, TopicSpec

__all__ = ["topics"]


@click.group()
def topics() -> None:
    """Create and inspect the topics of the catalog."""


@topics.command()
def create() -> None:
    """Create the catalog's topics; existing ones are checked, not changed."""
    settings = load_settings()
    reports = ensure_topics(client_config(settings), CATALOG, prefix=settings.topic_prefix,
                            replication=settings.replication_factor)
    for report in reports:
        click.echo(f"{report.action:9} {report.name}")
    _fail_on_mismatch(reports)


@topics.command(name="list")
def list_() -> None:
    """List the catalog's topics and whether each exists as the catalog says."""
    settings = load_settings()
    for report in _describe(settings, CATALOG):
        click.echo(f"{report.name:40} {report.partitions or '-':>3} partitions  {report.action}")


@topics.command()
@click.argument("names", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per topic.")
def describe(names: tuple[str, ...], as_json: bool) -> None:
    """Describe catalog topics (all, or the NAMES given, with or without the prefix)."""
    settings = load_settings()
    specs = _select(settings, names)
    reports = _describe(settings, specs)
    for spec, report in zip(specs, reports, strict=True):
        if as_json:
            click.echo(json.dumps({**asdict(report), "schema": spec.value_schema,
                                   "dead_letter_of": spec.dead_letter_of}))
            continue
        click.echo(f"{report.name}  [{report.action}]")
        click.echo(f"  {spec.description}")
        click.echo(f"  partitions {report.partitions}, replication {report.replication}, "
                   f"schema {spec.value_schema or '-'}")
        for key, value in report.configs.items():
            click.echo(f"  {key}={value}")
        for problem in report.problems:
            click.echo(f"  ! {problem}")
    _fail_on_mismatch(reports)


def _describe(settings: Settings, specs: tuple[TopicSpec, ...]) -> list[TopicReport]:
    return describe_topics(client_config(settings), specs, prefix=settings.topic_prefix,
                           replication=settings.replication_factor)


def _select(settings: Settings, names: tuple[str, ...]) -> tuple[TopicSpec, ...]:
    if not names:
        return CATALOG
    known = {spec.key: spec for spec in CATALOG}
    chosen = []
    for name in names:
        key = name.removeprefix(settings.topic_prefix)
        if key not in known:
            raise click.BadParameter(f"'{name}' is not in the catalog", param_hint="NAMES")
        chosen.append(known[key])
    return tuple(chosen)


def _fail_on_mismatch(reports: list[TopicReport]) -> None:
    bad = [report for report in reports if report.action == "mismatch"]
    if bad:
        first = bad[0]
        raise TopicMismatchError(
            f"{len(bad)} topic(s) differ from the catalog; "
            f"{first.name}: {'; '.join(first.problems)}"
        )

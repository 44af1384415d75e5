"""``tidegate stage run NAME``: one stage as its own worker process and consumer group."""

from __future__ import annotations

import importlib

import click

from tidegate.settings import load_settings
from tidegate.topics import STAGE_ORDER

__all__ = ["stage"]



@click.group()
def stage() -> None:
    """Run pipeline stages."""


@stage.command()
@click.argument("name", type=click.Choice(STAGE_ORDER))
@click.option("--worker", type=click.IntRange(0, 999), default=None,
              help="This process's number among the stage's workers (default TIDEGATE_WORKER); "
              "in exactly-once mode it names the stable transactional id.")
def run(name: str, worker: int | None) -> None:
    """Run stage NAME until SIGTERM or Ctrl-C; in-flight batches finish first."""
    import faust

    from tidegate.cli.logs import logging_config
    from tidegate.runtime.metrics import instance_name
    from tidegate.runtime.stage import tune_gc
    from tidegate.runtime.tracing import install, shutdown

    settings = load_settings()
    if worker is not None:
        settings = settings.model_copy(update={"worker": worker})
    # traces over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set; the instance id is the one of
    # the stage's health events, so a trace leads to the process that wrote it
    provider = install(name, instance=instance_name(name))
    module = importlib.import_module(f"tidegate.agents.{name}")
    runtime = module.build(settings)
    tune_gc(settings.gc_threshold)
    process = faust.Worker(runtime.app, loglevel=settings.log_level,
                           logging_config=logging_config(settings), redirect_stdouts=False,
                           override_logging=True, quiet=True)
    try:
        process.execute_from_commandline()
    finally:
        if provider is not None:
            shutdown(provider)  # exports the spans still queued, for a few seconds at most

"""``tidegate bench``: the broker's ceiling, a raw passthrough and the pipeline, in one run."""

from __future__ import annotations

import json
from pathlib import Path

import click

from tidegate.settings import load_settings

__all__ = ["bench"]


@click.command()
@click.option("--events", type=click.IntRange(min=5000), default=100_000, show_default=True,
              help="Events for the ceiling, the raw passthrough and the max-rate run.")
@click.option("--half-rate-seconds", type=click.FloatRange(min=5), default=20.0,
              show_default=True, help="How long the half-rate (latency) run lasts.")
@click.option("--workers", type=click.IntRange(1, 6), default=1, show_default=True,
              help="Processes per data stage (the topics have 6 partitions).")
@click.option("--latency-rate", type=click.FloatRange(min=10), default=None,
              help="Events/s of the latency run (default: half the measured maximum).")
@click.option("--low-rate", type=click.FloatRange(min=10), default=2000.0, show_default=True,
              help="Events/s of the second, lightly loaded latency run.")
@click.option("--jmx", metavar="HOST:PORT", default=None,
              help="JMX address of the configured cluster's broker, for its request counts "
              "(the embedded broker opens its own).")
@click.option("--codec", is_flag=True,
              help="Only the codec figures, no broker: CPU per prediction framed and per "
              "input record read, column by column and one record at a time, and per event "
              "of an internal batch packed and read back.")
@click.option("--dedupe", is_flag=True,
              help="Only the de-duplication window, no broker: CPU per event id and memory "
              "growth once the window is full, batch by batch and one id at a time.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the full report as JSON here.")
def bench(events: int, half_rate_seconds: float, workers: int, latency_rate: float | None,
          low_rate: float, jmx: str | None, codec: bool, dedupe: bool,
          json_path: Path | None) -> None:
    """Measure events/s, latency percentiles, CPU and memory per stage.

    Uses KAFKA_BOOTSTRAP_SERVERS if set, else a fresh embedded broker for the run.
    """
    if codec:
        from tidegate.cli.codecbench import (
            measure_input_reading,
            measure_packing,
            measure_prediction_framing,
            render_framing,
            render_packing,
            render_reading,
        )

        framing, reading = measure_prediction_framing(), measure_input_reading()
        packing = measure_packing()
        click.echo(render_framing(framing))
        click.echo(render_reading(reading))
        click.echo(render_packing(packing))
        if json_path is not None:
            json_path.write_text(json.dumps({"framing": framing, "reading": reading,
                                             "packing": packing}, indent=2))
        return
    if dedupe:
        from tidegate.cli.dedupebench import measure_dedupe, render_dedupe

        reports = [measure_dedupe(many=True), measure_dedupe(many=False)]
        click.echo(render_dedupe(reports))
        if json_path is not None:
            json_path.write_text(json.dumps(reports, indent=2))
        return
    from tidegate.cli.benchmark import render, run_bench

    report = run_bench(load_settings(), events=events, half_rate_seconds=half_rate_seconds,
                       workers=workers, latency_rate=latency_rate, low_rate=low_rate, jmx=jmx)
    click.echo(render(report))
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2))
        click.echo(f"report written to {json_path}")

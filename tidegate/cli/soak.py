"""``tidegate soak``: steady load for minutes; RSS growth per stage and conservation at the end."""

from __future__ import annotations

import json
from pathlib import Path

import click

from tidegate.settings import load_settings

__all__ = ["soak"]

DEFAULT_RATE = 7500.0


@click.command()
@click.option("--minutes", type=float, default=30.0, show_default=True,
              help="How long the load lasts; growth is measured from minute 5 (from the first "
              "sample after one minute when under 6).")
@click.option("--rate", type=float, default=DEFAULT_RATE, show_default=True,
              help="Events/s of the steady load (the default stays below half the bench's "
              "maximum, ~7,500/s on 2 cores, leaving headroom for a busy machine).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the figures (every RSS sample too) as JSON here.")
def soak(minutes: float, rate: float, json_path: Path | None) -> None:
    """Drive the example generator's events through the five stages at a steady rate.

    Uses KAFKA_BOOTSTRAP_SERVERS if set, else a fresh embedded broker for the run. Samples the
    RSS of every stage every 10 s; exits non-zero when an event was lost or came out twice.
    """
    if not minutes > 0:
        raise click.BadParameter(f"must be above 0, not {minutes:g}", param_hint="--minutes")
    if not rate > 0:
        raise click.BadParameter(f"must be above 0, not {rate:g}", param_hint="--rate")
    from tidegate.cli.endurance import conserved, render, run_soak

    report = run_soak(load_settings(), minutes=minutes, rate=rate)
    click.echo(render(report))
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2))
        click.echo(f"report written to {json_path}")
    if not conserved(report):
        raise click.exceptions.Exit(1)

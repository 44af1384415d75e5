"""``tidegate broker fetch|start|stop|status|logs``: the embedded Apache Kafka broker."""

from __future__ import annotations

import json
import time
from dataclasses import asdict

import click

from tidegate.kafka.broker import (
    broker_status,
    log_file,
    secure_dir,
    start_broker,
    stop_broker,
)
from tidegate.kafka.jars import kafka_home, resolve_jars
from tidegate.settings import load_settings

__all__ = ["broker"]


@click.group()
def broker() -> None:
    """Manage the embedded single-node Kafka broker (KRaft)."""


@broker.command()
def fetch() -> None:
    """Resolve the Kafka jars with Maven into the cache (once; later runs are offline)."""
    settings = load_settings()
    began = time.monotonic()
    libs = resolve_jars(settings.cache_dir, settings.kafka_version)
    took = time.monotonic() - began
    jars = len(list(libs.glob("*.jar")))
    verb = "resolved" if took > 1.0 else "cached"
    version = settings.kafka_version
    click.echo(f"Apache Kafka {version}: {jars} jars {verb} in {libs} ({took:.1f} s)")


@broker.command()
@click.option("--secure", is_flag=True,
              help="SASL_SSL (SCRAM-SHA-512) with ACLs; CA, certificate and principals made once.")
def start(secure: bool) -> None:
    """Start the broker in the background and wait until it answers.

    With --secure, clients need TLS and a principal: admin, operator or one per stage. Their
    passwords are in <data dir>/broker/secure/credentials.json; tidegate commands connect as
    operator by themselves.
    """
    settings = load_settings()
    state = start_broker(settings, secure=secure)
    mode = " (SASL_SSL, ACLs)" if state.secure else ""
    if state.already_running:
        click.echo(f"broker already running at {state.bootstrap}{mode} (pid {state.pid})")
        return
    click.echo(
        f"broker ready at {state.bootstrap}{mode} (pid {state.pid}, Kafka {state.version}) "
        f"in {state.start_seconds:.1f} s"
    )
    if state.secure:
        click.echo(f"credentials and CA in {secure_dir(settings)}")


@broker.command()
def stop() -> None:
    """Stop the broker: SIGTERM, then SIGKILL after a timeout. Stopping twice is fine."""
    settings = load_settings()
    state = stop_broker(settings)
    click.echo("broker stopped" if state else "broker not running")


@broker.command()
@click.option("--json", "as_json", is_flag=True, help="Print the state as JSON.")
def status(as_json: bool) -> None:
    """Whether the broker runs and answers; exit 1 when it does not."""
    settings = load_settings()
    state, answers = broker_status(settings)
    if as_json:
        payload = {"running": state is not None, "answers": answers,
                   "jars": str(kafka_home(settings.cache_dir, settings.kafka_version))}
        if state is not None:
            payload.update(asdict(state))
        click.echo(json.dumps(payload))
    elif state is None:
        click.echo("broker not running")
    else:
        health = "answering" if answers else "NOT answering"
        click.echo(f"broker running at {state.bootstrap} (pid {state.pid}), {health}")
    if state is None or not answers:
        raise click.exceptions.Exit(1)


@broker.command()
@click.option("-n", "--lines", default=40, show_default=True, type=click.IntRange(min=1))
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
def logs(lines: int, follow: bool) -> None:
    """Print the end of the broker's server.log."""
    path = log_file(load_settings())
    if not path.exists():
        click.echo("no broker log yet")
        return
    with path.open(errors="replace") as handle:
        for line in handle.readlines()[-lines:]:
            click.echo(line, nl=False)
        while follow:
            line = handle.readline()
            if line:
                click.echo(line, nl=False)
            else:
                time.sleep(0.5)

"""``tidegate up`` runs the whole pipeline; ``tidegate status`` asks monitoring how it is."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import click

from tidegate.cli.partitions import PartitionStallDetector, stall_alert
from tidegate.cli.supervisor import Supervisor
from tidegate.cli.watchdog import AlertSender, HealthWatch, StallDetector
from tidegate.errors import TidegateError, TopicMismatchError
from tidegate.kafka.acls import apply_acls, pipeline_acls
from tidegate.kafka.admin import ensure_topics
from tidegate.kafka.broker import read_state, start_broker, stop_broker
from tidegate.kafka.clients import admin_config, client_config, embedded_material
from tidegate.runtime.app import input_group
from tidegate.runtime.backpressure import LagProbe
from tidegate.settings import Settings, load_settings
from tidegate.topics import CATALOG, DATA_STAGES, STAGE_ORDER, by_key
from tidegate.topics import STAGES as STAGE_TOPICS

__all__ = ["control_line", "init", "status", "up"]

STAGES = STAGE_ORDER
# A stage restarted for a stalled partition is usually alive and delivering: SIGTERM lets it
# commit and leave its group, so the partitions move at once (after SIGKILL they wait out the
# session timeout). One silent for this many health intervals gets SIGKILL: it may be stopped
# or hung, and would not act on SIGTERM before the grace ran out.
STOP_GRACE = 10.0
SILENT_INTERVALS = 3
# A stage process takes seconds to boot (more on busy cores): not a stall, however short
# TIDEGATE_STALL_SECONDS is. No longer than the default stall limit, though: a process that
# hangs before its first report is as stalled as one that hangs later.
START_GRACE = 30.0
log = logging.getLogger(__name__)


@click.command()
@click.option("--demo", is_flag=True, help="Also feed the example generator into the pipeline.")
@click.option("--rate", type=click.FloatRange(min=1), default=200.0, show_default=True,
              help="Events per second the demo generator sends.")
@click.option("--bad-rate", type=click.FloatRange(0, 1), default=0.02, show_default=True,
              help="Share of bad records the demo generator sends.")
@click.option("--duration", type=click.FloatRange(min=1), help="Stop after this many seconds.")
@click.option("--secure", is_flag=True,
              help="Start the embedded broker with SASL_SSL and ACLs (as `broker start --secure`).")
def up(demo: bool, rate: float, bad_rate: float, duration: float | None, secure: bool) -> None:
    """Broker (if needed), topics, example model (if none), all five stages, status endpoint.

    On a secure embedded broker (started with --secure here or by `broker start --secure`)
    each stage connects as its own principal, under the ACLs `init --acls` would create.
    Ctrl-C (or SIGTERM) stops the stages cleanly, then the broker if this command started it.
    """
    from tidegate.cli.logs import logging_config

    settings = load_settings()
    import logging.config

    logging.config.dictConfig(logging_config(settings))
    started_broker = False
    if not settings.kafka_bootstrap_servers:
        running = read_state(settings.broker_dir.resolve())
        secure = secure or (running is not None and running.secure)  # keep the broker's mode
        state = start_broker(settings, die_with_parent=True, secure=secure)
        started_broker = not state.already_running
        click.echo(f"broker at {state.bootstrap}"
                   + (f" (started in {state.start_seconds:.1f} s)" if started_broker else ""))
    supervisor: Supervisor | None = None
    stopping = threading.Event()
    try:
        _prepare(settings)
        supervisor = Supervisor(
            {stage: [sys.executable, "-m", "tidegate.cli.main", "stage", "run", stage]
             for stage in STAGES},
            log_dir=settings.data_dir.resolve() / "logs", child_env=_stage_env(settings),
        )
        supervisor.start()
        click.echo(f"{len(STAGES)} stages running; logs in {settings.data_dir / 'logs'}; "
                   f"status at http://{settings.status_host}:{settings.status_port}/status; "
                   "Ctrl-C stops")
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stopping.set())
        if demo:
            threading.Thread(target=_demo, args=(settings, rate, bad_rate, stopping),
                             daemon=True, name="demo").start()
        watch = _watch(settings)
        watch.start()
        alerts = AlertSender(client_config(settings),
                             by_key("alerts").name(settings.topic_prefix),
                             registry_url=settings.schema_registry_url)
        ends = time.monotonic() + duration if duration else None
        next_report = time.monotonic() + 10
        while not stopping.is_set() and (ends is None or time.monotonic() < ends):
            supervisor.poll()
            if time.monotonic() >= next_report:
                next_report += 10
                click.echo(_progress_line(settings))
            for stage in watch.stalled():
                supervisor.restart(stage, f"stalled: no health or no progress for "
                                          f"{settings.stall_seconds:.0f} s")
                watch.forget(stage)
            _restart_stalled_partitions(watch, supervisor, alerts,
                                        silent_after=SILENT_INTERVALS * settings.health_interval)
            stopping.wait(0.5)
        watch.stop()
        alerts.close()
    finally:
        stopping.set()
        if supervisor is not None:
            click.echo("stopping stages")
            supervisor.stop()
        if started_broker:
            stop_broker(settings)
            click.echo("broker stopped")


def _watch(settings: Settings) -> HealthWatch:
    """The health watch with both stall rules, probing the data stages' input partitions.

    Monitoring is not probed: it reads the health topic with its Faust app's group (one
    partition), and stopping there is the whole stage stopping, which ``StallDetector`` sees.
    """
    config = client_config(settings)
    detector = StallDetector(stall_after=settings.stall_seconds, start_grace=START_GRACE)
    detector.expect(list(STAGES), now=time.monotonic())
    partitions = PartitionStallDetector(stall_after=settings.stall_seconds)
    partitions.expect(list(DATA_STAGES))
    probes = [(stage, LagProbe(config, group=input_group(stage, settings),
                               topic=STAGE_TOPICS[stage].source.name(settings.topic_prefix)))
              for stage in DATA_STAGES]
    # a few probes per stall period: a stall is seen within a third of the period
    return HealthWatch(config, by_key("health").name(settings.topic_prefix), detector,
                       partitions=partitions, probes=probes,
                       probe_every=min(5.0, settings.stall_seconds / 3))


def _restart_stalled_partitions(watch: HealthWatch, supervisor: Supervisor,
                                alerts: AlertSender, *, silent_after: float) -> None:
    """Alert on every stalled partition and restart its stage; resolve the ones moving again."""
    for stall in watch.recovered_partitions():
        log.warning("partition stall over: %s: partition %d of %s is moving again",
                    stall.stage, stall.partition, stall.topic)
        alerts.send(stall_alert(stall, "resolved", now=time.time()))
    stalls = watch.stalled_partitions()
    for stage in sorted({stall.stage for stall in stalls}):
        if supervisor.pids()[stage] is None:  # crashed: restarting anyway; wait for the new one
            watch.forget(stage)
            continue
        mine = [stall for stall in stalls if stall.stage == stage]
        for stall in mine:
            log.error("ALERT partition stall: %s; restarting %s", stall.describe(), stage)
            if watch.alert(stall):
                alerts.send(stall_alert(stall, "firing", now=time.time()))
        alive = watch.silent_for(stage) < silent_after
        supervisor.restart(stage, "stalled partitions " + ", ".join(
            f"{stall.topic}[{stall.partition}]" for stall in mine),
            grace=STOP_GRACE if alive else None)
        watch.forget(stage)


@click.command()
@click.option("--acls", is_flag=True,
              help="Also create the least-privilege ACLs of every stage principal and operator.")
@click.option("--dry-run", is_flag=True,
              help="With --acls: print the ACLs one per line and connect to nothing.")
def init(acls: bool, dry_run: bool) -> None:
    """Create the catalog's topics and, if the registry is empty, train the example models.

    With --acls, first grant the pipeline's ACLs on the configured cluster (KAFKA_* settings
    of a principal allowed to alter ACLs); on the secure embedded broker they are always
    granted, as its admin.
    """
    settings = load_settings()
    if dry_run and not acls:
        raise click.UsageError("--dry-run needs --acls")
    if dry_run:
        for grant in pipeline_acls(settings):
            click.echo(grant.line())
        return
    if acls and embedded_material(settings) is None:
        _grant(settings)
    _prepare(settings)


def _grant(settings: Settings) -> None:
    grants = pipeline_acls(settings)
    count = apply_acls(admin_config(settings), grants)
    principals = len({grant.principal for grant in grants})
    click.echo(f"acls: {count} granted to {principals} principals")


def _stage_env(settings: Settings) -> dict[str, dict[str, str]]:
    """Each stage's own principal, on the secure embedded broker; else nothing."""
    material = embedded_material(settings)
    if material is None or settings.security:  # credentials the user set win
        return {}
    return {stage: material.environment(stage) for stage in STAGES}


def _prepare(settings: Settings) -> None:
    if embedded_material(settings) is not None:  # our broker: the stages need their ACLs
        _grant(settings)
    reports = ensure_topics(client_config(settings), CATALOG, prefix=settings.topic_prefix,
                            replication=settings.replication_factor)
    if bad := [r for r in reports if r.action == "mismatch"]:
        raise TopicMismatchError(f"{bad[0].name}: {'; '.join(bad[0].problems)}")
    created = sum(r.action == "created" for r in reports)
    click.echo(f"topics: {created} created, {len(reports) - created} already there")
    _ensure_model(settings)


def _ensure_model(settings: Settings) -> None:
    from tidegate.models.training import ensure_example_models

    for version in ensure_example_models(settings.registry_dir):
        click.echo(f"trained the example model {version.name}:{version.version} "
                   f"roc_auc={version.metrics['roc_auc']:.4f}")


def _demo(settings: Settings, rate: float, bad_rate: float, stopping: threading.Event) -> None:
    from confluent_kafka import Producer

    from tidegate.example.stream import example_messages

    producer = Producer(client_config(settings, **{"linger.ms": 10, "log_level": 3}))
    topic = settings.topic_prefix + "events"
    began, sent = time.monotonic(), 0
    for message in example_messages(10**12, seed=int(time.time()), bad_rate=bad_rate,
                                    events_per_second=rate):
        if stopping.is_set():
            break
        ahead = sent / rate - (time.monotonic() - began)
        if ahead > 0:
            stopping.wait(ahead)
        try:
            producer.produce(topic, key=message.key, value=message.value)
        except BufferError:
            producer.poll(0.5)
            continue
        producer.poll(0)
        sent += 1
    producer.flush(10)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the raw status JSON.")
def status(as_json: bool) -> None:
    """Per-stage status from the monitoring stage."""
    board = _board(load_settings())
    if as_json:
        click.echo(json.dumps(board))
        return
    click.echo(f"{'stage':11} {'state':8} {'in':>9} {'out':>9} {'dead':>7} {'lag':>7} "
               f"{'p99 ms':>8} mode")
    for stage, info in board["stages"].items():
        click.echo(f"{stage:11} {info['state']:8} {info['records_in']:>9} "
                   f"{info['records_out']:>9} {info['dead_lettered']:>7} {info['lag']:>7} "
                   f"{info['latency_p99_ms']:>8.1f} {info['mode']}")
    for stage, info in board["stages"].items():
        if info["breakers"]:
            states = ", ".join(f"{name} {state}" for name, state in info["breakers"].items())
            click.echo(f"breakers of {stage}: {states}")
        if info["paused"]:
            click.echo(f"{stage} is paused: {info.get('pause_reason') or 'no reason given'}")
    click.echo(_summary(board))
    if "control" in board:
        click.echo(control_line(board["control"]))
    crisis = board.get("crisis")
    if crisis:
        levels = ", ".join(f"{stage} {level}" for stage, level in crisis["stages"].items()
                           if level != "NORMAL")
        click.echo(f"crisis level: {crisis['system']}" + (f" ({levels})" if levels else ""))
    for alert in board.get("alerts", []):
        click.echo(f"alert {alert['severity']}: {alert['message']}")


def _board(settings: Settings) -> dict[str, Any]:
    url = f"http://{settings.status_host}:{settings.status_port}/status"
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            board: dict[str, Any] = json.loads(reply.read())
    except (OSError, urllib.error.URLError, ValueError) as exc:
        raise TidegateError(f"monitoring does not answer at {url}: {exc}") from exc
    return board


def control_line(control: dict[str, Any]) -> str:
    """How the stages authenticate control commands, as monitoring reports it."""
    if not control.get("authenticated"):
        return ("control commands: unauthenticated (TIDEGATE_CONTROL_KEY is not set: anyone "
                "who can write the control topic steers the pipeline)")
    refused = ", ".join(f"{reason} {n}" for reason, n in sorted(control["refused"].items()))
    return (f"control commands: signed, HMAC-SHA256 with key {', '.join(control['key_ids'])}; "
            f"refused: {refused or 'none'}")


def _summary(board: dict[str, Any]) -> str:
    predictions = board["predictions"]
    return (f"predictions: {predictions['total']} ({predictions['flagged']} flagged) "
            f"by path {predictions['by_path']}")


def _progress_line(settings: Settings) -> str:
    """One line every few seconds while ``up`` runs: predictions, dead letters, lag, modes."""
    try:
        board = _board(settings)
    except TidegateError as exc:
        return f"status: {exc}"
    stages = board["stages"]
    dead = sum(info["dead_lettered"] for info in stages.values())
    lag = sum(info["lag"] for info in stages.values())
    modes = ", ".join(f"{stage} {info['mode']}" for stage, info in stages.items()
                      if info["mode"] not in ("normal", "-"))
    level = board.get("crisis", {}).get("system")
    return f"{_summary(board)}; dead letters {dead}; lag {lag}" + (
        f"; modes: {modes}" if modes else "") + (
        f"; crisis level {level}" if level and level != "NORMAL" else "")

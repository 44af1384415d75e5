"""``tidegate model train|ls|promote|rollback|seal|canary``: versions in the file-based registry.

Example::

    tidegate model train --candidate --seed 8           # new versions wait as candidates
    tidegate model promote fraud-primary v2 --reason "retrained"    # shadow check first
    tidegate model rollback fraud-primary --reason "alert rate doubled"
    tidegate model canary fraud-primary v2 --share 0.1 --reason "retrained"   # live, then promoted
    tidegate model seal fraud-primary v1 --reason "metadata from before hashes; file checked"
"""

from __future__ import annotations

import time

import click

from tidegate.models.lifecycle import (
    SHADOW_EVENTS,
    PromotionRefusedError,
    Sample,
    Tolerances,
    end_canary,
    promote,
    rollback,
    start_canary,
    train_candidates,
)
from tidegate.models.registry import ModelRegistry, ModelVersion
from tidegate.settings import load_settings

__all__ = ["model"]

_REASON = click.option("--reason", required=True, help="Why: kept in the registry and audit.")
_DEFAULTS = Tolerances()


@click.group()
def model() -> None:
    """Train, list, promote, roll back, seal and canary model versions."""


def _short_hash(version: ModelVersion) -> str:
    """The first 12 hex digits of the artifact's SHA-256; ``unsealed`` when none is recorded."""
    return f"sha256:{version.sha256[:12]}" if version.sha256 else "unsealed"


def _describe(version: ModelVersion) -> str:
    metrics = version.metrics
    return (f"{version.name}:{version.version} {version.stage} "
            f"roc_auc={metrics.get('roc_auc', float('nan')):.4f} "
            f"average_precision={metrics.get('average_precision', float('nan')):.4f} "
            f"threshold={version.threshold:.3f}")


@model.command()
@click.option("--events", type=click.IntRange(min=5000), default=60000, show_default=True,
              help="Generated events to train on.")
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--candidate", is_flag=True,
              help="Register the new versions as candidates; production stays as it is.")
@click.option("--bad", is_flag=True,
              help="Drill: register an inverted copy of the production primary as a candidate "
                   "(its shadow check fails; forced, it shows a rollback). Trains nothing.")
def train(events: int, seed: int, candidate: bool, bad: bool) -> None:
    """Train the example primary (gradient boosting) and fallback (logistic regression)."""
    settings = load_settings()
    began = time.monotonic()
    registry = ModelRegistry(settings.registry_dir)
    if bad:
        from tidegate.models.faults import register_bad_version
        from tidegate.models.training import PRIMARY

        click.echo(_describe(register_bad_version(registry, PRIMARY)) + " (inverted: a drill)")
        return
    from tidegate.models.training import train_example

    trained = (train_candidates(registry, events=events, seed=seed) if candidate
               else train_example(registry, events=events, seed=seed))
    for version in trained:
        click.echo(_describe(version))
    click.echo(f"trained in {time.monotonic() - began:.1f} s into {settings.registry_dir}")


@model.command(name="ls")
def ls() -> None:
    """List every model version with its stage, metrics and artifact hash (short)."""
    registry = ModelRegistry(load_settings().registry_dir)
    for name in registry.names():
        for version in registry.list(name):
            auc = version.metrics.get("roc_auc", float("nan"))
            click.echo(f"{name}:{version.version:6} {version.stage:10} roc_auc={auc:.4f} "
                       f"{_short_hash(version)}")


@model.command(name="promote")
@click.argument("name")
@click.argument("version")
@_REASON
@click.option("--force", is_flag=True, help="Skip the shadow check (an emergency).")
@click.option("--sample-events", type=click.IntRange(min=2000), default=SHADOW_EVENTS,
              show_default=True, help="Generated, labelled events the shadow check scores.")
@click.option("--max-auc-drop", type=click.FloatRange(0, 1), default=_DEFAULTS.max_auc_drop,
              show_default=True, help="How far the candidate's ROC AUC may be below production.")
@click.option("--max-accuracy-drop", type=click.FloatRange(0, 1),
              default=_DEFAULTS.max_accuracy_drop, show_default=True,
              help="How far its accuracy at its own threshold may be below production.")
@click.option("--min-agreement", type=click.FloatRange(0, 1), default=_DEFAULTS.min_agreement,
              show_default=True, help="Share of events both models must decide alike.")
@click.option("--max-score-psi", type=click.FloatRange(min=0), default=_DEFAULTS.max_score_psi,
              show_default=True, help="How far the score distribution may move (PSI).")
def promote_command(name: str, version: str, reason: str, force: bool, sample_events: int,
                    max_auc_drop: float, max_accuracy_drop: float, min_agreement: float,
                    max_score_psi: float) -> None:
    """Promote VERSION of NAME after a shadow check.

    The candidate scores a generated, labelled sample beside the production version and must
    stay within the tolerances; running inference stages switch on the promote command."""
    tolerances = Tolerances(max_auc_drop=max_auc_drop, max_accuracy_drop=max_accuracy_drop,
                            min_agreement=min_agreement, max_score_psi=max_score_psi)
    sample = None if force else Sample.example(events=sample_events)
    try:
        done = promote(load_settings(), name, version, reason=reason, force=force,
                       tolerances=tolerances, sample=sample)
    except PromotionRefusedError as exc:
        click.echo("\n".join(exc.report.lines()))
        raise
    if done.report is not None:
        click.echo("\n".join(done.report.lines()))
    click.echo(f"{name}:{done.version.version} is production" + (
        f"; inference switches (command {done.command['id']})" if done.command
        else "; inference serves it from its next start"))


@model.command(name="rollback")
@click.argument("name")
@_REASON
def rollback_command(name: str, reason: str) -> None:
    """Return NAME to its last good version and switch inference to it."""
    done = rollback(load_settings(), name, reason=reason)
    click.echo(f"{name}: {done.previous} -> {done.version.version} is production" + (
        f"; inference switches (command {done.command['id']})" if done.command
        else "; inference serves it from its next start"))


@model.command(name="seal")
@click.argument("name")
@click.argument("version")
@_REASON
def seal_command(name: str, version: str, reason: str) -> None:
    """Record the artifact hash of VERSION of NAME when its metadata has none.

    Inference refuses an unsealed artifact; seal it only after checking the file is the one
    trained. A version that has a hash cannot be sealed again."""
    sealed = ModelRegistry(load_settings().registry_dir).seal(name, version, reason=reason)
    click.echo(f"{name}:{sealed.version} sealed ({_short_hash(sealed)})")


@model.command(name="canary")
@click.argument("name")
@click.argument("version", required=False)
@click.option("--share", type=click.FloatRange(0, 0.5, min_open=True), default=0.1,
              show_default=True, help="Share of the accounts the candidate serves.")
@click.option("--stop", is_flag=True, help="End the running canary instead.")
@_REASON
def canary_command(name: str, version: str | None, share: float, stop: bool,
                   reason: str) -> None:
    """Serve VERSION of NAME to a stable share of the accounts beside production.

    Monitoring compares its live accuracy (as labels arrive) and its score distribution with
    production's, then promotes it or ends the canary; every prediction names its version."""
    settings = load_settings()
    if stop:
        record = end_canary(settings, reason=reason)
        click.echo(f"canary ended (command {record['id']})")
        return
    if version is None:
        raise click.UsageError("name the candidate VERSION, or pass --stop")
    record = start_canary(settings, name, version, share=share, reason=reason)
    click.echo(f"{name}:{version} serves {share:.0%} of the accounts (command {record['id']}); "
               "monitoring promotes it or ends the canary")

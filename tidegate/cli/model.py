"""``tidegate model train|ls``: the example models in the file-based registry."""

from __future__ import annotations

import time

import click

from tidegate.registry import ModelRegistry
from tidegate.settings import load_settings

__all__ = ["model"]


@click.group()
def model() -> None:
    """Train and list model versions."""


@model.command()
@click.option("--events", type=click.IntRange(min=5000), default=60000, show_default=True,
              help="Generated events to train on.")
@click.option("--seed", type=int, default=7, show_default=True)
def train(events: int, seed: int) -> None:
    """Train the example primary (gradient boosting) and fallback (logistic regression)."""
    from tidegate.training import train_example

    settings = load_settings()
    began = time.monotonic()
    registry = ModelRegistry(settings.registry_dir)
    for version in train_example(registry, events=events, seed=seed):
        metrics = version.metrics
        click.echo(f"{version.name}:{version.version} {version.stage} "
                   f"roc_auc={metrics['roc_auc']:.4f} "
                   f"average_precision={metrics['average_precision']:.4f} "
                   f"threshold={version.threshold:.3f}")
    click.echo(f"trained in {time.monotonic() - began:.1f} s into {settings.registry_dir}")


@model.command(name="ls")
def ls() -> None:
    """List every model version with its stage and metrics."""
    registry = ModelRegistry(load_settings().registry_dir)
    for name in registry.names():
        for version in registry.list(name):
            auc = version.metrics.get("roc_auc", float("nan"))
            click.echo(f"{name}:{version.version:6} {version.stage:10} roc_auc={auc:.4f}")

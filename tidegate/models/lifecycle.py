"""Model lifecycle: shadow-check a candidate beside production, promote it, roll back.

:func:`~tidegate.models.shadow.shadow_check` compares a candidate with production first.
:func:`promote` and :func:`rollback` change the registry, then issue the command that pins the
version in running inference stages (a restarted stage recovers it from the compacted control
topic). :func:`start_canary` serves a candidate to a share of the accounts first (monitoring
promotes it or ends the canary). :func:`issue_command` is how the CLI and the monitoring stage
send any command.

Example::

    train_candidates(registry)                      # fraud-primary v2 waits as a candidate
    print("\n".join(shadow_check(registry, "fraud-primary", "v2").lines()))
    promote(settings, "fraud-primary", "v2", reason="retrained", issuer="alice")
    rollback(settings, "fraud-primary", reason="alert rate doubled", issuer="alice")
"""

from __future__ import annotations

import getpass
import json
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, Producer

from tidegate.codec import Codec
from tidegate.control import command, command_key
from tidegate.errors import (
    BrokerError,
    ConfigError,
    TidegateError,
)
from tidegate.kafka.clients import client_config
from tidegate.kafka.refusal import Refusals, authorization_error, flush_or_raise
from tidegate.models.registry import ModelRegistry, ModelVersion
from tidegate.models.shadow import (
    SHADOW_EVENTS,
    Sample,
    ShadowReport,
    Side,
    Tolerances,
    shadow_check,
)
from tidegate.settings import Settings
from tidegate.signing import sign
from tidegate.topics import CATALOG, by_key

__all__ = [
    "SHADOW_EVENTS", "Promotion", "PromotionRefusedError", "Rollback", "Sample", "ShadowReport",
    "Side", "Tolerances", "end_canary", "issue_command", "promote", "rollback", "shadow_check",
    "start_canary", "train_candidates",
]

Send = Callable[[dict[str, Any]], None]
DEFAULT_TOLERANCES = Tolerances()


class PromotionRefusedError(TidegateError):
    """The candidate failed its shadow check; ``report`` says why (``--force`` overrides)."""

    code = "PROMOTION_REFUSED"

    def __init__(self, report: ShadowReport) -> None:
        super().__init__(f"{report.name} {report.candidate.version} failed the shadow check "
                         f"({'; '.join(report.failures)}); --force promotes anyway")
        self.report = report


def issue_command(settings: Settings, record: Mapping[str, Any], *,
                  audit: Mapping[str, Any] | None = None, timeout: float = 15.0) -> None:
    """Produce a :func:`tidegate.control.command` record to the compacted control topic and a
    JSON copy (plus ``audit``) to the audit topic; BrokerError unless both are acknowledged.
    With ``TIDEGATE_CONTROL_KEY`` set, the command is signed with its first key.

    >>> issue_command(settings, command("inference", "restore", reason="fixed", issuer="bob"))
    """
    record = sign(record, settings.control_keys)
    codec = Codec(registry_url=settings.schema_registry_url)
    topic = by_key("control").name(settings.topic_prefix)
    config = client_config(settings, acks="all")
    refusals = Refusals(config)
    producer = Producer({**config, **refusals.hooks()})
    failures: list[KafkaError] = []

    def delivered(err: Any, _message: Any) -> None:
        failures.extend([err] if err else [])

    producer.produce(topic, key=command_key(record), on_delivery=delivered,
                     value=codec.encode("tidegate.ControlCommand", record, topic=topic))
    spec = next((spec for spec in CATALOG if spec.key == "audit"), None)
    if spec is not None:  # the control topic is compacted; the audit topic keeps every command
        body = {"kind": "control", **record, **(audit or {})}
        producer.produce(spec.name(settings.topic_prefix), key=b"control",
                         value=json.dumps(body).encode(), on_delivery=delivered)
    left = flush_or_raise(producer, refusals, timeout)
    if failures:
        refused = authorization_error(failures[0], config, f"write {topic} (or the audit topic)")
        raise refused or BrokerError(
            f"the {record['action']} command was not delivered: {failures[0].str()}")
    if left:
        raise BrokerError(f"the {record['action']} command was not delivered: "
                          f"no acknowledgement within {timeout:g} s")


@dataclass(frozen=True)
class Promotion:
    """What :func:`promote` did: the live version, its check, the command (None: not served)."""

    version: ModelVersion
    report: ShadowReport | None
    command: dict[str, Any] | None


@dataclass(frozen=True)
class Rollback:
    """What :func:`rollback` did: the version now live, the one it replaced, the command."""

    version: ModelVersion
    previous: str
    command: dict[str, Any] | None


def _served(name: str) -> bool:
    """Whether inference serves ``name`` as its primary: a command pins that model's version."""
    from tidegate.models.registry import PRIMARY

    return name == PRIMARY


def _send(settings: Settings, send: Send | None, record: dict[str, Any],
          audit: Mapping[str, Any], live: ModelVersion) -> None:
    try:
        (send or (lambda rec: issue_command(settings, rec, audit=audit)))(record)
    except BrokerError as exc:
        raise BrokerError(f"{exc}; the registry already has {live.name} {live.version} in "
                          f"production: `tidegate model promote {live.name} {live.version} "
                          f"--force` sends the command again") from exc


def promote(settings: Settings, name: str, version: str, *, reason: str,
            issuer: str | None = None, force: bool = False,
            tolerances: Tolerances = DEFAULT_TOLERANCES, sample: Sample | None = None,
            registry: ModelRegistry | None = None, send: Send | None = None) -> Promotion:
    """Shadow check (skipped with ``force``), make ``version`` production, then tell inference.

    PromotionRefusedError (registry untouched) when the check fails. Only the model inference
    serves as primary gets a ``promote`` command; others take effect when inference restarts.

    >>> promote(settings, "fraud-primary", "v2", reason="retrained", issuer="alice").command
    {'action': 'promote', 'parameters': {'version': 'v2', 'model': 'fraud-primary'}, ...}
    """
    registry = registry or ModelRegistry(settings.registry_dir)
    issuer = issuer or getpass.getuser()
    record = command("inference", "promote", parameters={"version": version, "model": name},
                     reason=reason, issuer=issuer)  # a bad reason fails before any change
    registry.get(name, version)
    report = None if force else shadow_check(registry, name, version, sample,
                                             tolerances=tolerances)
    if report is not None and not report.passed:
        raise PromotionRefusedError(report)
    live = registry.promote(name, version, reason=f"{issuer}: {reason}")
    if not _served(name):
        return Promotion(live, report, None)
    audit = {"model": name, "forced": force, "shadow": report.as_dict() if report else None}
    _send(settings, send, record, audit, live)
    return Promotion(live, report, record)


def rollback(settings: Settings, name: str, *, reason: str, issuer: str | None = None,
             registry: ModelRegistry | None = None, send: Send | None = None) -> Rollback:
    """Return ``name`` to its last good version in the registry, then pin it in inference.

    >>> rollback(settings, "fraud-primary", reason="alert rate doubled").version.version
    'v1'
    """
    registry = registry or ModelRegistry(settings.registry_dir)
    issuer = issuer or getpass.getuser()
    if not reason.strip():
        raise ConfigError("a rollback needs a reason, for the audit trail")
    previous = registry.require_production(name).version
    live = registry.rollback(name, reason=f"{issuer}: {reason}")
    if not _served(name):
        return Rollback(live, previous, None)
    record = command("inference", "rollback", reason=reason, issuer=issuer,
                     parameters={"version": live.version, "model": name})
    _send(settings, send, record, {"model": name, "from": previous}, live)
    return Rollback(live, previous, record)


def start_canary(settings: Settings, name: str, version: str, *, share: float, reason: str,
                 issuer: str | None = None, registry: ModelRegistry | None = None,
                 send: Send | None = None) -> dict[str, Any]:
    """Serve ``version`` of the primary model to a stable ``share`` of the accounts; monitoring
    compares it live with production and promotes it or ends the canary. Returns the command.

    >>> start_canary(settings, "fraud-primary", "v2", share=0.1, reason="retrained")["action"]
    'canary'
    """
    registry = registry or ModelRegistry(settings.registry_dir)
    record = command("inference", "canary", parameters={
        "version": version, "model": name, "share": f"{share:g}"},
        reason=reason, issuer=issuer or getpass.getuser())  # bad share or reason: one line
    if not _served(name):
        raise ConfigError(f"{name} is not the model inference serves as its primary; a canary "
                          "runs for that model only")
    candidate = registry.get(name, version)
    if candidate.version == registry.require_production(name).version:
        raise ConfigError(f"{name} {version} is production already; a canary needs another "
                          "version")
    if not candidate.sha256:
        raise ConfigError(f"{name} {version} has no recorded artifact hash, so inference would "
                          f"refuse it: `tidegate model seal {name} {version}` first")
    (send or (lambda rec: issue_command(settings, rec, audit={"model": name})))(record)
    return record


def end_canary(settings: Settings, *, reason: str, issuer: str | None = None,
               send: Send | None = None) -> dict[str, Any]:
    """End the running canary: every account is served by production again."""
    record = command("inference", "end_canary", reason=reason,
                     issuer=issuer or getpass.getuser())
    (send or (lambda rec: issue_command(settings, rec)))(record)
    return record


def train_candidates(registry: ModelRegistry, *, events: int = 60_000,
                     seed: int = 7) -> tuple[ModelVersion, ...]:
    """Retrain the example models and register them as candidates: production is unchanged.

    >>> [mv.stage for mv in train_candidates(registry, events=20_000, seed=8)]
    ['candidate', 'candidate']
    """
    from tidegate.models.training import train_example

    registered = []
    with tempfile.TemporaryDirectory(prefix="tidegate-train-") as scratch:
        trained = ModelRegistry(Path(scratch))
        for mv in train_example(trained, events=events, seed=seed):
            current = registry.production(mv.name) if registry.root.is_dir() else None
            registered.append(registry.register(
                mv.name, trained.load(mv.name, mv.version), metrics=mv.metrics,
                feature_names=mv.feature_names, threshold=mv.threshold, reference=mv.reference,
                parent=current.version if current else None, params=mv.params))
    return tuple(registered)

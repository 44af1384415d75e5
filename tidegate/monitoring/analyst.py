"""The monitoring stage's judgement: health, predictions and labels in; alerts, crisis levels and
control commands out. Pure: no Kafka, and the time is always passed in (epoch seconds).

What it acts on (docs/runbooks.md says what an operator does about each):

- inference CRITICAL for a reason the fallback model avoids (the primary model's breaker open, or
  a critical error rate or error-rate anomaly) -> ``degrade inference`` to the fallback; once
  inference has been below CRITICAL for ``restore_after`` seconds -> ``restore`` (a warning,
  such as drift, that may last for days is no reason to stay degraded). Monitoring only restores
  what it degraded itself, and lets go when an operator changes the mode in between.
- the production version's accuracy over at least ``min_labels`` labelled events below its
  training baseline, or below the previous version's live accuracy, by more than
  ``max_accuracy_drop`` -> ``rollback`` to the previous version, once per version.
- system EMERGENCY -> ``pause ingest``; only an operator resumes.
- drift -> a warning alert, no command.

Each command is issued once per condition, with ``issuer="monitoring"`` and a reason naming the
alert. While inference runs degraded, the breakers of the links it skips report stale states and
are ignored, so a restore is also the probe that finds out whether the primary recovered.

Example::

    analyst = Analyst()
    analyst.set_reference("fraud-primary:v3", mv.reference, {"fraud-primary:v3": 0.97},
                          previous_version="fraud-primary:v2")
    analyst.on_health(event, now=time.time())
    result = analyst.assess(now=time.time())    # publish result.alerts, send result.commands
"""

from __future__ import annotations

import json
import logging
from collections import Counter, OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from tidegate.control import DEGRADE_TARGETS, command
from tidegate.models.registry import PRIMARY
from tidegate.monitoring.accuracy import LabelJoin, accuracy_finding
from tidegate.monitoring.alerting import Alert, AlertBook, Finding, Level
from tidegate.monitoring.anomaly import StageWatch, WatchConfig
from tidegate.monitoring.canary import CANARY_BREAKER, CanaryJudge
from tidegate.monitoring.drift import DriftMonitor, drift_finding
from tidegate.topics import DATA_STAGES

__all__ = ["ISSUER", "Analyst", "AnalystConfig", "Assessment"]

ISSUER = "monitoring"
INFERENCE = "inference"
PRIMARY_BREAKER = "model:primary"
_SKIPPED = {"fallback": ("model:primary",), "static": ("model:primary", "model:fallback")}
_LOAD_KINDS = frozenset({"latency", "lag_trend"})  # alerts that say "busy", not "broken"
log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class AnalystConfig:
    """Thresholds and hold times; every default suits the embedded run."""

    stages: tuple[str, ...] = DATA_STAGES
    watch: WatchConfig = field(default_factory=WatchConfig)
    latency_objectives_ms: Mapping[str, float] = field(
        default_factory=lambda: dict.fromkeys(DATA_STAGES,
                                              5000.0))  # fmt: skip
    stale_after: float = 30.0  # a stage that reported before and is silent this long is down
    resolve_after: float = 30.0  # a condition clear this long resolves its alert
    restore_after: float = 120.0  # inference below CRITICAL this long after monitoring degraded
    breaker_degrade_after: float = 60.0  # the primary's breaker open this long: degrade
    command_grace: float = 30.0  # time a stage gets to show a command in its mode
    degrade_to: str = "fallback"
    drift_window_events: int = 5000
    drift_max_age: float | None = 3600.0
    drift_min_events: int = 1000
    psi_threshold: float = 0.2
    psi_severe: float = 0.25
    ks_threshold: float = 0.1
    accuracy_metric: Literal["accuracy", "precision", "recall", "brier", "ece"] = "accuracy"
    accuracy_window: int = 2000
    min_labels: int = 500
    max_accuracy_drop: float = 0.05  # absolute, in units of accuracy_metric
    max_predictions: int = 100_000
    max_pending_labels: int = 20_000
    max_actions: int = 100
    canary_min_scores: int = 500  # scores of each side before the canary's scores are judged

    def __post_init__(self) -> None:
        if not 1 <= self.min_labels <= self.accuracy_window:
            raise ValueError("need 1 <= min_labels <= accuracy_window")
        if self.degrade_to not in DEGRADE_TARGETS[INFERENCE]:
            raise ValueError(f"degrade_to is one of {', '.join(DEGRADE_TARGETS[INFERENCE])}")


@dataclass(frozen=True)
class Assessment:
    """What to publish now: alert records, crisis levels, control commands."""

    alerts: list[Alert]
    levels: dict[str, Level]
    commands: list[dict[str, Any]]


@dataclass
class _Reference:
    version: str
    previous: str | None
    baselines: dict[str, float]
    drift: DriftMonitor


class Analyst:
    """Alerts, levels and commands from everything the monitoring stage reads."""

    def __init__(self, config: AnalystConfig | None = None) -> None:
        self.config = cfg = config or AnalystConfig()
        self.book = AlertBook(resolve_after=cfg.resolve_after)
        self.join = LabelJoin(window=cfg.accuracy_window, max_predictions=cfg.max_predictions,
                              max_pending_labels=cfg.max_pending_labels)  # fmt: skip
        self.watches = {stage: StageWatch(stage, replace(
            cfg.watch, latency_objective_ms=cfg.latency_objectives_ms.get(stage),
            error_anomaly_severity="critical" if stage == INFERENCE
            else cfg.watch.error_anomaly_severity))
            for stage in cfg.stages}  # fmt: skip
        self._last_seen: dict[str, float] = {}
        self._instances: dict[str, dict[str, tuple[float, Mapping[str, Any]]]] = {}
        self._ref: _Reference | None = None
        self._degraded: tuple[str, float, str] | None = None  # our degrade: (id, when, to)
        self._episodes: set[str] = set()  # conditions already acted on: "degrade", "pause"
        self._rolled_back: OrderedDict[str, None] = OrderedDict()
        self._calm_since: float | None = None  # inference below CRITICAL since
        self.actions: deque[dict[str, Any]] = deque(maxlen=cfg.max_actions)
        self.counts: Counter[str] = Counter()
        self.canary = CanaryJudge(metric=cfg.accuracy_metric, min_labels=cfg.min_labels,
                                  max_drop=cfg.max_accuracy_drop, psi_threshold=cfg.psi_severe,
                                  min_scores=cfg.canary_min_scores)

    def set_reference(self, version: str, reference: Mapping[str, Mapping[str, Any]],
                      accuracy_baselines: Mapping[str, float], *,
                      previous_version: str | None = None) -> None:  # fmt: skip
        """The production model: ``version`` as predictions name it (``fraud-primary:v3``), its
        reference distributions, the baseline ``accuracy_metric`` per version, and the version a
        rollback returns to. A new version starts a new drift window."""
        cfg, old = self.config, self._ref
        drift = old.drift if old is not None and old.version == version else DriftMonitor(
            reference, window_events=cfg.drift_window_events, max_age=cfg.drift_max_age,
            min_events=cfg.drift_min_events, psi_threshold=cfg.psi_threshold,
            psi_severe=cfg.psi_severe, ks_threshold=cfg.ks_threshold)  # fmt: skip
        self._ref = _Reference(version, previous_version,
                               {k: float(v) for k, v in accuracy_baselines.items()}, drift)

    def on_health(self, event: Mapping[str, Any], now: float) -> None:
        """One health event; stages outside ``config.stages`` (monitoring itself) are ignored."""
        stage = str(event.get("stage"))
        if stage not in self.watches:
            return
        self._last_seen[stage] = now
        self._instances.setdefault(stage, {})[str(event.get("instance"))] = (now, event)
        self.watches[stage].observe(event, now)
        extra = event.get("extra") or {}
        if stage == INFERENCE:
            self.canary.on_health(event)
            if "drift" in extra:
                self._on_drift(extra, now)

    def _on_drift(self, extra: Mapping[str, str], now: float) -> None:
        if self._ref is None or extra.get("drift_version") != self._ref.version:
            self.counts["drift_other_version"] += 1  # counts binned against other cuts
            return
        try:
            self._ref.drift.add(json.loads(extra["drift"]), now)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            self.counts["drift_unreadable"] += 1
            log.debug("unreadable drift counts: %s", exc)

    def on_prediction(self, record: Mapping[str, Any]) -> None:
        """One tidegate.Prediction record, for the label join."""
        self.join.on_prediction(record)

    def on_label(self, record: Mapping[str, Any]) -> None:
        """One tidegate.Label record."""
        self.join.on_label(record)

    def on_command(self, record: Mapping[str, Any]) -> None:
        """A control command seen on the control topic: an operator's change of the inference
        mode after ours makes it theirs, and monitoring will not undo it. A canary starts or
        ends."""
        self.canary.on_command(record)
        if (self._degraded is not None and record.get("issuer") != ISSUER
                and record.get("target") in (INFERENCE, "system")
                and record.get("action") in ("degrade", "restore")
                and int(record.get("time") or 0) >= int(self._degraded[1] * 1000)):  # fmt: skip
            self._degraded = None

    def assess(self, now: float) -> Assessment:
        """Judge everything known at ``now``: alerts to publish, levels, commands to send."""
        for instances in self._instances.values():
            for name in [n for n, (t, _) in instances.items() if now - t > self.config.stale_after]:
                del instances[name]
        findings = [f for watch in self.watches.values() for f in watch.findings(now)]
        findings += self._breakers() + self._liveness(now) + self._drift(now)
        accuracy = self._accuracy()
        alerts = self.book.settle([*findings, *([accuracy] if accuracy else [])], now)
        levels = self.book.levels(self.config.stages)
        commands = self._decide(levels, accuracy, now)
        return Assessment(alerts, levels, commands)

    def _modes(self, stage: str) -> list[set[str]]:
        return [set(str(e.get("mode", "")).split(","))
                for _, e in self._instances.get(stage, {}).values()]  # fmt: skip

    def _breakers(self) -> list[Finding]:
        found: dict[tuple[str, str], str] = {}
        for stage, instances in self._instances.items():
            for _, event in instances.values():
                mode = set(str(event.get("mode", "")).split(","))
                skipped = {name for part in mode for name in _SKIPPED.get(part, ())}
                for name, state in (event.get("breakers") or {}).items():
                    if state in ("open", "half_open") and name not in skipped:
                        found.setdefault((stage, name), state)
        out = []
        for (stage, name), state in sorted(found.items()):
            # a failing candidate costs nothing (production answers its share): the canary
            # judge ends it, and it is only a warning
            critical = name == "dead-letters" or (stage == INFERENCE and name.startswith("model:")
                                                  and name != CANARY_BREAKER)
            out.append(Finding(f"{stage}/breaker/{name}", "critical" if critical else "warning",
                               stage, "breaker", f"{stage}: breaker {name} is {state}",
                               {"breaker": name, "state": state}))  # fmt: skip
        return out

    def _liveness(self, now: float) -> list[Finding]:
        # Only a stage that reported before: at start-up silence is not an outage.
        return [Finding(f"{stage}/liveness", "critical", stage, "liveness",
                        f"{stage}: no health event for {now - seen:.0f} s",
                        {"silent_seconds": f"{now - seen:.0f}",
                         "stale_after": f"{self.config.stale_after:g}"})
                for stage, seen in self._last_seen.items()
                if now - seen > self.config.stale_after]  # fmt: skip

    def _drift(self, now: float) -> list[Finding]:
        ref = self._ref
        found = None if ref is None else drift_finding(ref.drift.report(now), ref.version)
        return [] if found is None else [found]

    def _accuracy(self) -> Finding | None:
        ref, cfg = self._ref, self.config
        return None if ref is None else accuracy_finding(
            self.join, ref.version, previous=ref.previous, baselines=ref.baselines,
            metric=cfg.accuracy_metric, min_labels=cfg.min_labels,
            max_drop=cfg.max_accuracy_drop)  # fmt: skip

    def _decide(self, levels: Mapping[str, Level], accuracy: Finding | None,
                now: float) -> list[dict[str, Any]]:
        cfg, out = self.config, []
        calm = levels.get(INFERENCE, "NORMAL") in ("NORMAL", "WARNING")
        self._calm_since = (now if self._calm_since is None else self._calm_since) \
            if calm else None
        modes = self._modes(INFERENCE)
        if (self._degraded is not None and modes and now - self._degraded[1] >= cfg.command_grace
                and not any(self._degraded[2] in mode for mode in modes)):
            self._degraded = None  # someone restored or changed it: theirs now, not ours
        # An open primary breaker already routes to the fallback and probes the model; only when
        # it stays open for breaker_degrade_after does monitoring stop the probing by degrading.
        triggers = [a for a in self.book.active() if a.stage == INFERENCE and (
            (a.kind == "breaker" and a.details.get("breaker") == PRIMARY_BREAKER
             and now - a.since >= cfg.breaker_degrade_after)
            or (a.kind in ("error_rate", "error_rate_anomaly") and a.severity == "critical"))]
        degraded = any(mode & set(DEGRADE_TARGETS[INFERENCE]) for mode in modes)
        if triggers and "degrade" not in self._episodes:
            self._episodes.add("degrade")
            if self._degraded is None and not degraded:  # never override an operator's mode
                record = self._issue(INFERENCE, "degrade", {"to": cfg.degrade_to},
                                     triggers[0].key, triggers[0].message, now)  # fmt: skip
                self._degraded = (record["id"], now, cfg.degrade_to)
                out.append(record)
        elif not triggers:
            self._episodes.discard("degrade")
        if (self._degraded is not None and self._calm_since is not None
                and now - self._calm_since >= cfg.restore_after):
            out.append(self._issue(INFERENCE, "restore", {}, f"{INFERENCE}/level",
                                   f"{INFERENCE} below CRITICAL for "
                                   f"{now - self._calm_since:.0f} s", now))  # fmt: skip
            self._degraded = None
        version, previous = (accuracy.details["version"], accuracy.details["previous_version"]) \
            if accuracy is not None else ("", "")
        if accuracy is not None and previous and version not in self._rolled_back:
            self._rolled_back[version] = None  # once per version, even if the command is lost
            while len(self._rolled_back) > cfg.max_actions:
                self._rolled_back.popitem(last=False)
            # the control command names the registry version: "v2" of "fraud-primary:v2"
            out.append(self._issue(INFERENCE, "rollback", {"version": previous.rpartition(":")[2]},
                                   accuracy.key, accuracy.message, now))
        verdict = self.canary.judge(self.join, None if self._ref is None else self._ref.version)
        if verdict is not None:
            key = f"{INFERENCE}/canary/{verdict.details['candidate']}"
            if verdict.action == "promote":
                out.append(self._issue(INFERENCE, "promote", {"version": verdict.version,
                                                              "model": PRIMARY},
                                       key, verdict.reason, now))
            out.append(self._issue(INFERENCE, "end_canary", {}, key, verdict.reason, now))
        # Load is no reason to stop taking load: an emergency made of latency and lag alerts
        # alone (an input spike) leaves ingest running; the events would wait in Kafka anyway.
        broken = [a for a in self.book.active() if a.severity in ("critical", "emergency")
                  and a.kind not in _LOAD_KINDS]
        if levels.get("system") == "EMERGENCY" and (
                len({a.stage for a in broken}) >= 2 or any(a.severity == "emergency"
                                                           for a in broken)):
            if "pause" not in self._episodes:
                self._episodes.add("pause")
                keys = [a.key for a in broken]
                out.append(self._issue("ingest", "pause", {}, "system/level",
                                       f"system EMERGENCY: {', '.join(keys[:5])}", now))
        else:
            self._episodes.discard("pause")
        return out

    def _issue(self, target: str, action: str, parameters: Mapping[str, str], key: str,
               message: str, now: float) -> dict[str, Any]:  # fmt: skip
        record = command(target, action, parameters=parameters,
                         reason=f"alert {key}: {message}", issuer=ISSUER)
        record["time"] = int(now * 1000)  # the injected clock, like every alert
        self.actions.append(record)
        log.warning("monitoring issues %s %s: %s", action, target, record["reason"])
        return record

    def snapshot(self, now: float) -> dict[str, Any]:
        """Crisis levels, firing alerts, drift, accuracy and recent commands for the status page."""
        levels = self.book.levels(self.config.stages)
        system = levels.pop("system")
        ref = self._ref
        drift = {"version": None} if ref is None else {**ref.drift.report(now),
                                                       "version": ref.version}  # fmt: skip
        return {
            "crisis": {"system": system, "stages": levels},
            "alerts": [alert.to_dict() for alert in self.book.active()],
            "drift": drift,
            "accuracy": self.join.snapshot(),
            "actions": list(self.actions),
            "canary": self.canary.snapshot(),
        }

"""The canary's judge: promote the candidate, or end the canary, from what inference reports.

While a ``canary`` command is in force, inference scores a stable share of the accounts with the
candidate and reports, per health interval, the candidate's and production's scores in ten bins
(``extra["canary_bins"]``). Monitoring's label join measures each version's live accuracy. The
judge ends the canary as soon as the candidate's breaker opens or its score distribution moves
away from production's (PSI over ``psi_threshold`` once both sides have ``min_scores`` scores);
once both versions have ``min_labels`` labelled outcomes it promotes the candidate if its metric
is no more than ``max_drop`` worse than production's, and ends the canary otherwise. One verdict
per canary command. Pure: no Kafka, no clock.

Example::

    judge = CanaryJudge(min_labels=500)
    judge.on_command(canary_command)
    judge.on_health(inference_health_event)
    verdict = judge.judge(label_join, production="fraud-primary:v1")   # None: not yet
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from tidegate.models.registry import PRIMARY
from tidegate.monitoring.accuracy import LabelJoin, worst_shortfall
from tidegate.monitoring.drift import psi
from tidegate.pipeline.canary import SCORE_CUTS

__all__ = ["CANARY_BREAKER", "CanaryJudge", "Verdict"]

log = logging.getLogger(__name__)

CANARY_BREAKER = "model:canary"
_BINS = len(SCORE_CUTS) + 1


@dataclass(frozen=True)
class Verdict:
    """What to do with the canary: ``promote`` its version, or ``end`` it; and why."""

    action: Literal["promote", "end"]
    version: str  # the registry's name of it: "v2"
    reason: str
    details: dict[str, str]


@dataclass
class _Run:
    command_id: str
    version: str  # as predictions name it: "fraud-primary:v2"
    share: float
    candidate: np.ndarray = field(default_factory=lambda: np.zeros(_BINS, dtype=np.int64))
    production: np.ndarray = field(default_factory=lambda: np.zeros(_BINS, dtype=np.int64))
    breaker: str = "closed"
    verdict: Verdict | None = None


class CanaryJudge:
    """Follows canary commands and inference's reports; ``judge`` gives at most one verdict."""

    def __init__(self, *, metric: str = "accuracy", min_labels: int = 500,
                 max_drop: float = 0.05, psi_threshold: float = 0.25,
                 min_scores: int = 500) -> None:
        self.metric, self.min_labels, self.max_drop = metric, min_labels, max_drop
        self.psi_threshold, self.min_scores = psi_threshold, min_scores
        self.run: _Run | None = None

    def on_command(self, record: Mapping[str, Any]) -> None:
        """A control command that passed the gate: a canary starts or ends."""
        if record.get("target") != "inference":
            return
        params = record.get("parameters") or {}
        if record.get("action") == "canary":
            if self.run is None or self.run.command_id != record.get("id"):
                model = params.get("model", PRIMARY)
                self.run = _Run(str(record.get("id")), f"{model}:{params.get('version')}",
                                float(params.get("share", 0)))
        elif record.get("action") == "end_canary":
            self.run = None

    def on_health(self, event: Mapping[str, Any]) -> None:
        """An inference health event: the candidate's breaker and the interval's score bins."""
        run = self.run
        if run is None or event.get("stage") != "inference":
            return
        run.breaker = str((event.get("breakers") or {}).get(CANARY_BREAKER, run.breaker))
        raw = (event.get("extra") or {}).get("canary_bins")
        if not raw:
            return
        try:
            bins = json.loads(raw)
            if bins["version"] != run.version:
                return
            run.candidate += np.asarray(bins["candidate"], dtype=np.int64)[:_BINS]
            run.production += np.asarray(bins["production"], dtype=np.int64)[:_BINS]
        except (ValueError, TypeError, KeyError) as exc:
            log.debug("unreadable canary bins: %s", exc)

    def judge(self, join: LabelJoin, production: str | None) -> Verdict | None:
        """The verdict on the running canary, once; None while it runs on."""
        run = self.run
        if run is None or run.verdict is not None:
            return None
        number = run.version.rpartition(":")[2]
        details = {"candidate": run.version, "production": production or "",
                   "share": f"{run.share:g}"}
        if run.breaker == "open":
            return self._give(run, Verdict("end", number, f"canary {run.version}: its breaker "
                                           "opened (the candidate fails)", details))
        shift = self.score_shift()
        if shift is not None:
            details["score_psi"] = f"{shift:.4f}"
            if shift > self.psi_threshold:
                return self._give(run, Verdict(
                    "end", number, f"canary {run.version}: its scores moved from "
                    f"{production}'s (PSI {shift:.2f} > {self.psi_threshold:g})", details))
        if production is None or shift is None:
            return None
        mine = join.measure(run.version, self.metric, min_labels=self.min_labels)
        theirs = join.measure(production, self.metric, min_labels=self.min_labels)
        if mine is None or theirs is None:
            return None
        details.update({self.metric: f"{mine[0]:.6f}", f"production_{self.metric}":
                        f"{theirs[0]:.6f}", "labelled": str(mine[1])})
        worst = worst_shortfall(mine[0], {"production": theirs[0]}, metric=self.metric)
        drop = 0.0 if worst is None else worst[1]
        summary = (f"{self.metric} {mine[0]:.3f} over {mine[1]} labelled against "
                   f"{production}'s {theirs[0]:.3f}")
        if drop > self.max_drop:
            return self._give(run, Verdict("end", number, f"canary {run.version}: {summary}, "
                                           f"{drop:.3f} worse", details))
        return self._give(run, Verdict("promote", number, f"canary {run.version}: {summary}, "
                                       f"score PSI {shift:.2f}", details))

    def score_shift(self) -> float | None:
        """PSI of the candidate's scores against production's; None before enough of both."""
        run = self.run
        if run is None or min(run.candidate.sum(), run.production.sum()) < self.min_scores:
            return None
        return psi(run.production / run.production.sum(), run.candidate)

    def _give(self, run: _Run, verdict: Verdict) -> Verdict:
        run.verdict = verdict
        return verdict

    def snapshot(self) -> dict[str, Any] | None:
        """The running canary for the status page; None without one."""
        run = self.run
        if run is None:
            return None
        shift = self.score_shift()
        return {"version": run.version, "share": run.share, "breaker": run.breaker,
                "scores": {"candidate": int(run.candidate.sum()),
                           "production": int(run.production.sum())},
                "score_psi": None if shift is None else round(shift, 4),
                "verdict": None if run.verdict is None else run.verdict.action}

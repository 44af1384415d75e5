"""Control commands and the mode a stage is in, without Kafka.

The control topic is compacted and keyed by ``<target>/<aspect>`` (``inference/mode``,
``ingest/flow``), so the newest command of each aspect survives compaction and a restarted stage
recovers its whole mode by reading the topic from the start. Stages apply a command id once.

Example::

    mode = StageMode(stage="inference")
    mode.apply(command("inference", "degrade", parameters={"to": "fallback"},
                       reason="model errors", issuer="alice"))
    mode.label()          # 'fallback'
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tidegate.errors import ConfigError
from tidegate.topics import DATA_STAGES

__all__ = ["ACTIONS", "DEGRADE_TARGETS", "StageMode", "command", "command_key", "validate"]

# action -> the aspect of a stage it sets; the newest command per aspect is the current one
ACTIONS: dict[str, str] = {
    "degrade": "mode", "restore": "mode", "pause": "flow", "resume": "flow", "shed": "shed",
    "promote": "model", "rollback": "model", "threshold": "threshold",
    "canary": "canary", "end_canary": "canary",
}
# actions only inference applies: the model version it serves, its decision threshold, and a
# candidate version served to a share of accounts
_MODEL_ACTIONS = ("promote", "rollback", "threshold", "canary", "end_canary")
# what each stage can degrade to, first is the default
DEGRADE_TARGETS: dict[str, tuple[str, ...]] = {
    "inference": ("fallback", "static"), "feature": ("imputed",),
}
SYSTEM = "system"
_REMEMBERED_IDS = 1000


def command(target: str, action: str, *, parameters: Mapping[str, str] | None = None,
            reason: str, issuer: str) -> dict[str, Any]:
    """A validated tidegate.ControlCommand record."""
    record = {"id": uuid.uuid4().hex, "target": target, "action": action,
              "parameters": dict(parameters or {}), "reason": reason, "issuer": issuer,
              "time": int(time.time() * 1000)}
    validate(record)
    return record


def command_key(record: Mapping[str, Any]) -> bytes:
    """The compaction key: target and aspect, so aspects do not overwrite each other."""
    return f"{record['target']}/{ACTIONS[record['action']]}".encode()


def validate(record: Mapping[str, Any]) -> None:
    """Raise ConfigError (one line) for a command no stage could apply."""
    target, action = record["target"], record["action"]
    params = record["parameters"]
    if action not in ACTIONS:
        raise ConfigError(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
    if target not in (*DATA_STAGES, SYSTEM):
        raise ConfigError(f"unknown target {target!r}; a stage of {DATA_STAGES} or system")
    if not str(record["reason"]).strip():
        raise ConfigError("a command needs a reason, for the audit trail")
    if action == "degrade":
        choices = DEGRADE_TARGETS.get(target)
        if choices is None:
            raise ConfigError(f"{target} cannot degrade; only {', '.join(DEGRADE_TARGETS)}")
        if params.get("to", choices[0]) not in choices:
            raise ConfigError(f"{target} degrades to one of {', '.join(choices)}")
    if action == "shed":
        if target != "ingest":
            raise ConfigError("shedding happens at ingest: target ingest")
        share = _number(params.get("share"))
        if not 0.0 <= share <= 1.0:
            raise ConfigError("shed needs a share between 0 and 1")
    if action in _MODEL_ACTIONS:
        if target != "inference":
            raise ConfigError(f"{action} applies to the model: target inference")
        if action == "threshold":
            if not 0.0 <= _number(params.get("value")) <= 1.0:
                raise ConfigError("threshold needs a value between 0 and 1")
        elif action == "canary":
            if not params.get("version"):
                raise ConfigError("canary needs the candidate version (version=vN)")
            if not 0.0 < _number(params.get("share")) <= 0.5:
                raise ConfigError("canary needs a share above 0 and at most 0.5")
        elif action == "end_canary":
            pass
        elif not params.get("version"):
            raise ConfigError(f"{action} needs the model version to serve (version=vN)")


def _number(text: str | None) -> float:
    try:
        return float(text if text is not None else "nan")
    except ValueError:
        return float("nan")


@dataclass
class StageMode:
    """The mode one stage is in, built from the commands addressed to it (or to system)."""

    stage: str
    degraded_to: str | None = None
    paused: bool = False
    pause_reason: str | None = None
    shed_share: float = 0.0
    model_version: str | None = None  # pinned by promote or rollback; None: registry production
    threshold: float | None = None  # set by a threshold command; None: the model's own
    canary_version: str | None = None  # a candidate served to canary_share of the accounts
    canary_share: float = 0.0
    last: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    _applied: OrderedDict[str, None] = field(default_factory=OrderedDict)

    def apply(self, record: Mapping[str, Any]) -> bool:
        """Apply one command; False when it is not for this stage or was applied before."""
        if record["target"] not in (self.stage, SYSTEM) or record["id"] in self._applied:
            return False
        if record["action"] not in ACTIONS:
            return False
        self._applied[record["id"]] = None
        while len(self._applied) > _REMEMBERED_IDS:
            self._applied.popitem(last=False)
        action, params = record["action"], record["parameters"]
        if action == "degrade" and self.stage in DEGRADE_TARGETS:
            self.degraded_to = params.get("to", DEGRADE_TARGETS[self.stage][0])
        elif action == "restore":
            self.degraded_to = None
        elif action == "pause":
            self.paused, self.pause_reason = True, f"{record['issuer']}: {record['reason']}"
        elif action == "resume":
            self.paused, self.pause_reason = False, None
        elif action == "shed" and self.stage == "ingest":
            self.shed_share = float(params.get("share", "0"))
        elif action in ("promote", "rollback") and self.stage == "inference":
            self.model_version = params["version"]
        elif action == "threshold" and self.stage == "inference":
            self.threshold = float(params["value"])
        elif action == "canary" and self.stage == "inference":
            self.canary_version, self.canary_share = params["version"], float(params["share"])
        elif action == "end_canary" and self.stage == "inference":
            self.canary_version, self.canary_share = None, 0.0
        self.last[ACTIONS[action]] = record
        return True

    def label(self) -> str:
        """The mode as health events and status show it: ``normal``, ``fallback``, ``shed=0.2``."""
        parts = [self.degraded_to] if self.degraded_to else []
        if self.shed_share:
            parts.append(f"shed={self.shed_share:g}")
        if self.canary_version:
            parts.append(f"canary={self.canary_version}@{self.canary_share:g}")
        if self.paused:
            parts.append("paused")
        return ",".join(p for p in parts if p) or "normal"

"""Fault injection for chaos drills: a model that fails, turns slow, or is simply wrong; an
input partition that stops moving.

``FaultyModel`` wraps a fitted classifier. While the file ``switch`` holds ``fail`` every call
raises; while it holds ``unavailable`` every call fails transiently (``ModelUnavailableError``,
a throttled model server), and with ``unavailable <n>`` the first n calls of the process do;
while it holds ``slow <seconds>`` every call sleeps first; otherwise it answers as the model it
wraps. Register it as a model version to rehearse what the breakers do in production.

``InvertedModel`` answers without failing but backwards (``1 - p``): a bad release that no
breaker notices. :func:`register_bad_version` registers one as a candidate, to rehearse the
shadow check refusing it, or (forced) a rollback.

``PartitionFreeze`` (``TIDEGATE_FAULT_FREEZE_PARTITION=<stage>:<partition>``) makes the stage's
reader hold one input partition paused for the life of one process, to rehearse the watchdog's
per-partition stall detection (``tidegate up`` alerts and restarts the stage).

Example::

    faulty = FaultyModel(registry.load("fraud-primary", "v1"), switch=Path("model.fault"))
    registry.promote("fraud-primary", register_like(registry, "fraud-primary", faulty).version)
    Path("model.fault").write_text("fail")            # the breaker opens; fallback answers
    bad = register_bad_version(registry, "fraud-primary")   # its shadow check fails
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from tidegate.errors import ModelUnavailableError
from tidegate.models.registry import ModelRegistry, ModelVersion
from tidegate.settings import Settings

__all__ = [
    "FaultyModel", "InvertedModel", "PartitionFreeze", "register_bad_version", "register_like",
]

log = logging.getLogger(__name__)


class FaultyModel:
    """A classifier whose failures are switched from outside the process."""

    def __init__(self, model: Any, *, switch: Path) -> None:
        self.model = model
        self.switch = switch
        self.classes_ = model.classes_

    def predict_proba(self, matrix: np.ndarray) -> np.ndarray:
        try:
            order = self.switch.read_text().split()
        except OSError:
            order = []
        if order[:1] == ["fail"]:
            raise RuntimeError("injected model failure")
        if order[:1] == ["unavailable"] and self._unavailable(order[1:]):
            raise ModelUnavailableError("injected: the model server throttled the call")
        if order[:1] == ["slow"]:
            time.sleep(float(order[1]) if len(order) > 1 else 2.0)
        result: np.ndarray = self.model.predict_proba(matrix)
        return result

    def _unavailable(self, count: list[str]) -> bool:
        """``unavailable``: every call fails; ``unavailable N``: the first N calls of this
        process fail while the switch says so, then it answers (a blip that passes)."""
        if not count:
            return True
        calls = getattr(self, "_unavailable_calls", 0) + 1  # absent in older pickles
        self._unavailable_calls = calls
        return calls <= int(count[0])


def register_like(registry: ModelRegistry, name: str, model: object) -> ModelVersion:
    """Register ``model`` with the metadata of ``name``'s production version, as a candidate."""
    current = registry.require_production(name)
    return registry.register(name, model, metrics=current.metrics,
                             feature_names=current.feature_names, threshold=current.threshold,
                             reference=current.reference, parent=current.version,
                             params={**current.params, "fault_injection": True})


class InvertedModel:
    """A classifier whose probabilities are swapped: fraud looks legitimate and vice versa."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.classes_ = model.classes_

    def predict_proba(self, matrix: np.ndarray) -> np.ndarray:
        proba = np.asarray(self.model.predict_proba(matrix))
        return proba[:, ::-1].copy()  # binary: each class gets the other's probability, 1 - p


def register_bad_version(registry: ModelRegistry, name: str) -> ModelVersion:
    """Register an inverted copy of ``name``'s production version as a candidate (a drill).

    >>> bad = register_bad_version(registry, "fraud-primary")
    >>> shadow_check(registry, "fraud-primary", bad.version).passed
    False
    """
    current = registry.require_production(name)
    bad = InvertedModel(registry.load(name, current.version))
    return register_like(registry, name, bad)


class PartitionFreeze:
    """Whether a reader should freeze a newly assigned input partition: yes for the drill's
    partition, in the first process that is assigned it, and in no other.

    The variable is still set when the frozen stage is restarted, so the fault ends by a marker:
    claiming the freeze creates ``<data dir>/faults/freeze-<stage>-<partition>`` (exclusively,
    so one process claims it), and a process that finds the marker reads the partition as
    usual. The claiming process keeps the partition frozen for its whole life, across
    rebalances. Delete the marker to arm the drill again.

    >>> freeze = PartitionFreeze.from_settings(settings, "ingest")  # None when not configured
    >>> freeze(0), freeze(1)     # the first process assigned partition 0
    (True, False)
    """

    def __init__(self, *, stage: str, partition: int, marker: Path) -> None:
        self.stage, self.partition, self.marker = stage, partition, marker
        self._claimed = False

    @classmethod
    def from_settings(cls, settings: Settings, stage: str) -> PartitionFreeze | None:
        named, _, partition = settings.fault_freeze_partition.partition(":")
        if named != stage:
            return None
        return cls(stage=stage, partition=int(partition),
                   marker=settings.data_dir / "faults" / f"freeze-{stage}-{partition}")

    def __call__(self, partition: int) -> bool:
        if partition != self.partition:
            return False
        if not self._claimed:
            try:
                self.marker.parent.mkdir(parents=True, exist_ok=True)
                with self.marker.open("x") as out:
                    out.write(f"frozen by process {os.getpid()}\n")
            except FileExistsError:
                return False  # an earlier process had the fault: this one recovers
            self._claimed = True
            log.warning("fault injection: %s freezes its input partition %d until it restarts",
                        self.stage, partition)
        return True

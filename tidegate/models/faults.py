"""Fault injection for chaos drills: a model that fails, turns slow, or is simply wrong.

``FaultyModel`` wraps a fitted classifier. While the file ``switch`` holds ``fail`` every call
raises; while it holds ``slow <seconds>`` every call sleeps first; otherwise it answers as the
model it wraps. Register it as a model version to rehearse what the breakers do in production.

``InvertedModel`` answers without failing but backwards (``1 - p``): a bad release that no
breaker notices. :func:`register_bad_version` registers one as a candidate, to rehearse the
shadow check refusing it, or (forced) a rollback.

Example::

    faulty = FaultyModel(registry.load("fraud-primary", "v1"), switch=Path("model.fault"))
    registry.promote("fraud-primary", register_like(registry, "fraud-primary", faulty).version)
    Path("model.fault").write_text("fail")            # the breaker opens; fallback answers
    bad = register_bad_version(registry, "fraud-primary")   # its shadow check fails
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from tidegate.models.registry import ModelRegistry, ModelVersion

__all__ = ["FaultyModel", "InvertedModel", "register_bad_version", "register_like"]


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
        if order[:1] == ["slow"]:
            time.sleep(float(order[1]) if len(order) > 1 else 2.0)
        result: np.ndarray = self.model.predict_proba(matrix)
        return result


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

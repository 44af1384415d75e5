"""Fault injection for chaos drills: a model that fails or turns slow on an operator's word.

``FaultyModel`` wraps a fitted classifier. While the file ``switch`` holds ``fail`` every call
raises; while it holds ``slow <seconds>`` every call sleeps first; otherwise it answers as the
model it wraps. Register it as a model version to rehearse what the breakers do in production.

Example::

    faulty = FaultyModel(registry.load("fraud-primary", "v1"), switch=Path("/tmp/model.fault"))
    registry.promote("fraud-primary", register_like(registry, "fraud-primary", faulty).version)
    Path("/tmp/model.fault").write_text("fail")      # the breaker opens; fallback answers
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from tidegate.registry import ModelRegistry, ModelVersion

__all__ = ["FaultyModel", "register_like"]


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

"""Model registry: layout, atomic versions, promotion, rollback, loading and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tidegate.errors import (
    ModelArtifactError,
    ModelNotFoundError,
    RegistryNotFoundError,
    RollbackUnavailableError,
)
from tidegate.models.registry import ModelRegistry, ModelVersion, bin_shares, reference_bins

pytestmark = pytest.mark.unit

NAME = "fraud-test"


def _register(registry: ModelRegistry, payload: object = None) -> ModelVersion:
    return registry.register(
        NAME,
        {"payload": payload},
        metrics={"roc_auc": 0.9, "n": 10},
        feature_names=("a", "b"),
        threshold=0.5,
        reference={"a": reference_bins(np.arange(10.0))},
    )


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "models")


def test_register_writes_the_layout_and_metadata(registry: ModelRegistry) -> None:
    mv = _register(registry, payload=1)
    folder = registry.root / NAME / "v1"
    assert sorted(p.name for p in folder.iterdir()) == ["metadata.json", "model.joblib"]
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["stage"] == "candidate" and meta["feature_names"] == ["a", "b"]
    assert meta["metrics"] == {"roc_auc": 0.9, "n": 10.0}
    assert registry.get(NAME, "v1") == mv
    assert [v.version for v in registry.list(NAME)] == ["v1"]
    assert registry.names() == [NAME]
    assert registry.production(NAME) is None
    assert registry.load(NAME, "v1") == {"payload": 1}


def test_unfinished_versions_are_ignored_and_numbers_never_reused(
    registry: ModelRegistry,
) -> None:
    _register(registry)
    (registry.root / NAME / "v2").mkdir()  # a writer died before its metadata
    assert [v.version for v in registry.list(NAME)] == ["v1"]
    assert _register(registry).version == "v3"


def test_missing_registry_model_and_version_raise_clear_errors(tmp_path: Path) -> None:
    missing = ModelRegistry(tmp_path / "nowhere")
    with pytest.raises(RegistryNotFoundError, match="not found") as info:
        missing.production(NAME)
    assert info.value.code == "REGISTRY_NOT_FOUND"
    registry = ModelRegistry(tmp_path)
    assert registry.list(NAME) == []
    with pytest.raises(ModelNotFoundError, match="no production version"):
        registry.require_production(NAME)
    with pytest.raises(ModelNotFoundError, match="no version"):
        registry.get(NAME, "v7")
    with pytest.raises(ModelNotFoundError, match="invalid model name"):
        registry.get("../etc", "v1")


def test_promote_archives_the_previous_production(registry: ModelRegistry) -> None:
    v1, v2 = _register(registry), _register(registry)
    registry.promote(NAME, v1.version)
    promoted = registry.promote(NAME, v2.version, reason="better")
    assert promoted.stage == "production"
    assert registry.promote(NAME, v2.version) == promoted  # idempotent
    stages = {v.version: v.stage for v in registry.list(NAME)}
    assert stages == {"v1": "archived", "v2": "production"}
    assert [(h["action"], h["version"], h["previous"]) for h in registry.history()] == [
        ("promote", "v1", []),
        ("promote", "v2", ["v1"]),
    ]


def test_rollback_walks_back_over_good_versions_only(registry: ModelRegistry) -> None:
    for _ in range(3):
        registry.promote(NAME, _register(registry).version)
    assert registry.rollback(NAME, reason="breaker").version == "v2"
    assert registry.get(NAME, "v3").rolled_back
    assert registry.rollback(NAME).version == "v1"
    with pytest.raises(RollbackUnavailableError) as info:
        registry.rollback(NAME)
    assert info.value.code == "ROLLBACK_UNAVAILABLE"
    assert [v.stage for v in registry.list(NAME)] == ["production", "archived", "archived"]
    assert registry.history()[-1]["action"] == "rollback"
    # an explicit promotion clears the rolled-back mark
    assert not registry.promote(NAME, "v3").rolled_back


def test_a_crash_mid_promotion_leaves_the_newer_promotion_live(registry: ModelRegistry) -> None:
    v1, v2 = _register(registry), _register(registry)
    registry.promote(NAME, v1.version)
    registry.promote(NAME, v2.version)
    meta = registry.root / NAME / "v1" / "metadata.json"
    raw = json.loads(meta.read_text())
    raw["stage"] = "production"  # as if the archiving write never happened
    meta.write_text(json.dumps(raw))
    current = registry.production(NAME)
    assert current is not None and current.version == "v2"


def test_load_caches_and_detects_a_tampered_artifact(registry: ModelRegistry) -> None:
    _register(registry, payload=[1, 2])
    assert registry.load(NAME, "v1") is registry.load(NAME, "v1")
    (registry.root / NAME / "v1" / "model.joblib").write_bytes(b"not a pickle")
    with pytest.raises(ModelArtifactError, match="checksum"):
        ModelRegistry(registry.root).load(NAME, "v1")
    (registry.root / NAME / "v1" / "metadata.json").write_text("{broken")
    with pytest.raises(ModelArtifactError, match="bad metadata"):
        registry.get(NAME, "v1")
    assert registry.list(NAME) == []  # a broken version is skipped, not fatal for the others


def test_reference_bins_and_shares() -> None:
    ref = reference_bins(np.arange(100.0), bins=4)
    assert ref["cuts"] == pytest.approx([24.75, 49.5, 74.25])
    assert ref["shares"] == [0.25, 0.25, 0.25, 0.25]
    binary = reference_bins(np.array([0.0] * 9 + [1.0]))
    assert sum(binary["shares"]) == pytest.approx(1.0)
    shifted = bin_shares(np.full(10, 1.0), binary["cuts"])
    assert shifted[-1] == 1.0
    assert reference_bins(np.array([np.nan])) == {"cuts": [], "shares": [1.0]}

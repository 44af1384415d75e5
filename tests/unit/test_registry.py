"""Model registry: layout, atomic versions, promotion, rollback, loading and its errors."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest

from tidegate.errors import (
    ConfigError,
    ModelArtifactError,
    ModelArtifactTamperedError,
    ModelNotFoundError,
    RegistryError,
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
    with pytest.raises(ModelNotFoundError, match="invalid version"):
        registry.get(NAME, "v0")


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
    with pytest.raises(ModelArtifactTamperedError, match="checksum") as info:
        ModelRegistry(registry.root).load(NAME, "v1")
    assert info.value.code == "MODEL_ARTIFACT_TAMPERED"
    assert isinstance(info.value, ModelArtifactError)  # callers that catch corrupt models still do
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


# --- integrity: hashes, paths that leave the registry, names and versions --------------------


class _Marker:
    """Unpickling it creates ``path``: proof that a pickle was (or was not) unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return os.mkdir, (str(self.path),)


def _meta(registry: ModelRegistry, version: str = "v1") -> Path:
    return registry.root / NAME / version / "metadata.json"


def _artifact_hash(registry: ModelRegistry, version: str = "v1") -> str:
    return hashlib.sha256((registry.root / NAME / version / "model.joblib").read_bytes()
                          ).hexdigest()


def test_a_good_artifact_loads_and_its_hash_is_the_recorded_one(registry: ModelRegistry) -> None:
    mv = _register(registry, payload="good")
    assert mv.sha256 == _artifact_hash(registry)
    assert json.loads(_meta(registry).read_text())["sha256"] == mv.sha256
    assert ModelRegistry(registry.root).load(NAME, "v1") == {"payload": "good"}


def test_a_replaced_pickle_is_refused_before_it_is_unpickled(
        registry: ModelRegistry, tmp_path: Path) -> None:
    _register(registry)
    marker = tmp_path / "unpickled"
    joblib.dump(_Marker(marker), registry.root / NAME / "v1" / "model.joblib")
    with pytest.raises(ModelArtifactTamperedError, match="refusing to unpickle"):
        registry.load(NAME, "v1")
    assert not marker.exists()


def test_metadata_without_a_hash_is_refused_until_an_operator_seals_it(
        registry: ModelRegistry) -> None:
    _register(registry, payload=3)
    raw = json.loads(_meta(registry).read_text())
    del raw["sha256"]  # as an old or hand-made metadata.json
    _meta(registry).write_text(json.dumps(raw))
    assert registry.get(NAME, "v1").sha256 == ""  # still readable: ls, promote, rollback work
    with pytest.raises(ModelArtifactTamperedError, match=r"no SHA-256 recorded.*model seal"):
        registry.load(NAME, "v1")
    with pytest.raises(ConfigError, match="reason"):
        registry.seal(NAME, "v1", reason=" ")
    sealed = registry.seal(NAME, "v1", reason="checked by hand")
    assert sealed.sha256 == _artifact_hash(registry) and registry.get(NAME, "v1") == sealed
    assert registry.load(NAME, "v1") == {"payload": 3}
    assert registry.history()[-1]["action"] == "seal"
    with pytest.raises(RegistryError, match="sealed already"):
        registry.seal(NAME, "v1", reason="again")


def test_a_symlink_out_of_the_registry_is_refused(
        registry: ModelRegistry, tmp_path: Path) -> None:
    _register(registry)
    _register(registry)
    outside = tmp_path / "outside"
    outside.mkdir()
    # the same bytes outside: the hash would match, the path alone is refused
    artifact = registry.root / NAME / "v1" / "model.joblib"
    shutil.copy(artifact, outside / "model.joblib")
    artifact.unlink()
    artifact.symlink_to(outside / "model.joblib")
    with pytest.raises(ModelArtifactTamperedError, match="outside the model registry"):
        registry.load(NAME, "v1")
    # metadata that lives outside could record any hash: refused, and skipped when listing
    shutil.copy(_meta(registry, "v2"), outside / "metadata.json")
    _meta(registry, "v2").unlink()
    _meta(registry, "v2").symlink_to(outside / "metadata.json")
    with pytest.raises(ModelArtifactTamperedError, match="outside the model registry"):
        registry.get(NAME, "v2")
    assert [v.version for v in registry.list(NAME)] == ["v1"]
    # a whole version folder that points out is refused for reads and writes alike
    (registry.root / NAME / "v3").symlink_to(outside)
    with pytest.raises(ModelArtifactTamperedError):
        registry.promote(NAME, "v3")


def test_a_symlink_inside_the_registry_is_followed(registry: ModelRegistry) -> None:
    _register(registry, payload="in")
    real = registry.root / "shared.joblib"
    artifact = registry.root / NAME / "v1" / "model.joblib"
    artifact.rename(real)
    artifact.symlink_to(real)
    assert registry.load(NAME, "v1") == {"payload": "in"}


def test_metadata_that_names_another_version_is_refused(registry: ModelRegistry) -> None:
    _register(registry)
    _register(registry)
    raw = json.loads(_meta(registry, "v2").read_text())
    raw["version"] = "../../../elsewhere"  # later writes go where metadata says
    _meta(registry, "v2").write_text(json.dumps(raw))
    with pytest.raises(ModelArtifactError, match=r"bad metadata.*describes"):
        registry.promote(NAME, "v2")


BAD_NAMES = ["..", "../etc", "a/b", "fraud-test\n", "", "-lead", "x" * 101, None, 7]
BAD_VERSIONS = ["..", "../v1", "v1/../v2", "v0", "v01", "1", "v1\n", "", None]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_refused_with_one_line_everywhere(
        registry: ModelRegistry, name: Any) -> None:
    _register(registry)
    calls: list[Callable[[], object]] = [
        lambda: registry.get(name, "v1"), lambda: registry.load(name, "v1"),
        lambda: registry.promote(name, "v1"), lambda: registry.rollback(name),
        lambda: registry.list(name), lambda: registry.production(name),
        lambda: registry.seal(name, "v1", reason="r"), lambda: _register_as(registry, name),
    ]
    for call in calls:
        with pytest.raises(ModelNotFoundError, match="invalid model name") as info:
            call()
        assert "\n" not in str(info.value) and len(str(info.value)) < 160
    assert registry.names() == [NAME]


@pytest.mark.parametrize("version", BAD_VERSIONS)
def test_bad_versions_are_refused_with_one_line_everywhere(
        registry: ModelRegistry, version: Any) -> None:
    _register(registry)
    calls: list[Callable[[], object]] = [
        lambda: registry.get(NAME, version), lambda: registry.load(NAME, version),
        lambda: registry.promote(NAME, version), lambda: registry.seal(NAME, version, reason="r"),
    ]
    if version is not None:  # no parent is fine; a parent that is no version is not
        calls.append(lambda: _register_as(registry, NAME, parent=version))
    for call in calls:
        with pytest.raises(ModelNotFoundError, match="invalid version") as info:
            call()
        assert "\n" not in str(info.value)
    assert [v.version for v in registry.list(NAME)] == ["v1"]  # nothing was registered


def _register_as(registry: ModelRegistry, name: Any, *, parent: Any = None) -> ModelVersion:
    return registry.register(name, {}, metrics={}, feature_names=("a",), threshold=0.5,
                             reference={}, parent=parent)


def test_the_cli_lists_short_hashes_and_seals_with_one_line_errors(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from tidegate.cli.main import main

    monkeypatch.setenv("TIDEGATE_DATA_DIR", str(tmp_path))
    registry = ModelRegistry(tmp_path / "models")
    mv = _register(registry)
    _register(registry)
    raw = json.loads(_meta(registry, "v2").read_text())
    del raw["sha256"]
    _meta(registry, "v2").write_text(json.dumps(raw))
    assert main(["model", "ls"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith(f"sha256:{mv.sha256[:12]}") and lines[1].endswith("unsealed")
    assert main(["model", "seal", NAME, "v2", "--reason", "checked"]) == 0
    short = _artifact_hash(registry, "v2")[:12]
    assert capsys.readouterr().out.strip() == f"{NAME}:v2 sealed (sha256:{short})"
    assert main(["model", "seal", "../x", "v1", "--reason", "r"]) == 1
    assert capsys.readouterr().err.startswith("tidegate: error: invalid model name '../x'")

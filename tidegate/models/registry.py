"""A file-based model registry: versioned artifacts with metadata, promotion and rollback.

Layout: ``<root>/<name>/<version>/{model.joblib,metadata.json}`` plus ``<root>/history.json``, a
bounded audit log of promotions, rollbacks and seals. model.joblib is a pickle, so it is
unpickled only from inside the registry root and only when its SHA-256 matches the one recorded
at register time (:mod:`tidegate.models.integrity`); names and versions are checked wherever
they enter.
Versions ``v1``, ``v2``, ... are claimed with an atomic ``mkdir``; metadata.json is written last,
so a version directory without it is an unfinished write and is ignored. Every write goes to a
temporary file moved into place with ``os.replace``; changes of stage hold a lock file.

Reference distributions (metadata ``reference``) map a feature name, or ``"score"``, to
``{"cuts": [...], "shares": [...]}``: value ``x`` falls in bin ``searchsorted(cuts, x, "right")``
and ``len(shares) == len(cuts) + 1``. Build one with :func:`reference_bins`; compare live data
with :func:`bin_shares`.

Example::

    mv = registry.register("fraud-primary", model, metrics=m, feature_names=FEATURE_NAMES,
                           threshold=0.4, reference=ref)
    registry.promote("fraud-primary", mv.version)
    live = registry.load("fraud-primary", registry.require_production("fraud-primary").version)
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import joblib
import numpy as np

from tidegate.errors import (
    ConfigError,
    ModelArtifactError,
    ModelNotFoundError,
    RegistryError,
    RegistryNotFoundError,
    RollbackUnavailableError,
)
from tidegate.models.integrity import (
    ARTIFACT,
    METADATA,
    check_name,
    check_version,
    contained,
    read_verified,
    valid_name,
    version_number,
)

__all__ = [
    "FALLBACK", "PRIMARY", "ModelRegistry", "ModelVersion", "Stage", "bin_shares",
    "reference_bins",
]

Stage = Literal["production", "candidate", "archived"]
# The models inference serves: its primary and its fallback (the example trains both).
PRIMARY = "fraud-primary"
FALLBACK = "fraud-fallback"
_HISTORY_MAX = 1000
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelVersion:
    """One registered version, as its metadata.json describes it."""

    name: str
    version: str
    created_ms: int
    stage: Stage
    metrics: dict[str, float]
    feature_names: tuple[str, ...]
    threshold: float
    reference: dict[str, dict[str, list[float]]]
    parent: str | None = None
    promoted_ms: int | None = None
    rolled_back: bool = False
    sha256: str = ""  # of model.joblib; "" in metadata from before hashes: refused by load()
    params: dict[str, Any] = field(default_factory=dict)


_FIELDS = frozenset(f.name for f in fields(ModelVersion))  # newer metadata keys are ignored


def reference_bins(values: np.ndarray, *, bins: int = 10) -> dict[str, list[float]]:
    """Quantile cut points of ``values`` and the share of values in each bin.

    >>> reference_bins(np.array([0.0, 0.0, 1.0, 1.0]), bins=2)
    {'cuts': [0.5], 'shares': [0.5, 0.5]}
    """
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {"cuts": [], "shares": [1.0]}
    cuts = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    return {"cuts": cuts.tolist(), "shares": bin_shares(finite, cuts.tolist()).tolist()}


def bin_shares(values: np.ndarray, cuts: Sequence[float]) -> np.ndarray:
    """Share of ``values`` in each bin defined by ``cuts`` (see the module docstring)."""
    counts = np.bincount(np.searchsorted(np.asarray(cuts), values, side="right"),
                         minlength=len(cuts) + 1)  # fmt: skip
    return counts / max(int(counts.sum()), 1)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


class ModelRegistry:
    """Versioned models under ``root``; loaded models are cached (at most ``cache_size``)."""

    def __init__(self, root: Path, *, cache_size: int = 4) -> None:
        """Nothing is read until first use; a missing ``root`` raises RegistryNotFoundError."""
        self.root = Path(root)
        self._cache: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._cache_size = max(cache_size, 1)
        self._mutex = threading.Lock()

    def _model_dir(self, name: str) -> Path:
        return self._existing_root() / check_name(name)

    def _file(self, name: str, version: str, filename: str) -> Path:
        """A file of one version, resolved; ModelArtifactTamperedError if it leaves the root."""
        path = self._model_dir(name) / check_version(name, version) / filename
        return contained(self.root, path)

    def _existing_root(self) -> Path:
        if not self.root.is_dir():
            raise RegistryNotFoundError(f"model registry not found at {self.root}; train first")
        return self.root

    def names(self) -> builtins.list[str]:
        """Names of the registered models."""
        root = self._existing_root()
        return sorted(p.name for p in root.iterdir() if p.is_dir() and valid_name(p.name))

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise changes of stage across threads and processes."""
        with self._mutex, open(self._existing_root() / ".lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file is closed
            yield

    def register(self, name: str, model: object, *, metrics: Mapping[str, float],
                 feature_names: Sequence[str], threshold: float,
                 reference: Mapping[str, dict[str, list[float]]], parent: str | None = None,
                 params: Mapping[str, Any] | None = None) -> ModelVersion:  # fmt: skip
        """Store ``model`` as the next version of ``name``, stage ``candidate``, with its hash."""
        check_name(name)
        if parent is not None:
            check_version(name, parent)
        self.root.mkdir(parents=True, exist_ok=True)
        model_dir = self._model_dir(name)
        contained(self.root, model_dir)  # a symlinked model folder must not take the write out
        model_dir.mkdir(exist_ok=True)
        number = max((version_number(p.name) for p in model_dir.iterdir()), default=0) + 1
        while True:  # mkdir is the atomic claim on a version number among writers
            with contextlib.suppress(FileExistsError):
                (path := model_dir / f"v{number}").mkdir()
                break
            number += 1
        joblib.dump(model, tmp := path / f".model.{uuid.uuid4().hex}.tmp")
        digest = _sha256(tmp)  # the bytes this writer wrote, before anyone can see them
        os.replace(tmp, path / ARTIFACT)
        mv = ModelVersion(
            name=name, version=f"v{number}", created_ms=time.time_ns() // 1_000_000,
            stage="candidate", metrics={k: float(v) for k, v in metrics.items()},
            feature_names=tuple(feature_names), threshold=float(threshold),
            reference=dict(reference), parent=parent, sha256=digest, params=dict(params or {}),
        )  # fmt: skip
        self._write_meta(mv)
        return mv

    def _write_meta(self, mv: ModelVersion) -> None:
        body = json.dumps(asdict(mv), indent=2, sort_keys=True, allow_nan=False)
        _write_atomic(self._file(mv.name, mv.version, METADATA), body.encode())

    def list(self, name: str) -> builtins.list[ModelVersion]:
        """Every complete version of ``name``, oldest first (empty if none)."""
        model_dir = self._model_dir(name)
        if not model_dir.is_dir():
            return []
        found = []
        for number in sorted(n for p in model_dir.iterdir() if (n := version_number(p.name))):
            try:
                mv = self._read_meta(name, f"v{number}")
            except ModelArtifactError as exc:  # one broken old version must not block serving
                _log.warning("skipping %s", exc)
                continue
            if mv is not None:
                found.append(mv)
        return found

    def _read_meta(self, name: str, version: str) -> ModelVersion | None:
        path = self._file(name, version, METADATA)
        if not path.is_file():
            return None
        try:
            values = {k: v for k, v in json.loads(path.read_text()).items() if k in _FIELDS}
            values["feature_names"] = tuple(values["feature_names"])
            # metadata names the files later writes go to: a copied or edited one must not
            # redirect them, nor hand load() a hash of the wrong type
            if (values["name"], values["version"]) != (name, version):
                raise ValueError(f"it describes {values['name']!r} {values['version']!r}")
            if not isinstance(values.get("sha256", ""), str):
                raise TypeError("sha256 is not a string")
            return ModelVersion(**values)
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ModelArtifactError(f"bad metadata for {name} {version}: {exc}") from exc

    def get(self, name: str, version: str) -> ModelVersion:
        """Metadata of one version; ModelNotFoundError if it does not exist or is no version."""
        mv = self._read_meta(name, version)
        if mv is None:
            raise ModelNotFoundError(f"model {name} has no version {version!r} in {self.root}")
        return mv

    def production(self, name: str) -> ModelVersion | None:
        """The production version of ``name``, or None."""
        live = [mv for mv in self.list(name) if mv.stage == "production"]
        # Two production versions only survive a crash mid-promotion; the newer promotion wins.
        return max(live, key=lambda mv: mv.promoted_ms or 0, default=None)

    def require_production(self, name: str) -> ModelVersion:
        """The production version of ``name``; ModelNotFoundError (fatal at start) if none."""
        mv = self.production(name)
        if mv is None:
            raise ModelNotFoundError(f"no production version of model {name} in {self.root}")
        return mv

    def promote(self, name: str, version: str, *, reason: str = "") -> ModelVersion:
        """Make ``version`` production; the previous production version becomes archived."""
        with self._locked():
            target, current = self.get(name, version), self.production(name)
            if current is not None and current.version == version:
                return current
            return self._set_live(name, target, reason=reason, action="promote")

    def rollback(self, name: str, *, reason: str = "") -> ModelVersion:
        """Return to the most recently promoted earlier version not itself rolled back."""
        with self._locked():
            current = self.require_production(name)
            earlier = [mv for mv in self.list(name) if mv.version != current.version
                       and mv.promoted_ms is not None and not mv.rolled_back]  # fmt: skip
            if not earlier:
                raise RollbackUnavailableError(f"model {name} has no earlier good version")
            target = max(earlier, key=lambda mv: mv.promoted_ms or 0)
            return self._set_live(name, target, reason=reason, action="rollback")

    def _set_live(self, name: str, target: ModelVersion, *, reason: str,
                  action: str) -> ModelVersion:  # fmt: skip
        versions = self.list(name)
        last = max((mv.promoted_ms or 0 for mv in versions), default=0)
        now = max(time.time_ns() // 1_000_000, last + 1)  # promotion times strictly increase
        live = replace(target, stage="production", promoted_ms=now, rolled_back=False)
        self._write_meta(live)  # first the new one: a crash here leaves two, and the newer wins
        previous = [
            mv for mv in versions if mv.stage == "production" and mv.version != live.version
        ]
        for mv in previous:
            self._write_meta(
                replace(mv, stage="archived", rolled_back=mv.rolled_back or action == "rollback")
            )
        entry = {"time_ms": now, "name": name, "action": action, "version": live.version,
                 "previous": [mv.version for mv in previous], "reason": reason}  # fmt: skip
        self._append_history(entry)
        return live

    def seal(self, name: str, version: str, *, reason: str) -> ModelVersion:
        """Record the SHA-256 of an artifact whose metadata has none, after an operator checked it.

        A version that already has a hash is refused: a changed artifact is a new version.
        """
        if not reason.strip():
            raise ConfigError("sealing needs a reason, for the audit trail")
        with self._locked():
            mv = self.get(name, version)
            if mv.sha256:
                raise RegistryError(f"{name} {version} is sealed already; register a changed "
                                    "artifact as a new version")  # fmt: skip
            try:
                digest = _sha256(self._file(name, version, ARTIFACT))
            except OSError as exc:
                raise ModelArtifactError(f"cannot read the artifact of {name} {version}: {exc}"
                                         ) from exc
            sealed = replace(mv, sha256=digest)
            self._write_meta(sealed)
            self._append_history({"time_ms": time.time_ns() // 1_000_000, "name": name,
                                  "action": "seal", "version": version, "previous": [],
                                  "sha256": sealed.sha256, "reason": reason})  # fmt: skip
            return sealed

    def history(self) -> builtins.list[dict[str, Any]]:
        """The registry-level log of promotions, rollbacks and seals, oldest first."""
        path = self.root / "history.json"
        try:
            entries = json.loads(path.read_text()) if path.is_file() else []
        except (OSError, ValueError) as exc:
            raise RegistryError(f"unreadable registry history {path}: {exc}") from exc
        return entries if isinstance(entries, builtins.list) else []

    def _append_history(self, entry: dict[str, Any]) -> None:
        entries = [*self.history(), entry][-_HISTORY_MAX:]
        _write_atomic(self.root / "history.json", json.dumps(entries, indent=1).encode())

    def load(self, name: str, version: str) -> Any:
        """The fitted model of one version, cached; unpickled only once its hash matches.

        ModelArtifactTamperedError when the artifact's SHA-256 differs from the recorded one,
        none was recorded, or its path leaves the registry; ModelArtifactError when it is
        intact but does not unpickle.
        """
        key = (check_name(name), check_version(name, version))
        with self._mutex:
            if key in self._cache:
                self._cache.move_to_end(key)  # least recently used goes first
                return self._cache[key]
        mv = self.get(name, version)
        data = read_verified(self._file(name, version, ARTIFACT), expected=mv.sha256,
                             what=f"{name} {version}")  # fmt: skip
        try:
            model = joblib.load(io.BytesIO(data))  # the verified bytes, not the file again
        except Exception as exc:  # unpickling can raise anything; all mean a broken artifact
            raise ModelArtifactError(f"cannot load {name} {version}: {exc}") from exc
        with self._mutex:
            self._cache[key] = model
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return model

"""Fixtures for the agent tier: a data dir with a trained example model, and settings for
stages that never reach a broker."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tidegate.models.registry import ModelRegistry
from tidegate.models.training import train_example
from tidegate.settings import Settings, load_settings

PREFIX = "agt."
MakeSettings = Callable[..., Settings]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir whose registry holds a small trained example model (for inference)."""
    root = tmp_path_factory.mktemp("agent-data")
    train_example(ModelRegistry(root / "models"), events=5_000, seed=3)
    return root


@pytest.fixture
def make_settings(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> MakeSettings:
    """Settings for a stage that never reaches a broker (port 9 is discard)."""

    def make(**env: str) -> Settings:
        monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9")
        monkeypatch.setenv("TIDEGATE_TOPIC_PREFIX", PREFIX)
        monkeypatch.setenv("TIDEGATE_DATA_DIR", str(data_dir))
        monkeypatch.setenv("TIDEGATE_BATCH_WITHIN", "0.01")
        # This tier drives Faust agents; the librdkafka reader is the integration tier's.
        monkeypatch.setenv("TIDEGATE_READER", "faust")
        for name, value in env.items():
            monkeypatch.setenv(f"TIDEGATE_{name.upper()}", value)
        return load_settings()

    return make

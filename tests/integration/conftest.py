"""Fixtures for the integration tier: settings for a whole pipeline on the session broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Cluster
from tests.integration.pipeline import free_port
from tidegate.settings import Settings, load_settings


@pytest.fixture
def pipeline_settings(kafka: Cluster, prefix: str, tmp_path: Path,
                      monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings (also in the environment, for stage processes) with a free status port."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka.bootstrap)
    monkeypatch.setenv("TIDEGATE_TOPIC_PREFIX", prefix)
    monkeypatch.setenv("TIDEGATE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TIDEGATE_STATUS_PORT", str(free_port()))
    monkeypatch.setenv("TIDEGATE_HEALTH_INTERVAL", "1.0")
    return load_settings()

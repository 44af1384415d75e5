"""Fixtures for the integration tier: settings for a whole pipeline on the session broker."""

from __future__ import annotations

import pytest

from tests.integration.pipeline import free_port
from tidegate.settings import Settings, load_settings


@pytest.fixture
def pipeline_settings(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The test's settings (also in the environment, for stage processes) plus a free status
    port and a short health interval."""
    monkeypatch.setenv("TIDEGATE_STATUS_PORT", str(free_port()))
    monkeypatch.setenv("TIDEGATE_HEALTH_INTERVAL", "1.0")
    return load_settings()

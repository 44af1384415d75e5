"""Fixtures for the chaos tier: the same per-test settings as the integration tier."""

from tests.integration.conftest import pipeline_settings

__all__ = ["pipeline_settings"]

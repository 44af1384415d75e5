"""The five stages, one module each. ``build(settings)`` returns the stage's runtime."""

__all__ = ["STAGE_NAMES"]

STAGE_NAMES = ("ingest", "validation", "feature", "inference", "monitoring")

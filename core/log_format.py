"""Log formatting: one JSON object per line (``LOG_FORMAT=json``) or readable text.

Every line has time, level, logger and message, plus the request id and tenant of the request or
job it was written in (``core.log_context``) and any ``extra`` the caller passed
(``route``, ``status``, ``duration_ms``, ``thread_id`` ...).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from django.http import HttpRequest
from pythonjsonlogger.json import JsonFormatter

from core.log_context import JOB_REQUEST_ID_ARG, current_request_id, current_tenant

# LogRecord's own attributes; anything else on a record came from ``extra``.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "request_id",
    "tenant",
}


class LogContextFilter(logging.Filter):
    """Add the current request id and tenant to a record, unless the caller passed its own.

    Django's ``django.request`` lines (404s, 500s) pass the request object itself: it becomes
    ``METHOD /path`` without the query string, which may hold a secret someone put there, and it
    gives the line the request's id (written after the request's log context ended)."""

    def filter(self, record: logging.LogRecord) -> bool:
        request = getattr(record, "request", None)
        if isinstance(request, HttpRequest):
            record.request = f"{request.method} {request.path}"
            if getattr(record, "request_id", None) is None:
                record.request_id = getattr(request, "request_id", None)
        if getattr(record, "request_id", None) is None:
            record.request_id = current_request_id() or _job_request_id(record)
        if getattr(record, "tenant", None) is None:
            record.tenant = current_tenant()
        return True


# Control characters in a text line's message are escaped: a request path with a line break must
# not start a line of its own that reads like another record.
_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(32), 127)} | {
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
}


def _job_request_id(record: logging.LogRecord) -> str | None:
    """The request id a job carries, for Procrastinate's own lines about it ("Starting job",
    "Job ended"), written outside the job's log context with the job as an extra."""
    job = getattr(record, "job", None)
    kwargs = job.get("task_kwargs") if isinstance(job, dict) else None
    request_id = kwargs.get(JOB_REQUEST_ID_ARG) if isinstance(kwargs, dict) else None
    return request_id if isinstance(request_id, str) else None


def _iso_time(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


class JsonLogFormatter(JsonFormatter):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            "%(levelname)s %(name)s %(message)s %(request_id)s %(tenant)s",
            rename_fields={"levelname": "level", "name": "logger"},
            **kwargs,
        )

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        log_data["time"] = _iso_time(record)
        super().add_fields(log_data, record, message_dict)


class TextLogFormatter(logging.Formatter):
    """``time LEVEL logger [request_id tenant] message key=value ...``."""

    def format(self, record: logging.LogRecord) -> str:
        context = " ".join(
            str(value)
            for value in (getattr(record, "request_id", None), getattr(record, "tenant", None))
            if value
        )
        # Scalars only: libraries pass whole objects as extras (Procrastinate a job's dict), which
        # the JSON lines keep and a person reading text does not want on every line.
        extras = " ".join(
            f"{key}={value}"
            for key, value in vars(record).items()
            if key not in _RECORD_ATTRIBUTES
            and not key.startswith("_")
            and isinstance(value, str | int | float)
        )
        line = (
            f"{_iso_time(record)} {record.levelname} {record.name}"
            f"{f' [{context}]' if context else ''} {record.getMessage().translate(_ESCAPES)}"
            f"{f' {extras}' if extras else ''}"
        )
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        if record.stack_info:
            line = f"{line}\n{self.formatStack(record.stack_info)}"
        return line

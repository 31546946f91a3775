"""Log lines carry the request id and tenant of the request they were written in (both formats)."""

from __future__ import annotations

import json
import logging
from typing import Any

from core.log_context import log_context, tenant_set
from core.log_format import JsonLogFormatter, LogContextFilter, TextLogFormatter


def _record(message: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("ironclaw_site.access", logging.INFO, __file__, 1, message, (), None)
    record.__dict__.update(extra)
    LogContextFilter().filter(record)
    return record


def test_a_json_line_has_the_fields_and_the_request_context() -> None:
    with log_context(request_id="req-1"):
        tenant_set("alice")
        record = _record("GET /healthz 200", route="healthz", status=200, duration_ms=1.5)

    line = json.loads(JsonLogFormatter().format(record))

    assert line["request_id"] == "req-1"
    assert line["tenant"] == "alice"
    assert line["level"] == "INFO"
    assert line["logger"] == "ironclaw_site.access"
    assert line["message"] == "GET /healthz 200"
    assert (line["route"], line["status"], line["duration_ms"]) == ("healthz", 200, 1.5)
    assert line["time"].endswith("+00:00")


def test_a_text_line_shows_the_request_id_and_scalar_extras() -> None:
    with log_context(request_id="req-2", tenant="bob"):
        record = _record("indexed", document_id="d1", job={"id": 7})

    line = TextLogFormatter().format(record)

    assert " INFO ironclaw_site.access [req-2 bob] indexed document_id=d1" in line
    assert "job=" not in line


def test_outside_a_request_the_context_fields_are_empty() -> None:
    record = _record("started")

    line = json.loads(JsonLogFormatter().format(record))

    assert line["request_id"] is None
    assert line["tenant"] is None


def test_a_caller_s_own_tenant_wins_over_the_context() -> None:
    with log_context(request_id="req-3", tenant="alice"):
        record = _record("claimed", tenant="carol")

    assert json.loads(JsonLogFormatter().format(record))["tenant"] == "carol"


def test_a_text_line_cannot_be_split_into_a_forged_record_by_its_message() -> None:
    path = "/nope\n2026-11-29T04:00:00.000+00:00 INFO ironclaw_site.access FAKE\r\x1b[2J"
    record = _record("GET %s 404")
    record.args = (path,)

    line = TextLogFormatter().format(record)

    assert "\n" not in line
    assert "\r" not in line
    assert "\x1b" not in line
    assert "/nope\\n2026-11-29T04:00:00.000+00:00 INFO ironclaw_site.access FAKE\\r\\x1b[2J" in line


def test_django_s_request_lines_carry_the_request_id_and_no_query_string(rf: Any) -> None:
    request = rf.get("/api/v1/workspace/documents/x", {"api_key": "ick_secret"})
    request.request_id = "req-9"

    record = _record("Not Found: /api/v1/workspace/documents/x", request=request, status_code=404)
    line = json.loads(JsonLogFormatter().format(record))

    assert line["request"] == "GET /api/v1/workspace/documents/x"
    assert line["request_id"] == "req-9"
    assert "ick_secret" not in json.dumps(line)


def test_procrastinate_s_own_job_lines_carry_the_job_s_request_id() -> None:
    job = {"id": 4, "task_kwargs": {"thread_id": "t1", "_request_id": "req-7"}}
    record = _record("Starting job conversations.tasks.run_thread[4]", job=job)
    untraced = _record("Starting job x[5]", job={"id": 5, "task_kwargs": {}})

    assert json.loads(JsonLogFormatter().format(record))["request_id"] == "req-7"
    assert json.loads(JsonLogFormatter().format(untraced))["request_id"] is None

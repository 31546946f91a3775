"""Metrics and logs of the whole `manage.py serve` (two web processes, both workers): real
traffic, one scrape summing every process, and a request id followed from a request's access
line into the log lines of the jobs it enqueued."""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from django.db import connection

from accounts.services import CreatedApiKey
from tests.support.metrics import metric_sample
from tests.support.serve import ServeProcess, call, send_and_await_reply, serve_process
from tests.support.servers import database_url, http_request

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = 3
HEALTH_CHECKS = 10
DOCUMENT_ROUTE = "api/v1/workspace/documents/<document_path:path>"


def _env(metrics_dir: Path) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url(connection.settings_dict),
        "ENGINE_MODEL": "echo",
        "ENGINE_ECHO_LATENCY_MS": "50",
        "WEB_CONCURRENCY": "2",
        "METRICS_DIR": str(metrics_dir),
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "json",
    }


def _web_pids(serve: ServeProcess) -> set[int]:
    """The live web processes (a killed one stays a zombie until serve notices)."""
    pids = set()
    for child in psutil.Process(serve.process.pid).children():
        try:
            if "serve_web" in " ".join(child.cmdline()):
                pids.add(child.pid)
        except psutil.NoSuchProcess:  # ZombieProcess included
            continue
    return pids


def _scrape_until(serve: ServeProcess, done: Callable[[str], bool], timeout: float = 15) -> str:
    """Scrape until ``done(text)``: a turn's outcome is counted just after its reply commits."""
    deadline = time.monotonic() + timeout
    while True:
        response = http_request(f"{serve.base_url}/metrics")
        assert response.status == 200, response.body
        try:
            if done(response.body):
                return str(response.body)
        except AssertionError:
            pass
        if time.monotonic() > deadline:
            return str(response.body)
        time.sleep(0.2)


def _wait_for_restart(serve: ServeProcess, old_pid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = _web_pids(serve)
        if old_pid not in pids and len(pids) == 2:
            return
        time.sleep(0.1)
    raise AssertionError(f"web process {old_pid} was not replaced within {timeout} s")


def test_one_scrape_counts_the_traffic_of_every_web_and_worker_process(
    make_api_key: Callable[..., CreatedApiKey], tmp_path: Path
) -> None:
    key = make_api_key("alice").raw_key
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    # A previous run's counter: serve must start from zero, not add to it.
    stale = metrics_dir / "counter_999999.db"
    stale.write_bytes(b"left by a previous run")

    with serve_process(_env(metrics_dir)) as serve:
        stale_survived = stale.exists()
        for number in range(MESSAGES):
            send_and_await_reply(serve.base_url, key, f"hello {number}")
        before_writes = _scrape_until(
            serve,
            lambda text: (
                metric_sample(text, "ironclaw_turns_total", outcome="completed") >= MESSAGES
            ),
        )
        # The engine writes its own runtime state during turns; these writes come after.
        document, _ = call(
            serve.base_url,
            key,
            "PUT",
            "/api/v1/workspace/documents/notes/plan.md",
            {"content": "a plan"},
        )
        runtime = [
            call(
                serve.base_url,
                key,
                "PUT",
                "/api/v1/workspace/documents/engine/.runtime/state.json",
                {"content": json.dumps({"step": step})},
            )[0]
            for step in range(2)
        ]
        for _ in range(HEALTH_CHECKS):
            assert http_request(f"{serve.base_url}/healthz").status == 200
        text = _scrape_until(serve, lambda text: True)
        web_pids = _web_pids(serve)
        recorded_pids = {int(path.stem.rsplit("_", 1)[1]) for path in metrics_dir.glob("*.db")}
        # A web process that dies: serve drops its gauges ("in use now") and keeps its counters.
        killed = min(web_pids)
        had_gauges = (metrics_dir / f"gauge_livesum_{killed}.db").exists()
        psutil.Process(killed).send_signal(signal.SIGKILL)
        _wait_for_restart(serve, killed)
        killed_files = {path.name for path in metrics_dir.glob(f"*_{killed}.db")}
        after_kill = _scrape_until(serve, lambda text: True)

    def requests(route: str, method: str, status: str) -> float:
        return metric_sample(
            text,
            "ironclaw_http_request_duration_seconds_count",
            route=route,
            method=method,
            status=status,
        )

    def writes(scrape: str, kind: str) -> float:
        return metric_sample(scrape, "ironclaw_workspace_writes_total", kind=kind)

    assert document == 200
    assert runtime == [200, 200]
    assert not stale_survived
    assert len(web_pids) == 2
    assert web_pids <= recorded_pids
    assert requests("healthz", "GET", "200") == HEALTH_CHECKS
    assert requests("api/v1/messages", "POST", "202") == MESSAGES
    assert requests(DOCUMENT_ROUTE, "PUT", str(document)) >= 1
    assert writes(text, "runtime") - writes(before_writes, "runtime") == 2
    assert writes(text, "document") - writes(before_writes, "document") == 1
    assert metric_sample(text, "ironclaw_turns_total", outcome="completed") == MESSAGES
    assert metric_sample(text, "ironclaw_turn_duration_seconds_count") == MESSAGES
    assert metric_sample(text, "ironclaw_turn_model_seconds_count") == MESSAGES
    assert metric_sample(text, "ironclaw_turn_overhead_seconds_count") == MESSAGES
    assert metric_sample(text, "ironclaw_turn_model_seconds_sum") >= MESSAGES * 0.05
    assert metric_sample(text, "ironclaw_db_pool_connections_open") >= 1
    assert metric_sample(text, "ironclaw_db_pool_connections_in_use") >= 0
    assert metric_sample(text, "ironclaw_db_pool_requests_waiting") >= 0
    assert metric_sample(text, "ironclaw_db_pool_timeouts_total") == 0
    assert metric_sample(text, "ironclaw_threads", state="running") == 0
    assert metric_sample(text, "ironclaw_thread_leases_expired") == 0
    for queue in ("threads", "indexing", "webhooks", "default"):
        assert metric_sample(text, "ironclaw_jobs", queue=queue, status="failed") == 0
        assert metric_sample(text, "ironclaw_jobs_oldest_waiting_seconds", queue=queue) >= 0
    assert metric_sample(text, "ironclaw_indexing_backlog_documents") in (0, 1)
    assert metric_sample(text, "ironclaw_embedding_errors_last_hour") == 0
    assert had_gauges
    assert f"gauge_livesum_{killed}.db" not in killed_files
    assert f"histogram_{killed}.db" in killed_files
    assert requests("healthz", "GET", "200") == metric_sample(
        after_kill,
        "ironclaw_http_request_duration_seconds_count",
        route="healthz",
        method="GET",
        status="200",
    )


def _put(base_url: str, key: str, path: str, body: dict[str, Any], request_id: str) -> Any:
    request = urllib.request.Request(
        f"{base_url}{path}",
        data=json.dumps(body).encode(),
        method="PUT",
        headers={
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
            "X-Request-Id": request_id,
        },
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, response.headers["X-Request-Id"]


def _post(base_url: str, key: str, path: str, body: dict[str, Any], request_id: str) -> Any:
    request = urllib.request.Request(
        f"{base_url}{path}",
        data=json.dumps(body).encode(),
        method="POST",
        headers={
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
            "X-Request-Id": request_id,
        },
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, response.headers["X-Request-Id"]


def _log_lines(serve: ServeProcess) -> list[dict[str, Any]]:
    lines = []
    for line in serve.output().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def _wait_for_line(
    serve: ServeProcess, match: Callable[[dict[str, Any]], bool], timeout: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in _log_lines(serve):
            if match(line):
                return line
        time.sleep(0.2)
    raise AssertionError(f"no such log line within {timeout} s:\n{serve.output()[-5000:]}")


def test_a_request_id_is_logged_by_the_request_and_by_the_jobs_it_enqueued(
    make_api_key: Callable[..., CreatedApiKey], tmp_path: Path
) -> None:
    key = make_api_key("alice").raw_key
    write_id = f"write-{uuid.uuid4().hex}"
    message_id = f"message-{uuid.uuid4().hex}"

    with serve_process(_env(tmp_path / "metrics")) as serve:
        write_status, write_header = _put(
            serve.base_url,
            key,
            "/api/v1/workspace/documents/notes/plan.md",
            {"content": "a plan worth indexing"},
            write_id,
        )
        message_status, message_header = _post(
            serve.base_url,
            key,
            "/api/v1/messages",
            {"channel": "web", "content": "hi"},
            message_id,
        )
        access = _wait_for_line(
            serve,
            lambda line: (
                line.get("logger") == "ironclaw_site.access" and line.get("request_id") == write_id
            ),
        )
        indexed = _wait_for_line(
            serve,
            lambda line: (
                line.get("logger") == "workspace.services.indexing"
                and line.get("request_id") == write_id
            ),
        )
        claimed = _wait_for_line(
            serve,
            lambda line: (
                "claimed" in line.get("message", "") and line.get("request_id") == message_id
            ),
        )
        ended = _wait_for_line(
            serve,
            lambda line: (
                "ended" in line.get("message", "") and line.get("request_id") == message_id
            ),
        )
        output = serve.output()

    assert write_status == 200
    assert write_header == write_id
    assert message_status == 202
    assert message_header == message_id
    assert access["route"] == DOCUMENT_ROUTE
    assert access["status"] == write_status
    assert access["method"] == "PUT"
    assert access["tenant"] == "alice"
    assert isinstance(access["duration_ms"], float)
    assert access["duration_ms"] > 0
    assert access["level"] == "INFO"
    assert access["time"].endswith("+00:00")
    assert indexed["message"].startswith("indexed document")
    assert indexed["tenant"] == "alice"
    assert claimed["tenant"] == "alice"
    assert claimed["thread_id"] == ended["thread_id"]
    assert ended["outcome"] == "completed"
    assert "Logging error" not in output

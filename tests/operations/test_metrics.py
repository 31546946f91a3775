"""``/metrics`` in one process: who may scrape it, and what it says about the database."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

import pytest
from django.db import connection
from django.test import Client
from django.utils import timezone
from procrastinate.contrib.django.models import ProcrastinateJob
from prometheus_client import REGISTRY
from pytest_django.fixtures import Settings as SettingsWrapper
from rest_framework.test import APIClient

from operations.metrics_endpoint import STATUS_DEADLINE_S
from operations.workers import WORKER_NAME_INSERT_SQL, worker_name_params
from tests.conversations.factories import ThreadFactory
from tests.support.locks import table_locked
from tests.support.metrics import metric_sample
from tests.support.servers import free_port
from workspace.services import document_write

pytestmark = pytest.mark.django_db

REMOTE = "203.0.113.7"


def test_metrics_answer_a_loopback_client_with_the_database_state(client: Client) -> None:
    response = client.get("/metrics", REMOTE_ADDR="127.0.0.1")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    assert metric_sample(text, "ironclaw_system_status_up") == 1
    assert metric_sample(text, "ironclaw_threads", state="running") == 0
    assert metric_sample(text, "ironclaw_jobs", queue="indexing", status="waiting") == 0
    assert metric_sample(text, "ironclaw_indexing_backlog_documents") == 0
    assert metric_sample(text, "ironclaw_indexing_backlog_oldest_seconds") == 0
    assert metric_sample(text, "ironclaw_turns_failed_recently", kind="all") == 0
    assert metric_sample(text, "ironclaw_turns_failed_recently", kind="timed_out") == 0


# The figures are read on a thread of their own (its own connection): the rows must be committed.
@pytest.mark.django_db(transaction=True)
def test_metrics_count_recent_failures_and_workers_live_or_stale(
    client: Client, settings: SettingsWrapper
) -> None:
    settings.WORKER_STALLED_SECONDS = 30
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM procrastinate_workers")
        for silent in (0, 0, 120):
            cursor.execute("SELECT worker_id FROM procrastinate_register_worker_v1()")
            (worker_id,) = cursor.fetchone()
            cursor.execute(
                "UPDATE procrastinate_workers"
                " SET last_heartbeat = now() - make_interval(secs => %s) WHERE id = %s",
                [silent, worker_id],
            )
            cursor.execute(
                WORKER_NAME_INSERT_SQL, worker_name_params(worker_id=worker_id, name="turns")
            )
    for error in ("model error: 500", "the turn timed out after 600 s"):
        ThreadFactory.create(
            state="failed",
            tracked=False,
            finished_at=timezone.now(),
            outcome={"kind": "failed", "error": error},
        )

    text = client.get("/metrics", REMOTE_ADDR="127.0.0.1").content.decode()

    assert metric_sample(text, "ironclaw_turns_failed_recently", kind="all") == 2
    assert metric_sample(text, "ironclaw_turns_failed_recently", kind="timed_out") == 1
    assert metric_sample(text, "ironclaw_workers", kind="turns", state="live") == 2
    assert metric_sample(text, "ironclaw_workers", kind="turns", state="stale") == 1


def test_metrics_answer_an_ipv6_loopback_client(client: Client) -> None:
    response = client.get("/metrics", REMOTE_ADDR="::1")

    assert response.status_code == 200


@pytest.mark.parametrize(
    "forwarded",
    [
        {"X-Forwarded-For": REMOTE},
        {"Forwarded": f"for={REMOTE}"},
        {"X-Real-IP": REMOTE},
    ],
)
def test_metrics_treat_a_request_forwarded_by_a_local_proxy_as_remote(
    client: Client, settings: SettingsWrapper, forwarded: dict[str, str]
) -> None:
    settings.METRICS_TOKEN = "s3cret-token"

    refused = client.get("/metrics", REMOTE_ADDR="127.0.0.1", headers=forwarded)
    allowed = client.get(
        "/metrics",
        REMOTE_ADDR="127.0.0.1",
        headers={**forwarded, "Authorization": "Bearer s3cret-token"},
    )

    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "metrics_forbidden"
    assert allowed.status_code == 200


def test_metrics_refuse_a_remote_client_when_no_token_is_configured(
    client: Client, settings: SettingsWrapper
) -> None:
    settings.METRICS_TOKEN = None

    response = client.get("/metrics", REMOTE_ADDR=REMOTE, HTTP_AUTHORIZATION="Bearer anything")

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "metrics_forbidden"


def test_metrics_refuse_a_remote_client_without_a_token(
    client: Client, settings: SettingsWrapper
) -> None:
    settings.METRICS_TOKEN = "s3cret-token"

    response = client.get("/metrics", REMOTE_ADDR=REMOTE)

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "metrics_forbidden"


def test_metrics_refuse_a_remote_client_with_a_wrong_token(
    client: Client, settings: SettingsWrapper
) -> None:
    settings.METRICS_TOKEN = "s3cret-token"

    response = client.get("/metrics", REMOTE_ADDR=REMOTE, HTTP_AUTHORIZATION="Bearer s3cret-tokeN")

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_token"
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_metrics_answer_a_remote_client_with_the_token(
    client: Client, settings: SettingsWrapper
) -> None:
    settings.METRICS_TOKEN = "s3cret-token"

    response = client.get("/metrics", REMOTE_ADDR=REMOTE, HTTP_AUTHORIZATION="Bearer s3cret-token")

    assert response.status_code == 200
    assert b"ironclaw_http_request_duration_seconds" in response.content


def test_request_id_from_the_client_is_returned(api_client: APIClient) -> None:
    response = api_client.get("/healthz", HTTP_X_REQUEST_ID="trace-42/abc")

    assert response["X-Request-Id"] == "trace-42/abc"


@pytest.mark.parametrize(
    "sent", [None, "", "x" * 129, "bad\nline", "caf\u00e9", " padded "], ids=repr
)
def test_a_missing_or_unfit_request_id_is_replaced_by_a_new_one(
    api_client: APIClient, sent: str | None
) -> None:
    headers = {} if sent is None else {"X-Request-Id": sent}

    response = api_client.get("/healthz", headers=headers)

    assert re.fullmatch(r"[0-9a-f]{32}", response["X-Request-Id"])


def test_a_job_deferred_by_a_request_carries_its_request_id(
    tenant_client: Callable[[str], APIClient],
) -> None:
    client = tenant_client("alice")

    response = client.put(
        "/api/v1/workspace/documents/notes/plan.md",
        {"content": "a plan worth indexing"},
        format="json",
        HTTP_X_REQUEST_ID="req-plan-1",
    )

    assert response.status_code in (200, 201), response.content
    job = ProcrastinateJob.objects.get(task_name="workspace.index_document")
    assert job.args["_request_id"] == "req-plan-1"


def test_a_failed_embedding_is_counted_and_logged_with_its_tenant(
    settings: SettingsWrapper, caplog: pytest.LogCaptureFixture
) -> None:
    settings.WORKSPACE_INDEXING = "inline"
    settings.EMBEDDING_PROVIDER = "openai"
    settings.EMBEDDING_BASE_URL = f"http://127.0.0.1:{free_port()}"
    settings.EMBEDDING_MAX_RETRIES = 0
    before = REGISTRY.get_sample_value("ironclaw_embedding_errors_total") or 0.0

    with caplog.at_level(logging.WARNING, logger="workspace.services.indexing"):
        document = document_write(user_id="alice", path="a.md", content="Ferns love shade.")

    after = REGISTRY.get_sample_value("ironclaw_embedding_errors_total")
    assert after == before + 1
    [failure] = [record for record in caplog.records if "embedding failed" in record.message]
    assert failure.__dict__["tenant"] == "alice"
    assert failure.__dict__["document_id"] == str(document.id)


def test_runtime_and_document_writes_are_counted_by_kind() -> None:
    def writes(kind: str) -> float:
        return REGISTRY.get_sample_value("ironclaw_workspace_writes_total", {"kind": kind}) or 0.0

    runtime_before, document_before = writes("runtime"), writes("document")

    document_write(user_id="alice", path="engine/.runtime/state.json", content="{}")
    document_write(user_id="alice", path="engine/.runtime/state.json", content='{"a": 1}')
    document_write(user_id="alice", path="notes.md", content="notes")

    assert writes("runtime") - runtime_before == 2
    assert writes("document") - document_before == 1


@pytest.mark.django_db(transaction=True)
def test_a_scrape_answers_in_time_while_the_database_cannot_and_recovers_after(
    client: Client,
) -> None:
    with table_locked("conversations_thread"):
        started = time.monotonic()
        blocked = client.get("/metrics", REMOTE_ADDR="127.0.0.1")
        waited = time.monotonic() - started

    assert blocked.status_code == 200
    text = blocked.content.decode()
    assert metric_sample(text, "ironclaw_system_status_up") == 0
    # The process's own series are still there: the scrape is not lost with the database.
    assert "ironclaw_http_request_duration_seconds" in text
    # Well inside Prometheus's default 10 s scrape timeout (a blocked read once took 22 s).
    assert waited < STATUS_DEADLINE_S + 2

    # The lock is gone: within a few scrapes the database answers again.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        again = client.get("/metrics", REMOTE_ADDR="127.0.0.1").content.decode()
        if metric_sample(again, "ironclaw_system_status_up") == 1:
            break
        time.sleep(0.2)
    assert metric_sample(again, "ironclaw_system_status_up") == 1


def test_a_made_up_method_is_one_series_not_one_per_method(client: Client) -> None:
    for method in ("QQ123", "BREW", "X" * 200):
        client.generic(method, "/api/v1/me", REMOTE_ADDR="127.0.0.1")

    text = client.get("/metrics", REMOTE_ADDR="127.0.0.1").content.decode()

    methods = set(
        re.findall(r'ironclaw_http_request_duration_seconds_count\{[^}]*method="([^"]*)"', text)
    )
    assert "other" in methods
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}

"""The admin index is the operators' dashboard: each figure is right and links to its list."""

from __future__ import annotations

import datetime
import re
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from conversations.models import Thread
from conversations.services import message_handle, thread_claim
from core import admin as ironclaw_admin
from core.admin import TenantPrefixFilter
from operations import admin_site
from tests.support.locks import table_locked
from tests.workspace.factories import ChunkFactory, DocumentFactory, DocumentVersionFactory
from workspace.models import IndexState

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_earlier_jobs() -> None:
    """Transactional tests leave their jobs behind (Procrastinate's tables are not flushed): the
    queue figures count this test's jobs only (the delete is rolled back with the test)."""
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM procrastinate_jobs")


def _figures(html: str) -> dict[str, tuple[str, str]]:
    """data-figure name -> (href, value) of every linked figure on the dashboard."""
    return {
        name: (href.replace("&amp;", "&"), value)
        for href, name, value in re.findall(
            r'<a href="([^"]*)" data-figure="([^"]+)">([^<]*)</a>', html
        )
    }


def _stuck_running_thread(channel: str) -> Thread:
    sent = message_handle(user_id="alice", channel=channel, content="hello")
    thread_claim(user_id="alice", thread_id=sent.thread_id, worker_id="w1")
    Thread.objects.filter(pk=sent.thread_id).update(
        lease_expires_at=timezone.now() - datetime.timedelta(minutes=3)
    )
    return Thread.objects.get(pk=sent.thread_id)


def test_dashboard_shows_live_threads_queues_and_indexing(admin_client: Client) -> None:
    message_handle(user_id="alice", channel="web", content="hello")
    message_handle(user_id="bob", channel="web", content="hello")
    _stuck_running_thread("cli")
    DocumentFactory.create(index_state=IndexState.PENDING)
    DocumentFactory.create(index_state=IndexState.FAILED)
    runtime = DocumentFactory.create(
        path="engine/.runtime/state.json", index_state=IndexState.INDEXED
    )
    # Written while the path was not runtime, then flagged runtime by hand: the alarm case.
    ChunkFactory.create(document=runtime)
    DocumentVersionFactory.create(document=runtime)
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE workspace_document DISABLE TRIGGER USER")
        cursor.execute(
            "UPDATE workspace_document SET is_runtime = true WHERE id = %s", [runtime.pk]
        )
        cursor.execute("ALTER TABLE workspace_document ENABLE TRIGGER USER")

    response = admin_client.get("/admin/")

    html = response.content.decode()
    figures = _figures(html)
    assert response.status_code == 200
    assert figures["threads-created"] == (
        "/admin/conversations/thread/?state__exact=created",
        "2",
    )
    assert figures["threads-running"][1] == "1"
    assert figures["threads-running-with-an-expired-lease"] == (
        "/admin/conversations/thread/?lease=expired",
        "1",
    )
    # The threads queue is the thread rows: two created (waiting), one running.
    assert figures["queue-threads-waiting"] == (
        "/admin/conversations/thread/?state__exact=created",
        "2",
    )
    assert figures["queue-threads-doing"] == (
        "/admin/conversations/thread/?state__exact=running",
        "1",
    )
    assert figures["documents-indexing-backlog-pending"][1] == "1"
    assert figures["documents-embedding-errors-in-the-last-hour"][1] == "1"
    assert figures["documents-runtime-documents-with-chunks-should-be-0"] == (
        "/admin/workspace/document/?is_runtime__exact=1&chunks=yes",
        "1",
    )
    assert figures["documents-runtime-documents-with-versions-should-be-0"][1] == "1"
    assert 'id="readiness"' in html


def test_every_dashboard_link_opens_a_list_with_what_it_counts(admin_client: Client) -> None:
    stuck = _stuck_running_thread("web")
    DocumentFactory.create(index_state=IndexState.FAILED, path="broken.md")
    figures = _figures(admin_client.get("/admin/").content.decode())

    pages = {name: admin_client.get(href) for name, (href, _) in figures.items()}

    assert all(page.status_code == 200 for page in pages.values()), {
        name: page.status_code for name, page in pages.items() if page.status_code != 200
    }
    expired = pages["threads-running-with-an-expired-lease"].content.decode()
    assert str(stuck.pk) in expired
    failed = pages["documents-embedding-errors-in-the-last-hour"].content.decode()
    assert "broken.md" in failed


@pytest.mark.django_db(transaction=True)
def test_dashboard_says_so_when_the_database_is_too_slow(
    admin_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(admin_site, "DASHBOARD_STATEMENT_TIMEOUT_MS", 200)

    # A migration or a stuck transaction holding the threads table: the counts cannot be read.
    with table_locked("conversations_thread"):
        response = admin_client.get("/admin/")

    assert response.status_code == 200
    assert "The figures are unavailable" in response.content.decode()
    assert "within 200 ms" in response.content.decode()
    # The verdict says so too: the figures it would judge are missing.
    assert 'id="health" class="health-degraded" data-level="degraded"' in response.content.decode()
    assert 'data-reason="status_unavailable"' in response.content.decode()


def test_dashboard_query_count_does_not_grow_with_threads_or_jobs(
    admin_client: Client, django_assert_num_queries: Any
) -> None:
    _stuck_running_thread("web")
    admin_client.get("/admin/")  # warm the session and content-type caches
    with django_assert_num_queries(DASHBOARD_QUERIES):
        admin_client.get("/admin/")
    for number in range(30):
        message_handle(user_id=f"user-{number}", channel="web", content="hello")

    with django_assert_num_queries(DASHBOARD_QUERIES):
        response = admin_client.get("/admin/")

    assert response.status_code == 200


def test_view_site_link_is_gone(admin_client: Client) -> None:
    response = admin_client.get("/admin/")

    assert "View site" not in response.content.decode()


DASHBOARD_QUERIES = 26


def test_job_list_has_no_filter_growing_with_threads_and_lists_a_threads_jobs(
    admin_client: Client,
) -> None:
    sent = message_handle(user_id="alice", channel="web", content="hello")
    other = message_handle(user_id="alice", channel="other", content="hello")

    listing = admin_client.get("/admin/procrastinate/procrastinatejob/")
    one_thread = admin_client.get(
        "/admin/procrastinate/procrastinatejob/", {"queueing_lock": f"thread-run:{sent.thread_id}"}
    )

    assert listing.status_code == 200
    assert "queueing_lock=" not in listing.content.decode()  # no filter link per lock
    assert str(sent.thread_id) in one_thread.content.decode()
    assert str(other.thread_id) not in one_thread.content.decode()


def test_tenant_filter_is_served_by_the_tenant_index(rf: Any) -> None:
    request = rf.get("/admin/conversations/thread/", {"tenant": "ali"})
    tenant = TenantPrefixFilter(request, {"tenant": ["ali"]}, Thread, None)  # type: ignore[dict-item, arg-type]

    with connection.cursor() as cursor:
        # An empty test table is scanned whatever the indexes: ask whether an index can serve it.
        cursor.execute("SET LOCAL enable_seqscan = off")
        plan = tenant.queryset(request, Thread.objects.all()).explain()

    assert "thread_user_newest_idx" in plan


def test_long_lists_stop_counting_at_the_limit(
    admin_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ironclaw_admin, "LIST_COUNT_LIMIT", 2)
    for number in range(5):
        message_handle(user_id="alice", channel=f"web-{number}", content="hello")

    with CaptureQueriesContext(connection) as captured:
        response = admin_client.get("/admin/conversations/thread/")

    counts = [query["sql"] for query in captured if "COUNT(" in query["sql"].upper()]
    assert response.status_code == 200
    assert "3 threads" in response.content.decode()
    assert len(counts) == 1
    assert "LIMIT 3" in counts[0]


@pytest.mark.parametrize(
    "url",
    [
        "/admin/conversations/thread/?tenant=%00",
        "/admin/workspace/chunk/?tenant=ali%00ce",
        "/admin/procrastinate/procrastinatejob/?status=x",
        "/admin/procrastinate/procrastinatejob/?status__exact=bogus",
    ],
)
def test_hostile_filter_values_are_not_server_errors(admin_client: Client, url: str) -> None:
    response = admin_client.get(url)

    assert response.status_code in {200, 302}
    if response.status_code == 302:
        assert response["Location"].endswith("?e=1")

"""The dashboard's top: the health banner, the last hour's failures, every queue and every worker,
rendered from a real database state."""

from __future__ import annotations

import datetime
import os
import re
import socket
import uuid

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from procrastinate.contrib.django import app
from pytest_django.fixtures import Settings as SettingsWrapper

from conversations.models import Thread
from conversations.services import (
    ThreadOutcome,
    lease_owner_id,
    message_handle,
    thread_claim,
    thread_claim_runnable,
    thread_outcome_record,
    thread_stop,
)
from operations.system_status import recent_turns
from operations.turn_failures import latest_failures
from operations.workers import WORKER_NAME_INSERT_SQL, worker_name_params

pytestmark = pytest.mark.django_db

TIMEOUT_ERROR = "the turn timed out after 600 s (ENGINE_TURN_TIMEOUT_S)"


@pytest.fixture(autouse=True)
def _no_earlier_workers_or_jobs() -> None:
    """Transactional tests leave workers and jobs behind (Procrastinate's tables are not
    flushed): the dashboard shows this test's only (the deletes are rolled back with it)."""
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM procrastinate_jobs")
        cursor.execute("DELETE FROM procrastinate_workers")


def _banner(html: str) -> tuple[str, dict[str, tuple[str, str]]]:
    """The banner's level, and data-reason -> (level, text) of each reason."""
    level = re.search(r'<section id="health" [^>]*data-level="([a-z]+)"', html)
    assert level is not None, html
    reasons = {
        key: (reason_level, re.sub(r"<[^>]+>", "", text).strip())
        for key, reason_level, text in re.findall(
            r'<li data-reason="([a-z_]+)" data-level="([a-z]+)">(.*?)</li>', html, re.S
        )
    }
    return level.group(1), reasons


def _section(html: str, section_id: str) -> str:
    found = re.search(rf'<section id="{section_id}">(.*?)</section>', html, re.S)
    assert found is not None, section_id
    return found.group(1)


def _waiting_since(ago: datetime.timedelta) -> uuid.UUID:
    sent = message_handle(user_id="alice", channel=f"web-{uuid.uuid4().hex[:6]}", content="hi")
    Thread.objects.filter(pk=sent.thread_id).update(
        created_at=timezone.now() - ago, enqueued_at=timezone.now() - ago
    )
    return sent.thread_id


def _ended(tenant: str, outcome: ThreadOutcome, *, ago: datetime.timedelta | None = None) -> str:
    sent = message_handle(user_id=tenant, channel=f"web-{uuid.uuid4().hex[:6]}", content="hi")
    thread_claim(user_id=tenant, thread_id=sent.thread_id, worker_id="engine-1")
    thread_outcome_record(
        user_id=tenant, thread_id=sent.thread_id, outcome=outcome, worker_id="engine-1"
    )
    if ago is not None:
        Thread.objects.filter(pk=sent.thread_id).update(finished_at=timezone.now() - ago)
    return str(sent.thread_id)


def _registered_worker(kind: str, *, heartbeat_age: float = 0.0) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT worker_id FROM procrastinate_register_worker_v1()")
        (worker_id,) = cursor.fetchone()
        cursor.execute(WORKER_NAME_INSERT_SQL, worker_name_params(worker_id=worker_id, name=kind))
        cursor.execute(
            "UPDATE procrastinate_workers SET last_heartbeat = now() - make_interval(secs => %s)"
            " WHERE id = %s",
            [heartbeat_age, worker_id],
        )
    return int(worker_id)


def test_a_quiet_system_is_healthy(admin_client: Client) -> None:
    html = admin_client.get("/admin/").content.decode()

    assert _banner(html) == ("healthy", {})
    assert "Health: <strong>healthy</strong> — nothing needs a look." in html


@pytest.mark.parametrize(
    ("waited", "level", "said"),
    [
        # The page's clock is the test transaction's, which began a moment before.
        (datetime.timedelta(seconds=45), "degraded", r"has waited 4[45] s for a worker"),
        (datetime.timedelta(minutes=3), "down", r"has waited (2 min 59|3 min 0) s for a worker"),
    ],
)
def test_a_turn_waiting_too_long_degrades_then_downs_the_banner(
    admin_client: Client, waited: datetime.timedelta, level: str, said: str
) -> None:
    _waiting_since(waited)

    html = admin_client.get("/admin/").content.decode()

    banner_level, reasons = _banner(html)
    assert banner_level == level
    assert reasons["queue_wait"][0] == level
    assert re.search(said, reasons["queue_wait"][1])
    assert '<a href="/admin/conversations/thread/?state__exact=created">The oldest' in html


def test_a_missing_required_worker_is_down_with_the_readyz_message(
    admin_client: Client, settings: SettingsWrapper
) -> None:
    settings.READYZ_WORKERS = ["turns"]

    level, reasons = _banner(admin_client.get("/admin/").content.decode())

    assert level == "down"
    assert reasons["workers_missing"] == (
        "down",
        "down: /readyz: No live turns worker; jobs on its queues wait until one starts.",
    )


def test_failures_of_the_last_hour_are_listed_newest_first_with_their_error(
    admin_client: Client,
) -> None:
    old = _ended(
        "alice", ThreadOutcome(kind="failed", error="old"), ago=datetime.timedelta(hours=2)
    )
    completed = _ended("alice", ThreadOutcome(kind="completed", response="done"))
    failed = _ended("bob", ThreadOutcome(kind="failed", error="the model <b>exploded</b>"))
    timed_out = _ended("carol", ThreadOutcome(kind="failed", error=TIMEOUT_ERROR))
    stopping = message_handle(user_id="dave", channel="web", content="hi")
    thread_stop(user_id="dave", thread_id=stopping.thread_id)
    stopped = str(stopping.thread_id)

    html = admin_client.get("/admin/").content.decode()

    failures = _section(html, "failures")
    assert re.findall(r'<tr data-thread="([0-9a-f-]+)">', failures) == [stopped, timed_out, failed]
    assert f'<a href="/admin/conversations/thread/{failed}/change/" title="{failed}">' in failures
    assert "the model &lt;b&gt;exploded&lt;/b&gt;" in failures
    assert "failed (timed out)" in failures
    assert "stopped by an operator" in failures
    assert old not in failures
    assert completed not in failures
    _, reasons = _banner(html)
    assert reasons["failed_turns"] == (
        "degraded",
        "degraded: 2 turns failed in the last 15 minutes, 1 of them timed out.",
    )
    link = re.search(r'<a href="([^"]+)" data-figure="failures-all">all 3</a>', failures)
    assert link is not None
    listed = admin_client.get(link.group(1).replace("&amp;", "&")).content.decode()
    assert all(thread in listed for thread in (failed, timed_out, stopped))
    assert old not in listed
    assert completed not in listed


def test_the_failures_list_shows_the_latest_twenty_and_counts_them_all(
    admin_client: Client,
) -> None:
    for number in range(22):
        _ended(f"user-{number}", ThreadOutcome(kind="failed", error=f"error {number}"))

    failures = _section(admin_client.get("/admin/").content.decode(), "failures")

    assert len(re.findall(r"<tr data-thread=", failures)) == 20
    assert 'data-figure="failures-all">all 22</a>' in failures
    assert "error 21" in failures
    assert "error 0<" not in failures


def test_the_queues_table_lists_every_queue_even_when_empty(admin_client: Client) -> None:
    app.configure_task(name="some.task", queue="extra").defer()

    queues = _section(admin_client.get("/admin/").content.decode(), "dashboard-queues")

    assert re.findall(r'<tr data-queue="([a-z]+)">', queues) == [
        "default",
        "extra",
        "indexing",
        "threads",
        "webhooks",
    ]
    indexing = re.search(r'<tr data-queue="indexing">(.*?)</tr>', queues, re.S)
    assert indexing is not None
    cells = re.findall(r'<td class="figure">(?:<a [^>]*>)?([^<]*)', indexing.group(1))
    assert cells == ["0", "-", "0", "0"]


def test_the_workers_table_shows_every_worker_its_host_heartbeat_and_turns(
    admin_client: Client, settings: SettingsWrapper
) -> None:
    settings.WORKER_STALLED_SECONDS = 30
    turns = _registered_worker("turns")
    background = _registered_worker("background", heartbeat_age=3)
    dead = _registered_worker("turns", heartbeat_age=300)
    message_handle(user_id="alice", channel="web", content="hello")
    assert thread_claim_runnable(worker_id=lease_owner_id(worker_row=turns), lease_seconds=60)

    workers = _section(admin_client.get("/admin/").content.decode(), "workers")

    rows = {
        int(worker): row
        for worker, row in re.findall(r'<tr data-worker="(\d+)"([^\n]*\n.*?)</tr>', workers, re.S)
    }
    cells = {
        worker: [cell.strip() for cell in re.findall(r"<t[hd][^>]*>([^<]*)</t[hd]>", row)]
        for worker, row in rows.items()
    }
    assert cells[turns][:3] == ["turns", socket.gethostname(), str(os.getpid())]
    assert cells[turns][5] == "1"
    assert cells[background][0] == "background"
    assert cells[background][5] == "-"
    assert cells[background][4].endswith("s ago")
    assert cells[dead][4] == "5 min 0 s ago (stale)"
    assert 'class="alarming" data-stale="true"' in rows[dead]
    assert "alarming" not in rows[turns]
    assert "alarming" not in rows[background]
    _, reasons = _banner(admin_client.get("/admin/").content.decode())
    assert reasons["workers_stale"][0] == "degraded"


def test_the_thread_list_filters_by_finish_time(admin_client: Client) -> None:
    recent = _ended("alice", ThreadOutcome(kind="completed"), ago=datetime.timedelta(minutes=5))
    within_the_hour = _ended(
        "alice", ThreadOutcome(kind="failed", error="x"), ago=datetime.timedelta(minutes=30)
    )
    yesterday = _ended("alice", ThreadOutcome(kind="completed"), ago=datetime.timedelta(hours=30))

    pages = {
        window: admin_client.get("/admin/conversations/thread/", {"finished": window})
        for window in ("15m", "1h", "1d", "bogus")
    }

    listed = {
        window: {t for t in (recent, within_the_hour, yesterday) if t in page.content.decode()}
        for window, page in pages.items()
    }
    assert listed == {
        "15m": {recent},
        "1h": {recent, within_the_hour},
        "1d": {recent, within_the_hour},
        "bogus": {recent, within_the_hour, yesterday},
    }


def test_the_dashboards_turn_queries_read_the_finished_index() -> None:
    with CaptureQueriesContext(connection) as captured:
        recent_turns()
    with connection.cursor() as cursor:
        # An empty test table is scanned whatever the indexes: ask whether an index can serve it.
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("EXPLAIN " + captured[0]["sql"])
        counts_plan = "\n".join(row[0] for row in cursor.fetchall())
        failures_plan = latest_failures().explain()

    assert "thread_finished_idx" in counts_plan
    assert "thread_finished_idx" in failures_plan

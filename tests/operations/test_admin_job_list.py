"""The job list: one line a job in text columns, periodic jobs hidden unless asked for."""

from __future__ import annotations

import datetime
import re
import uuid

import pytest
from django.db import connection
from django.test import Client
from django.utils import timezone
from procrastinate.contrib.django import app
from procrastinate.contrib.django.admin import JOB_STATUS_EMOJI_MAPPING
from procrastinate.contrib.django.models import ProcrastinateEvent
from procrastinate.types import JSONValue

from operations.admin import periodic_task_names
from workspace.services import INDEX_DOCUMENT_TASK

pytestmark = pytest.mark.django_db

JOBS = "/admin/procrastinate/procrastinatejob/"
PERIODIC_TASK = "conversations.tasks.sweep_expired_leases"


@pytest.fixture(autouse=True)
def _no_earlier_jobs() -> None:
    """Transactional tests leave their jobs behind (Procrastinate's tables are not flushed)."""
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM procrastinate_jobs")


def _job(task: str, queue: str = "default", status: str = "todo", **args: JSONValue) -> int:
    job_id = app.configure_task(name=task, queue=queue).defer(**args)
    # Procrastinate's models are read-only: the status is set as a worker would.
    with connection.cursor() as cursor:
        cursor.execute("UPDATE procrastinate_jobs SET status = %s WHERE id = %s", [status, job_id])
    return job_id


def _rows(html: str) -> dict[int, str]:
    """Job id -> its row's markup."""
    body = html[html.index("<tbody>") : html.index("</tbody>")]
    return {
        int(match.group(1)): row
        for row in body.split("<tr>")[1:]
        if (match := re.search(r'<th class="field-pk"><a [^>]*>(\d+)</a>', row))
    }


def test_periodic_tasks_are_the_ones_the_periodic_deferrer_runs() -> None:
    assert PERIODIC_TASK in periodic_task_names()
    assert INDEX_DOCUMENT_TASK not in periodic_task_names()


def test_periodic_jobs_are_hidden_unless_asked_for(admin_client: Client) -> None:
    indexing = _job(INDEX_DOCUMENT_TASK, "indexing", document_id=str(uuid.uuid4()))
    periodic = _job(PERIODIC_TASK, timestamp=1_700_000_000)

    default = _rows(admin_client.get(JOBS).content.decode())
    only = _rows(admin_client.get(JOBS, {"periodic": "only"}).content.decode())
    every = _rows(admin_client.get(JOBS, {"periodic": "all"}).content.decode())

    assert list(default) == [indexing]
    assert list(only) == [periodic]
    assert list(every) == [periodic, indexing]


def test_statuses_are_words_with_a_class_not_emoji(admin_client: Client) -> None:
    statuses = ["todo", "doing", "succeeded", "failed", "cancelled", "aborted"]
    ids = {status: _job(INDEX_DOCUMENT_TASK, "indexing", status) for status in statuses}

    html = admin_client.get(JOBS).content.decode()
    page = admin_client.get(f"{JOBS}{ids['failed']}/change/").content.decode()

    rows = _rows(html)
    for status, job_id in ids.items():
        cell = f'<td class="field-pretty_status"><span class="job-status job-{status}">{status}'
        assert cell in rows[job_id]
    for emoji in JOB_STATUS_EMOJI_MAPPING.values():
        assert emoji not in html
        assert emoji not in page
    assert '<span class="job-status job-failed">failed</span>' in page
    assert "operations/job_list.css" in html


def test_each_job_is_one_line_of_summary_columns(admin_client: Client) -> None:
    thread_id = str(uuid.uuid4())
    job_id = _job("conversations.run_thread", "threads", thread_id=thread_id, note="n" * 300)

    html = admin_client.get(JOBS).content.decode()

    columns = re.findall(r'<th scope="col" class="[^"]*column-(\w+)', html)
    assert columns == [
        "pk",
        "short_task_name",
        "queue",
        "pretty_status",
        "tries",
        "moment",
        "compact_args",
    ]
    row = _rows(html)[job_id]
    assert "\n" not in row.strip()
    assert not re.search(r"<(pre|ul|li|br|p)\b", row)
    assert '<td class="field-queue">threads</td>' in row
    deferred = timezone.localtime(ProcrastinateEvent.objects.get(job_id=job_id).at)
    # Today's moment without its date (a job deferred just before midnight aside).
    moment = f'<span title="{deferred:%Y-%m-%d %H:%M:%S}">{deferred:%H:%M}</span>'
    assert f'<td class="field-moment">{moment}</td>' in row
    assert f'<a href="/admin/conversations/thread/{thread_id}/change/">' in row
    # The argument is cut in the cell, whole in the tooltip.
    assert f"&quot;note&quot;: &quot;{'n' * 300}&quot;" in row
    assert f"note={'n' * 39}… thread_id=" in row


def test_a_document_argument_links_to_the_document(admin_client: Client) -> None:
    document_id = str(uuid.uuid4())
    job_id = _job(INDEX_DOCUMENT_TASK, "indexing", document_id=document_id, request_id="r-1")

    row = _rows(admin_client.get(JOBS).content.decode())[job_id]

    assert f'<a href="/admin/workspace/document/{document_id}/change/">' in row
    assert "request_id=r-1" in row


def test_queue_and_task_filters_keep_the_dashboards_parameters(admin_client: Client) -> None:
    failed = _job(INDEX_DOCUMENT_TASK, "indexing", "failed", document_id=str(uuid.uuid4()))
    _job(INDEX_DOCUMENT_TASK, "indexing", "todo", document_id=str(uuid.uuid4()))
    _job("ironclaw_site.tasks.other", "default", "failed")

    by_queue = admin_client.get(JOBS, {"queue_name__exact": "indexing", "status__exact": "failed"})
    by_task = admin_client.get(JOBS, {"task_name__exact": INDEX_DOCUMENT_TASK, "status": "failed"})

    assert list(_rows(by_queue.content.decode())) == [failed]
    assert list(_rows(by_task.content.decode())) == [failed]
    html = by_queue.content.decode()
    assert '<a href="?queue_name__exact=default&amp;status__exact=failed">default</a>' in html
    assert "builtin" not in html


def test_a_started_job_shows_its_latest_start(admin_client: Client) -> None:
    job_id = _job(INDEX_DOCUMENT_TASK, "indexing", "doing", document_id=str(uuid.uuid4()))
    started = ProcrastinateEvent.objects.get(job_id=job_id, type="started").at
    assert started is not None
    shown = timezone.localtime(started)

    row = _rows(admin_client.get(JOBS).content.decode())[job_id]

    assert f'<span title="{shown:%Y-%m-%d %H:%M:%S}">{shown:%H:%M}</span>' in row


def test_a_moment_before_today_shows_its_date(admin_client: Client) -> None:
    job_id = _job(INDEX_DOCUMENT_TASK, "indexing", "todo", document_id=str(uuid.uuid4()))
    due = timezone.now() - datetime.timedelta(days=3)
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE procrastinate_jobs SET scheduled_at = %s WHERE id = %s", [due, job_id]
        )
    shown = timezone.localtime(due)

    row = _rows(admin_client.get(JOBS).content.decode())[job_id]

    assert f'<span title="{shown:%Y-%m-%d %H:%M:%S}">{shown:%Y-%m-%d %H:%M}</span>' in row

"""The admin's lists as an operator sees them in a real headless Chromium: a job is one line with
its summary columns on screen, a conversation page's rows have no caption line.

Playwright's sync API runs an event loop in this thread, so the database is written before the
browser starts and read after it closes (see test_admin_browser).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from procrastinate.contrib.django import app

from conversations.services import message_handle
from tests.support.browser import BROWSER_MARKS, SCREENSHOTS, Page, admin_sign_in, chromium
from tests.support.servers import app_server, database_url
from workspace.services import INDEX_DOCUMENT_TASK

if TYPE_CHECKING:
    from playwright.sync_api import ViewportSize

pytestmark = [*BROWSER_MARKS, pytest.mark.django_db(transaction=True)]

PASSWORD = "operator-password-1"
VIEWPORT: ViewportSize = {"width": 1280, "height": 900}
# One line of the admin's 13 px text with its cell padding (about 35 px in a list, 43 in a form's
# inline table); a second line, or the caption line Django's inline rows had, makes it 60 or more.
ONE_LINE_PX = 48


def _purge_jobs() -> None:
    # Procrastinate's tables are not flushed between transactional tests.
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM procrastinate_jobs")


@pytest.fixture
def conversation_id() -> Iterator[str]:
    _purge_jobs()
    get_user_model().objects.create_superuser("operator", "ops@example.com", PASSWORD)
    for number in range(30):
        app.configure_task(name=INDEX_DOCUMENT_TASK, queue="indexing").defer(
            document_id=str(uuid.uuid4()), request_id="r" * 64
        )
        app.configure_task(name="conversations.run_thread", queue="threads").defer(
            thread_id=str(uuid.uuid4()), goal=f"a long goal {number} " * 20
        )
    sent = message_handle(user_id="alice", channel="web", content="hello " * 5)
    for number in range(5):
        message_handle(user_id="alice", channel="web", content=f"more {number}")
    yield str(sent.conversation_id)
    _purge_jobs()


def _row_heights(page: Page, rows: str) -> list[float]:
    return [box["height"] for row in page.locator(rows).all() if (box := row.bounding_box())]


def test_jobs_and_conversation_rows_are_one_line_each(conversation_id: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    env = {"DATABASE_URL": database_url(connection.settings_dict)}
    with app_server(env) as base_url, chromium() as browser:
        page = browser.new_page(viewport=VIEWPORT)
        admin_sign_in(page, base_url, PASSWORD)

        page.goto(f"{base_url}/admin/procrastinate/procrastinatejob/")
        job_rows = _row_heights(page, "#result_list tbody tr")
        last_column = page.locator("#result_list thead th.column-compact_args").bounding_box()
        status = page.locator(".job-status.job-todo").first
        status_colour = status.evaluate("cell => getComputedStyle(cell).color")
        page.screenshot(path=str(SCREENSHOTS / "lists-jobs.png"), full_page=True)

        page.goto(f"{base_url}/admin/conversations/conversation/{conversation_id}/change/")
        entry_rows = _row_heights(page, "#entries-group tbody tr")
        thread_rows = _row_heights(page, "#threads-group tbody tr")
        page.screenshot(path=str(SCREENSHOTS / "lists-conversation.png"), full_page=True)

    assert len(job_rows) == 60
    assert max(job_rows) <= ONE_LINE_PX, job_rows
    # The summary columns fit a laptop's window, the arguments with room to be read.
    assert last_column is not None
    assert last_column["x"] + last_column["width"] <= VIEWPORT["width"]
    assert last_column["width"] >= 100
    # Not the browser's default black: the admin's quiet colour variable applies.
    assert status_colour != "rgb(0, 0, 0)"
    assert len(entry_rows) == 7  # hello, Thread started, more 0 to 4
    assert max(entry_rows) <= ONE_LINE_PX, entry_rows
    assert max(thread_rows) <= ONE_LINE_PX, thread_rows

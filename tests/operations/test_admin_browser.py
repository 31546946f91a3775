"""An operator's tour of the admin in a real headless Chromium against the real web server:
log in, read the dashboard, a conversation's timeline, a thread's timings, a document's diffs
and chunks, and stop a stuck thread.

Playwright drives Debian's Chromium (never a downloaded browser). Its sync API runs an event
loop in this thread, so every database read and write happens before the browser starts or
after it closes (Django refuses ORM calls while a loop runs).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone
from pytest_django.fixtures import Settings as SettingsWrapper

from conversations.models import Thread
from conversations.services import (
    ThreadOutcome,
    ThreadUsage,
    message_handle,
    thread_claim,
    thread_outcome_record,
)
from tests.support.browser import BROWSER_MARKS, SCREENSHOTS, Page, admin_sign_in, chromium, expect
from tests.support.servers import app_server, database_url
from workspace import services
from workspace.models import Document

pytestmark = [*BROWSER_MARKS, pytest.mark.django_db(transaction=True)]

PASSWORD = "operator-password-1"


@dataclass
class Scene:
    conversation_id: str
    stuck_thread_id: str
    finished_thread_id: str
    document_id: str


def _purge_jobs() -> None:
    # Procrastinate's tables are not flushed between transactional tests.
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM procrastinate_jobs")


@pytest.fixture
def scene(settings: SettingsWrapper) -> Iterator[Scene]:
    """Two tenants' conversations, a finished thread with timings, a thread stuck running on a
    dead worker, a document with three versions and its chunks."""
    settings.WORKSPACE_INDEXING = "inline"
    settings.EMBEDDING_PROVIDER = "hashing"
    settings.EMBEDDING_DIMENSIONS = 64
    _purge_jobs()
    get_user_model().objects.create_superuser("operator", "ops@example.com", PASSWORD)

    finished = message_handle(user_id="alice", channel="web", content="Summarise my notes")
    thread_claim(user_id="alice", thread_id=finished.thread_id, worker_id="worker-a")
    thread_outcome_record(
        user_id="alice",
        thread_id=finished.thread_id,
        worker_id="worker-a",
        outcome=ThreadOutcome(kind="completed", response="Your notes say: water the ferns."),
        usage=ThreadUsage(steps=1, input_tokens=120, output_tokens=30, model_ms=850),
    )
    stuck = message_handle(user_id="alice", channel="web", content="And the cacti?")
    thread_claim(user_id="alice", thread_id=stuck.thread_id, worker_id="worker-dead")
    Thread.objects.filter(pk=stuck.thread_id).update(
        lease_expires_at=timezone.now() - datetime.timedelta(minutes=4)
    )
    message_handle(user_id="bob", channel="cli", content="hello from bob")

    for content in (
        "# Plants\nferns: shade\n",
        "# Plants\nferns: shade, water weekly\n",
        "# Plants\nferns: shade, water weekly\ncacti: sun\n",
    ):
        services.document_write(user_id="alice", path="notes/plants.md", content=content)
    document = Document.objects.get(path="notes/plants.md")
    yield Scene(
        conversation_id=str(stuck.conversation_id),
        stuck_thread_id=str(stuck.thread_id),
        finished_thread_id=str(finished.thread_id),
        document_id=str(document.pk),
    )
    _purge_jobs()


def _shot(page: Page, name: str) -> None:
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_operator_reads_the_admin_and_stops_a_stuck_thread(scene: Scene) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    env = {"DATABASE_URL": database_url(connection.settings_dict)}
    with app_server(env) as base_url, chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        admin_sign_in(page, base_url, PASSWORD)

        # Live threads: bob's (created, no worker runs here) and the stuck one (running).
        expect(page.locator("#readiness")).to_be_visible()
        expect(page.locator("[data-figure=threads-created]")).to_have_text("1")
        expect(page.locator("[data-figure=threads-running]")).to_have_text("1")
        expired = page.locator("[data-figure=threads-running-with-an-expired-lease]")
        expect(expired).to_have_text("1")
        # The threads queue is the thread rows: bob's waits, the stuck one is doing.
        expect(page.locator("[data-figure=queue-threads-waiting]")).to_have_text("1")
        expect(page.locator("[data-figure=queue-threads-doing]")).to_have_text("1")
        expect(
            page.locator("[data-figure=documents-runtime-documents-with-chunks-should-be-0]")
        ).to_have_text("0")
        _shot(page, "01-dashboard")

        expired.click()
        expect(page.locator("#result_list")).to_contain_text(scene.stuck_thread_id[:8])
        expect(page.locator("#result_list")).to_contain_text("expired 4 min")
        _shot(page, "02-threads-expired-leases")

        page.goto(f"{base_url}/admin/conversations/conversation/{scene.conversation_id}/change/")
        timeline = page.locator("#entries-group")
        expect(timeline).to_contain_text("Summarise my notes")
        expect(timeline).to_contain_text("Your notes say: water the ferns.")
        expect(timeline).to_contain_text("And the cacti?")
        expect(page.get_by_text("all 2 threads →")).to_be_visible()
        _shot(page, "03-conversation-timeline")

        page.goto(f"{base_url}/admin/conversations/thread/{scene.finished_thread_id}/change/")
        expect(page.locator("table.timings")).to_contain_text("claimed (latest)")
        expect(page.locator("dl.outcome")).to_contain_text("completed")
        expect(page.locator(".response")).to_have_text("Your notes say: water the ferns.")
        expect(page.get_by_text("model time 850 ms")).to_be_visible()
        _shot(page, "04-thread-timings")

        page.goto(f"{base_url}/admin/workspace/document/{scene.document_id}/change/")
        versions = page.locator("table.versions")
        expect(versions).to_contain_text("v2")
        added = versions.locator("span", has_text="+cacti: sun")
        expect(added).to_have_css("background-color", "rgb(230, 255, 236)")
        expect(page.locator("details", has_text="Content and metadata")).not_to_have_attribute(
            "open", ""
        )
        _shot(page, "05-document-versions")

        page.get_by_role("link", name="1 chunk(s)").click()
        expect(page.locator("#result_list")).to_contain_text("water weekly")
        _shot(page, "06-document-chunks")

        page.goto(f"{base_url}/admin/conversations/thread/?lease=expired")
        page.locator(f"input[name=_selected_action][value='{scene.stuck_thread_id}']").check()
        page.select_option("select[name=action]", "stop")
        page.click("button[name=index]")
        expect(page.locator("ul.messagelist")).to_contain_text(
            f"Stopped {scene.stuck_thread_id[:8]}: stopped (was running, leased by worker-dead"
        )
        _shot(page, "07-stop-action")

    stopped = Thread.objects.get(pk=scene.stuck_thread_id)
    assert (stopped.state, stopped.lease_owner, stopped.tracked) == ("stopped", "", False)

"""An operator stops a running thread from its page, in a real headless Chromium against the real
web server: the model call in flight, the Stop button, the page that asks, the message, and the
stop's reason on top of the outcome, in the dark theme's colours too.

As in ``test_admin_browser``: every database read and write happens before the browser starts or
after it closes (Django refuses ORM calls while Playwright's loop runs).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.db import connection

from conversations.models import Thread
from conversations.services import message_handle, thread_claim
from engine.checkpoint import TurnState, checkpoint_save, now_iso
from tests.support.browser import BROWSER_MARKS, SCREENSHOTS, Page, admin_sign_in, chromium, expect
from tests.support.servers import app_server, database_url

pytestmark = [*BROWSER_MARKS, pytest.mark.django_db(transaction=True)]

PASSWORD = "operator-password-1"
# The admin's --message-error-bg in its dark theme (#570808).
DARK_ERROR_BG = "rgb(87, 8, 8)"


@dataclass
class Scene:
    thread_id: str


@pytest.fixture
def scene() -> Scene:
    """A thread running on worker w1, one model step done and the next in flight."""
    get_user_model().objects.create_superuser("operator", "ops@example.com", PASSWORD)
    sent = message_handle(user_id="alice", channel="web", content="Summarise my notes")
    claimed = thread_claim(user_id="alice", thread_id=sent.thread_id, worker_id="w1")
    state = TurnState(
        thread_id=str(sent.thread_id), conversation_id=None, user_id="alice", started_at=now_iso()
    )
    step = {"n": 1, "started_at": now_iso(), "ended_at": now_iso(), "model_ms": 900.0}
    checkpoint_save(
        state, user_id="alice", changed_by="w1", lease_epoch=claimed.claim_count, step=step
    )
    return Scene(thread_id=str(sent.thread_id))


def _shot(page: Page, name: str) -> None:
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_operator_stops_a_running_thread_from_its_page(scene: Scene) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    env = {"DATABASE_URL": database_url(connection.settings_dict)}
    with app_server(env) as base_url, chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 900}, color_scheme="dark")
        admin_sign_in(page, base_url, PASSWORD)

        page.goto(f"{base_url}/admin/conversations/thread/{scene.thread_id}/change/")
        expect(page.locator(".run-now")).to_contain_text("model call in flight since")
        expect(page.locator(".run-now")).to_contain_text("1 step recorded in this run")
        tools = page.locator("ul.object-tools")
        expect(tools.get_by_role("link", name="Request cancel")).to_be_visible()
        expect(tools.get_by_role("link", name="Requeue")).to_have_count(0)
        _shot(page, "11-running-thread-actions")

        tools.get_by_role("link", name="Stop", exact=True).click()
        expect(page.locator("#content")).to_contain_text(f"Stop thread {scene.thread_id}?")
        _shot(page, "12-stop-confirmation")
        page.click("input[type=submit][value=Stop]")

        expect(page.locator("ul.messagelist")).to_contain_text(
            f"Stopped {scene.thread_id[:8]}: stopped (was running, leased by w1"
        )
        alert = page.locator(".outcome-alert")
        expect(alert).to_have_text("reason: stopped by an operator (operator)")
        expect(alert).to_have_css("background-color", DARK_ERROR_BG)
        expect(tools.locator("a.thread-action")).to_have_count(0)
        _shot(page, "13-stopped-by-an-operator")

    assert Thread.objects.get(pk=scene.thread_id).state == "stopped"
    assert LogEntry.objects.get(object_id=scene.thread_id).change_message.startswith(
        "Stop: stopped (was running"
    )

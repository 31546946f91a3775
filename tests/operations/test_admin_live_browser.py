"""The admin's live panels in a real headless Chromium against a real ``manage.py serve`` (web,
turn worker, the echo model streaming its reply over two seconds): an operator watches a turn
happen on a conversation's page (which reconnects when its web process dies) and on a thread's
page, while a tenant talks through the API.

As in test_admin_browser.py, Playwright drives Debian's Chromium and every ORM call happens
before the browser starts (Django refuses them while Playwright's loop runs).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from django.contrib.auth import get_user_model
from django.db import connection

from accounts.services import CreatedApiKey
from tests.support.browser import BROWSER_MARKS, SCREENSHOTS, Page, admin_sign_in, chromium, expect
from tests.support.serve import post_message, send_and_await_reply, serve_process
from tests.support.servers import database_url

pytestmark = [*BROWSER_MARKS, pytest.mark.django_db(transaction=True)]

PASSWORD = "operator-password-1"
# Long enough a turn for the page to open while the model still writes, its text in deltas.
ECHO = {"ENGINE_MODEL": "echo", "ENGINE_ECHO_LATENCY_MS": "2000"}
# Up to a turn and a reconnection or two; Playwright's default afterwards.
LIVE_TIMEOUT_MS = 20_000
DEFAULT_TIMEOUT_MS = 5_000


def _shot(page: Page, name: str) -> None:
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_an_operator_watches_a_turn_live_on_the_conversation_and_thread_pages(
    make_api_key: Callable[..., CreatedApiKey],
) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    get_user_model().objects.create_superuser("operator", "ops@example.com", PASSWORD)
    key = make_api_key("alice").raw_key
    env = {"DATABASE_URL": database_url(connection.settings_dict), **ECHO}
    expect.set_options(timeout=LIVE_TIMEOUT_MS)
    try:
        _watch(key, env)
    finally:
        expect.set_options(timeout=DEFAULT_TIMEOUT_MS)


def _watch(key: str, env: dict[str, str]) -> None:
    with serve_process(env) as serve, chromium() as browser:
        base = serve.base_url
        first, _ = send_and_await_reply(base, key, "first words")
        # The dark theme: the panel must use the admin's colours, not its own.
        page = browser.new_page(viewport={"width": 1400, "height": 900}, color_scheme="dark")
        admin_sign_in(page, base, PASSWORD)
        expect(page.locator("#readiness")).to_be_visible()

        page.goto(f"{base}/admin/conversations/conversation/{first['conversation_id']}/change/")
        panel = page.locator("#live-panel")
        timeline = panel.locator("[data-live=timeline]")
        expect(panel).to_have_attribute("data-state", "live")
        expect(panel.locator("[data-live=status]")).to_have_text("live")

        status, sent = post_message(base, key, "hello live")
        assert status == 202, sent
        expect(timeline.locator(".live-entry", has_text="hello live")).to_be_visible()
        # The model's text as it writes it, before its entry.
        streaming = timeline.locator(".live-streaming")
        expect(streaming).to_have_text(re.compile(r"^agent · step \d+e"))
        _shot(page, "08-live-conversation-streaming")
        reply = timeline.locator(".live-entry", has_text="echo: hello live")
        expect(reply).to_be_visible()
        expect(streaming).to_have_count(0)
        expect(reply.locator(".live-who")).to_have_text("agent")
        thread_line = panel.locator(f"[data-thread='{sent['thread_id']}']")
        expect(thread_line.locator(".live-state")).to_have_text("completed")
        expect(thread_line.locator(".live-usage")).to_contain_text("1 step ·")
        expect(timeline).to_contain_text("claimed → running")
        text_colour = reply.locator(".live-text").evaluate("e => getComputedStyle(e).color")
        body_colour = page.evaluate("getComputedStyle(document.body).color")
        assert text_colour == body_colour != "rgb(51, 51, 51)"  # the dark theme's, not #333
        _shot(page, "09-live-conversation-answered")

        # The web process dies: serve starts another, the panel reconnects from its cursor.
        serve.child("serve_web").kill()
        live_status = panel.locator("[data-live=status]")
        expect(live_status).to_have_text("reconnecting…")
        expect(live_status).to_have_text("live")
        status, sent = post_message(base, key, "after the restart")
        assert status == 202, sent
        expect(timeline.locator(".live-entry", has_text="echo: after the restart")).to_be_visible()
        # Resumed after what it had seen: nothing twice.
        expect(timeline.locator(".live-text", has_text=re.compile(r"^hello live$"))).to_have_count(
            1
        )

        status, sent = post_message(base, key, "and the thread page")
        assert status == 202, sent
        page.goto(f"{base}/admin/conversations/thread/{sent['thread_id']}/change/")
        panel = page.locator("#live-panel")
        state = panel.locator(f"[data-thread='{sent['thread_id']}'] .live-state")
        # The page was rendered while the turn ran; the panel goes on from there.
        assert state.inner_text() in ("created", "running")
        expect(panel.locator(".live-streaming")).to_be_visible()
        expect(state).to_have_text("completed")
        # The thread's stream has no entries: its outcome's response replaces the text.
        response = panel.locator(".live-entry")
        expect(response).to_have_text("responseecho: and the thread page")
        expect(panel.locator("[data-live=status]")).to_have_text("ended")
        expect(panel).to_have_attribute("data-state", "ended")
        _shot(page, "10-live-thread-completed")

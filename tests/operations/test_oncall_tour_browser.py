"""The on-call tour, in a real headless Chromium against real processes: a web server, a turn
worker answering through a real (loopback) model server, and a second turn worker killed with
SIGKILL. Three things go wrong at once, as they do on a bad night:

- the model answers 500, so carol's turn fails;
- alice's turn holds the only turn slot in a model call that does not return, so bob's message
  waits in the queue (a backlog);
- a worker died without unregistering, so its heartbeat goes stale.

The operator, who has never seen the service, reads the verdict and its reasons on the dashboard,
follows the failure list to the failed thread and its error, stops alice's stuck turn from its
page, and finds the stop, with their name, in the thread's history. The screenshots of each step
land in ``var/screenshots/`` (``oncall-*.png``).

As in the other browser tests, every ORM call happens outside Playwright's event loop.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.db import connection

from accounts.services import CreatedApiKey
from conversations.models import Thread
from operations.models import WorkerName
from tests.support.browser import BROWSER_MARKS, SCREENSHOTS, Page, admin_sign_in, chromium, expect
from tests.support.chat_server import ChatServer, chat_server
from tests.support.serve import call
from tests.support.servers import app_server, database_url, worker_process

pytestmark = [*BROWSER_MARKS, pytest.mark.django_db(transaction=True)]

PASSWORD = "operator-password-1"
# Short enough for a test: a worker silent for 2 s is stale, a turn waiting 1 s is a backlog.
STALLED_SECONDS = 2.0


@dataclass
class Night:
    base_url: str
    model: ChatServer
    failed_thread: str
    stuck_thread: str
    waiting_thread: str


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _state(thread_id: str) -> str:
    return Thread.objects.values_list("state", flat=True).get(pk=thread_id)


def _send(base_url: str, key: str, content: str) -> str:
    status, body = call(
        base_url, key, "POST", "/api/v1/messages", {"channel": "web", "content": content}
    )
    assert status == 202, body
    return str(body["thread_id"])


@pytest.fixture
def night(make_api_key: Callable[..., CreatedApiKey]) -> Iterator[Night]:
    get_user_model().objects.create_superuser("operator", "ops@example.com", PASSWORD)
    keys = {tenant: make_api_key(tenant).raw_key for tenant in ("alice", "bob", "carol")}
    with ExitStack() as stack:
        model = stack.enter_context(chat_server(fail_status=500))
        env = {
            "DATABASE_URL": database_url(connection.settings_dict),
            "ENGINE_MODEL": "openai",
            "ENGINE_BASE_URL": model.url,
            "ENGINE_API_KEY": "test-key",
            "ENGINE_MODEL_MAX_RETRIES": "0",
            "ENGINE_HEARTBEAT_SECONDS": "0.2",
            "WORKER_HEARTBEAT_SECONDS": "0.4",
            "WORKER_STALLED_SECONDS": str(STALLED_SECONDS),
            "HEALTH_QUEUE_WAIT_AMBER_SECONDS": "1",
        }
        base_url = stack.enter_context(app_server(env))

        # A worker that dies without a word: its heartbeat row stays behind.
        with worker_process(env, name="turns") as doomed:
            _wait_for(
                lambda: WorkerName.objects.filter(pid=doomed.pid).exists(),
                "the doomed worker's registration",
            )
            doomed.send_signal(signal.SIGKILL)
            doomed.wait(timeout=10)

        # The worker that stays has one turn slot.
        stack.enter_context(worker_process(env, name="turns", concurrency=1))
        failed = _send(base_url, keys["carol"], "Summarise my week")
        _wait_for(lambda: _state(failed) == "failed", "carol's turn to fail")

        model.fail_status = None
        model.gate.clear()
        stuck = _send(base_url, keys["alice"], "Plan my garden")
        model.wait_for_requests(2)
        waiting = _send(base_url, keys["bob"], "What is on today?")
        # Past the backlog threshold and the dead worker's stall.
        time.sleep(STALLED_SECONDS + 0.5)
        assert (_state(stuck), _state(waiting)) == ("running", "created")
        try:
            yield Night(base_url, model, failed, stuck, waiting)
        finally:
            model.gate.set()


def _shot(page: Page, name: str) -> None:
    page.screenshot(path=str(SCREENSHOTS / f"oncall-{name}.png"), full_page=True)


def test_the_on_call_tour(night: Night) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    base_url = night.base_url
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        admin_sign_in(page, base_url, PASSWORD)

        # 1. The verdict, and why.
        health = page.locator("#health")
        expect(health).to_have_attribute("data-level", "degraded")
        expect(health).to_contain_text("Health: degraded")
        for reason in ("failed_turns", "queue_wait", "workers_stale"):
            expect(health.locator(f"[data-reason={reason}]")).to_be_visible()
        expect(health.locator("[data-reason=failed_turns]")).to_contain_text("1")
        expect(page.locator("[data-figure=queue-threads-waiting]")).to_have_text("1")
        expect(page.locator("[data-figure=queue-threads-doing]")).to_have_text("1")
        _shot(page, "1-dashboard")

        # 2. What failed: the failure list leads to the thread and its error.
        failure = page.locator(f"#failures tr[data-thread='{night.failed_thread}']")
        expect(failure).to_contain_text("carol")
        expect(failure).to_contain_text("model error")
        expect(page.locator(f"#failures tr[data-thread='{night.stuck_thread}']")).to_have_count(0)
        failure.get_by_role("link").first.click()
        expect(page).to_have_url(
            f"{base_url}/admin/conversations/thread/{night.failed_thread}/change/"
        )
        expect(page.locator(".outcome-alert")).to_contain_text("500")
        _shot(page, "2-failed-thread")

        # 3. What is stuck: alice's turn, its model call in flight; stop it from its page.
        page.goto(f"{base_url}/admin/conversations/thread/{night.stuck_thread}/change/")
        expect(page.locator(".run-now")).to_contain_text("model call in flight since")
        tools = page.locator("ul.object-tools")
        tools.get_by_role("link", name="Stop", exact=True).click()
        expect(page.locator("#content")).to_contain_text(f"Stop thread {night.stuck_thread}?")
        _shot(page, "3-stop-confirmation")
        page.click("input[type=submit][value=Stop]")
        expect(page.locator("ul.messagelist")).to_contain_text(
            f"Stopped {night.stuck_thread[:8]}: stopped (was running"
        )
        expect(page.locator(".outcome-alert")).to_contain_text("stopped by an operator (operator)")
        _shot(page, "4-stopped")

        # 4. Who did it: the thread's history.
        tools.get_by_role("link", name="History").click()
        history = page.locator("#change-history")
        expect(history).to_contain_text("operator")
        expect(history).to_contain_text("Stop: stopped (was running")
        _shot(page, "5-history")

    stopped = Thread.objects.get(pk=night.stuck_thread)
    assert stopped.state == "stopped"
    assert stopped.outcome is not None
    assert stopped.outcome["reason"] == "stopped by an operator (operator)"
    entry = LogEntry.objects.get(object_id=night.stuck_thread)
    assert entry.user.get_username() == "operator"
    # The freed slot serves bob's waiting turn once the model answers again.
    night.model.gate.set()
    _wait_for(lambda: _state(night.waiting_thread) == "completed", "bob's turn to be answered")

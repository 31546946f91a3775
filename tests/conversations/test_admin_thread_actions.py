"""The operators' actions from a thread's page (buttons, a page that asks, the POST that acts)
and from the thread list: the same services, their messages, the admin's log, and who may act."""

from __future__ import annotations

import datetime
import uuid

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from django.utils import timezone

from conversations.models import Thread
from conversations.services import (
    MessageResult,
    ThreadOutcome,
    message_handle,
    thread_claim,
    thread_outcome_record,
)

pytestmark = pytest.mark.django_db


def _running(channel: str = "web", *, expired: bool = False) -> MessageResult:
    sent = message_handle(user_id="alice", channel=channel, content="hello")
    thread_claim(user_id="alice", thread_id=sent.thread_id, worker_id="w1")
    if expired:
        Thread.objects.filter(pk=sent.thread_id).update(
            lease_expires_at=timezone.now() - datetime.timedelta(minutes=3)
        )
    return sent


def _page(thread_id: uuid.UUID) -> str:
    return f"/admin/conversations/thread/{thread_id}/change/"


def _action(thread_id: uuid.UUID | str, name: str) -> str:
    return f"/admin/conversations/thread/{thread_id}/{name}/"


def _buttons(client: Client, thread_id: uuid.UUID) -> set[str]:
    html = client.get(_page(thread_id)).content.decode()
    return {name for name in ("stop", "cancel", "requeue") if _action(thread_id, name) in html}


def _view_only_staff() -> Client:
    user = get_user_model().objects.create_user("viewer", password="pw-123456", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename="view_thread"))
    client = Client()
    client.force_login(user)
    return client


def _log_of(thread_id: uuid.UUID) -> list[str]:
    return list(
        LogEntry.objects.filter(object_id=str(thread_id), action_flag=CHANGE)
        .order_by("pk")
        .values_list("change_message", flat=True)
    )


def test_the_page_shows_the_buttons_its_threads_state_allows(admin_client: Client) -> None:
    created = message_handle(user_id="alice", channel="created", content="hi")
    leased = _running("leased")
    expired = _running("expired", expired=True)
    done = _running("done")
    thread_outcome_record(
        user_id="alice",
        thread_id=done.thread_id,
        worker_id="w1",
        outcome=ThreadOutcome(kind="completed", response="ok"),
    )

    assert _buttons(admin_client, created.thread_id) == {"stop", "cancel"}
    assert _buttons(admin_client, leased.thread_id) == {"stop", "cancel"}
    assert _buttons(admin_client, expired.thread_id) == {"stop", "cancel", "requeue"}
    assert _buttons(admin_client, done.thread_id) == set()
    # History stays beside them.
    assert "/history/" in admin_client.get(_page(leased.thread_id)).content.decode()


def test_the_confirmation_page_asks_and_a_get_never_acts(admin_client: Client) -> None:
    sent = _running()

    page = admin_client.get(_action(sent.thread_id, "stop"))

    html = page.content.decode()
    assert page.status_code == 200
    assert f"Stop thread {sent.thread_id}? It is <strong>running</strong>" in html
    assert '<form method="post">' in html
    assert 'name="csrfmiddlewaretoken"' in html
    assert Thread.objects.get(pk=sent.thread_id).state == "running"
    assert _log_of(sent.thread_id) == []


def test_the_stop_button_stops_logs_and_names_the_operator(admin_client: Client) -> None:
    sent = _running()

    response = admin_client.post(_action(sent.thread_id, "stop"))
    page = admin_client.get(response["Location"])

    short = str(sent.thread_id)[:8]
    thread = Thread.objects.get(pk=sent.thread_id)
    assert response.status_code == 302
    assert response["Location"] == _page(sent.thread_id)
    assert f"Stopped {short}: stopped (was running, leased by w1" in page.content.decode()
    assert thread.state == "stopped"
    assert thread.outcome is not None
    assert thread.outcome["reason"] == "stopped by an operator (admin)"
    assert _log_of(sent.thread_id) == [
        "Stop: stopped (was running, leased by w1, conversation untracked)"
    ]
    entry = LogEntry.objects.get(object_id=str(sent.thread_id))
    assert (entry.user.get_username(), entry.object_repr) == (
        "admin",
        f"foreground thread {sent.thread_id} (stopped)",
    )
    history = admin_client.get(f"/admin/conversations/thread/{sent.thread_id}/history/")
    assert "Stop: stopped (was running, leased by w1" in history.content.decode()
    index = admin_client.get("/admin/").content.decode()
    assert "Recent actions" in index
    assert f"foreground thread {sent.thread_id} (stopped)" in index


def test_the_cancel_button_of_a_thread_nobody_runs_stops_it_naming_the_operator(
    admin_client: Client,
) -> None:
    sent = message_handle(user_id="alice", channel="web", content="hello")

    admin_client.post(_action(sent.thread_id, "cancel"))

    thread = Thread.objects.get(pk=sent.thread_id)
    assert thread.state == "stopped"
    assert thread.outcome is not None
    assert thread.outcome["reason"] == "cancelled by an operator (admin)"
    assert _log_of(sent.thread_id) == [
        "Request cancel: stopped (was created, conversation untracked)"
    ]


def test_a_skipped_action_is_a_warning_and_is_not_logged(admin_client: Client) -> None:
    sent = _running()

    response = admin_client.post(_action(sent.thread_id, "requeue"), follow=True)

    html = response.content.decode()
    assert f"Skipped {str(sent.thread_id)[:8]}: running with a live lease held by w1" in html
    assert 'class="warning"' in html
    assert Thread.objects.get(pk=sent.thread_id).state == "running"
    assert _log_of(sent.thread_id) == []


def test_the_requeue_button_hands_an_expired_thread_back(admin_client: Client) -> None:
    sent = _running(expired=True)

    admin_client.post(_action(sent.thread_id, "requeue"))

    assert Thread.objects.get(pk=sent.thread_id).state == "created"
    assert _log_of(sent.thread_id) == [
        "Requeue: back to created (its lease had expired): waiting for a worker"
    ]


@pytest.mark.parametrize("object_id", ["not-a-uuid", str(uuid.uuid4())])
def test_an_unknown_thread_is_404(admin_client: Client, object_id: str) -> None:
    assert admin_client.get(_action(object_id, "stop")).status_code == 404
    assert admin_client.post(_action(object_id, "stop")).status_code == 404


def test_view_only_staff_see_no_buttons_and_may_not_act() -> None:
    sent = _running(expired=True)
    viewer = _view_only_staff()

    page = viewer.get(_page(sent.thread_id))
    listing = viewer.get("/admin/conversations/thread/")
    asked = viewer.get(_action(sent.thread_id, "stop"))
    posted = viewer.post(_action(sent.thread_id, "stop"))
    listed = viewer.post(
        "/admin/conversations/thread/",
        {"action": "stop", "_selected_action": [str(sent.thread_id)]},
    )

    assert page.status_code == 200
    assert _buttons(viewer, sent.thread_id) == set()
    assert 'value="stop"' not in listing.content.decode()
    assert (asked.status_code, posted.status_code) == (403, 403)
    assert listed.status_code in (200, 302)
    assert Thread.objects.get(pk=sent.thread_id).state == "running"
    assert LogEntry.objects.count() == 0


def test_list_actions_log_what_they_did_to_each_thread(admin_client: Client) -> None:
    stuck = _running("stuck", expired=True)
    leased = _running("leased")
    listing = admin_client.get("/admin/conversations/thread/").content.decode()

    admin_client.post(
        "/admin/conversations/thread/",
        {"action": "requeue", "_selected_action": [str(stuck.thread_id), str(leased.thread_id)]},
    )
    admin_client.post(
        "/admin/conversations/thread/",
        {"action": "request_cancel", "_selected_action": [str(leased.thread_id)]},
    )

    assert 'value="stop"' in listing
    assert _log_of(stuck.thread_id) == [
        "Requeue: back to created (its lease had expired): waiting for a worker"
    ]
    assert _log_of(leased.thread_id) == ["Request cancel: cancellation requested from w1"]
    leased_thread = Thread.objects.get(pk=leased.thread_id)
    assert leased_thread.metadata["cancel_requested_by"] == "admin"

from __future__ import annotations

import datetime
import uuid
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from conversations.admin import ADMIN_INLINE_ENTRIES
from conversations.models import Conversation, ConversationEntry, Thread
from conversations.services import (
    MessageResult,
    ThreadOutcome,
    ThreadUsage,
    message_handle,
    thread_claim,
    thread_outcome_record,
    thread_stop,
)
from tests.conversations.factories import ConversationFactory, EntryFactory

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "page",
    [
        "conversation",
        "thread",
        "channeluserindex",
        "conversationentry",
    ],
)
def test_changelists_load_and_search(admin_client: Client, page: str) -> None:
    message_handle(user_id="alice", channel="web", content="hello")

    listing = admin_client.get(f"/admin/conversations/{page}/")
    searched = admin_client.get(f"/admin/conversations/{page}/", {"q": "alice"})
    not_a_uuid = admin_client.get(f"/admin/conversations/{page}/", {"q": "web"})

    assert listing.status_code == 200
    assert searched.status_code == 200
    assert not_a_uuid.status_code == 200


def test_conversation_page_shows_entries_in_seq_order_and_threads(admin_client: Client) -> None:
    sent = message_handle(user_id="alice", channel="web", content="first words")
    message_handle(user_id="alice", channel="web", content="second words")

    page = admin_client.get(f"/admin/conversations/conversation/{sent.conversation_id}/change/")

    html = page.content.decode()
    assert page.status_code == 200
    assert html.index("first words") < html.index("Thread started") < html.index("second words")
    assert str(sent.thread_id) in html


def test_conversation_page_shows_only_the_latest_entries(
    admin_client: Client, django_assert_max_num_queries: Any
) -> None:
    conversation = ConversationFactory.create()
    EntryFactory.create_batch(ADMIN_INLINE_ENTRIES + 50, conversation=conversation)
    url = f"/admin/conversations/conversation/{conversation.id}/change/"
    admin_client.get(url)  # warm the session and content-type caches

    with django_assert_max_num_queries(25):
        page = admin_client.get(url)

    html = page.content.decode()
    assert page.status_code == 200
    assert html.count('class="field-entry_link"') == ADMIN_INLINE_ENTRIES
    assert f">{ADMIN_INLINE_ENTRIES + 50}</a></p>" in html
    assert ">50</a></p>" not in html


def test_thread_page_shows_state_lease_and_outcome(admin_client: Client) -> None:
    sent = message_handle(user_id="alice", channel="web", content="hello")

    page = admin_client.get(f"/admin/conversations/thread/{sent.thread_id}/change/")

    assert page.status_code == 200
    assert "created" in page.content.decode()


def test_clear_action_calls_the_service_and_reports(admin_client: Client) -> None:
    sent = message_handle(user_id="alice", channel="web", content="hello")

    response = admin_client.post(
        "/admin/conversations/conversation/",
        {"action": "clear_conversations", "_selected_action": [str(sent.conversation_id)]},
        follow=True,
    )

    assert "Cleared 1 conversations: 2 entries deleted, 1 threads cancelled." in (
        response.content.decode()
    )
    assert not ConversationEntry.objects.exists()
    assert Thread.objects.get(pk=sent.thread_id).tracked is False


def test_changing_the_busy_policy_in_the_admin_goes_through_the_service(
    admin_client: Client,
) -> None:
    sent = message_handle(user_id="alice", channel="web", content="hello")

    response = admin_client.post(
        f"/admin/conversations/conversation/{sent.conversation_id}/change/",
        {
            "busy_policy": "queue",
            "threads-TOTAL_FORMS": "1",
            "threads-INITIAL_FORMS": "1",
            "threads-MIN_NUM_FORMS": "0",
            "threads-MAX_NUM_FORMS": "1000",
            "threads-0-id": str(sent.thread_id),
            "threads-0-conversation": str(sent.conversation_id),
            "entries-TOTAL_FORMS": "0",
            "entries-INITIAL_FORMS": "0",
            "entries-MIN_NUM_FORMS": "0",
            "entries-MAX_NUM_FORMS": "1000",
        },
    )

    assert response.status_code == 302, response.content.decode()[:2000]
    assert Conversation.objects.get(pk=sent.conversation_id).busy_policy == "queue"


def test_admin_cannot_delete_rows_that_hold_invariants(admin_client: Client) -> None:
    sent = message_handle(user_id="alice", channel="web", content="hello")

    response = admin_client.get(f"/admin/conversations/conversation/{sent.conversation_id}/delete/")

    assert response.status_code == 403
    assert Conversation.objects.filter(pk=sent.conversation_id).exists()


def _stuck(channel: str = "web") -> MessageResult:
    """A running thread whose engine died: its lease expired three minutes ago."""
    sent = message_handle(user_id="alice", channel=channel, content="hello")
    thread_claim(user_id="alice", thread_id=sent.thread_id, worker_id="dead-worker")
    Thread.objects.filter(pk=sent.thread_id).update(
        lease_expires_at=timezone.now() - datetime.timedelta(minutes=3)
    )
    return sent


def _act(admin_client: Client, action: str, *thread_ids: uuid.UUID) -> str:
    response = admin_client.post(
        "/admin/conversations/thread/",
        {"action": action, "_selected_action": [str(pk) for pk in thread_ids]},
        follow=True,
    )
    assert response.status_code == 200
    return response.content.decode()


def test_stop_action_stops_each_thread_and_reports_the_skipped_ones(admin_client: Client) -> None:
    stuck = _stuck()
    done = message_handle(user_id="alice", channel="other", content="hi")
    thread_stop(user_id="alice", thread_id=done.thread_id)

    html = _act(admin_client, "stop", stuck.thread_id, done.thread_id)

    assert (
        f"Stopped {str(stuck.thread_id)[:8]}: stopped (was running, leased by dead-worker" in html
    )
    assert f"Skipped {str(done.thread_id)[:8]}: already stopped" in html
    assert Thread.objects.get(pk=stuck.thread_id).state == "stopped"


def test_request_cancel_action_flags_the_running_thread(admin_client: Client) -> None:
    stuck = _stuck()

    html = _act(admin_client, "request_cancel", stuck.thread_id)

    assert f"Cancel requested for {str(stuck.thread_id)[:8]}" in html
    thread = Thread.objects.get(pk=stuck.thread_id)
    assert (thread.state, thread.cancel_requested) == ("running", True)


def test_requeue_action_returns_an_expired_thread_to_created(admin_client: Client) -> None:
    stuck = _stuck()
    fresh = message_handle(user_id="alice", channel="other", content="hi")

    html = _act(admin_client, "requeue", stuck.thread_id, fresh.thread_id)

    assert f"Requeued {str(stuck.thread_id)[:8]}: back to created" in html
    assert f"Skipped {str(fresh.thread_id)[:8]}: created: already waiting for a worker" in html
    assert Thread.objects.get(pk=stuck.thread_id).state == "created"


def test_thread_list_filters_expired_leases_and_long_waits(admin_client: Client) -> None:
    stuck = _stuck()
    fresh = message_handle(user_id="alice", channel="new", content="hi")
    old = message_handle(user_id="alice", channel="old", content="hi")
    Thread.objects.filter(pk=old.thread_id).update(
        updated_at=timezone.now() - datetime.timedelta(minutes=20)
    )

    expired = admin_client.get("/admin/conversations/thread/", {"lease": "expired"})
    waiting = admin_client.get("/admin/conversations/thread/", {"waiting_minutes": "15"})

    expired_html, waiting_html = expired.content.decode(), waiting.content.decode()
    assert str(stuck.thread_id) in expired_html
    assert str(fresh.thread_id) not in expired_html
    assert str(old.thread_id) in waiting_html
    assert str(fresh.thread_id) not in waiting_html
    assert str(stuck.thread_id) not in waiting_html


def test_thread_list_shows_short_ids_lease_and_outcome(admin_client: Client) -> None:
    stuck = _stuck()
    gated = message_handle(user_id="alice", channel="gated", content="hi")
    thread_claim(user_id="alice", thread_id=gated.thread_id, worker_id="w1")
    thread_outcome_record(
        user_id="alice",
        thread_id=gated.thread_id,
        worker_id="w1",
        outcome=ThreadOutcome(kind="gate_paused", gate_name="approval", gate_action="send mail"),
    )

    html = admin_client.get("/admin/conversations/thread/").content.decode()

    full = str(stuck.thread_id)
    assert f'<span title="{full}">{full[:8]}</span>' in html
    assert "expired 3 min" in html
    assert "gate_paused: approval" in html


def test_thread_page_shows_outcome_timings_and_entries(admin_client: Client) -> None:
    sent = message_handle(user_id="alice", channel="web", content="what is up")
    thread_claim(user_id="alice", thread_id=sent.thread_id, worker_id="w1")
    thread_outcome_record(
        user_id="alice",
        thread_id=sent.thread_id,
        worker_id="w1",
        outcome=ThreadOutcome(kind="completed", response="All <good>"),
        usage=ThreadUsage(
            steps=2,
            input_tokens=10,
            output_tokens=5,
            model_ms=1500,
            model_calls=[
                {
                    "step": 1,
                    "started_at": "2026-01-01T00:00:00+00:00",
                    "ended_at": "2026-01-01T00:00:01.500000+00:00",
                }
            ],
        ),
    )

    html = admin_client.get(
        f"/admin/conversations/thread/{sent.thread_id}/change/"
    ).content.decode()

    assert "All &lt;good&gt;" in html
    assert "<dt>kind</dt><dd>completed</dd>" in html
    assert "claimed (latest)" in html
    assert "model time 1.5 s" in html
    assert "<td>1</td><td>2026-01-01 00:00:00</td><td>1.5 s</td>" in html
    assert "what is up" in html


def test_conversation_page_links_to_all_its_threads(admin_client: Client) -> None:
    sent = message_handle(user_id="alice", channel="web", content="hello")

    html = admin_client.get(
        f"/admin/conversations/conversation/{sent.conversation_id}/change/"
    ).content.decode()
    threads = admin_client.get(
        "/admin/conversations/thread/", {"conversation": str(sent.conversation_id)}
    )

    assert "all 1 threads →" in html
    assert "all 2 entries →" in html
    assert str(sent.thread_id) in threads.content.decode()


def test_tenant_filter_matches_the_beginning_of_the_id(admin_client: Client) -> None:
    sent = message_handle(user_id="alice-42", channel="web", content="hello")

    other = message_handle(user_id="bob", channel="web", content="hello")

    response = admin_client.get("/admin/conversations/thread/", {"tenant": "alice"})

    html = response.content.decode()
    assert str(sent.thread_id) in html
    assert str(other.thread_id) not in html
    assert 'name="tenant" value="alice"' in html


def test_thread_list_does_not_load_model_calls_or_goals(admin_client: Client) -> None:
    message_handle(user_id="alice", channel="web", content="hello")

    with CaptureQueriesContext(connection) as captured:
        response = admin_client.get("/admin/conversations/thread/")

    rows = [
        query["sql"]
        for query in captured
        if "conversations_thread" in query["sql"] and "COUNT(" not in query["sql"].upper()
    ]
    assert response.status_code == 200
    assert len(rows) == 1
    assert '"model_calls"' not in rows[0]
    assert '"goal"' not in rows[0]

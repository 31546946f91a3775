from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from conversations.admin import ADMIN_INLINE_ENTRIES
from conversations.models import Conversation, ConversationEntry, Thread
from conversations.services import message_handle
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
    assert html.count('class="field-seq"') == ADMIN_INLINE_ENTRIES
    assert f"<p>{ADMIN_INLINE_ENTRIES + 50}</p>" in html
    assert "<p>50</p>" not in html


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

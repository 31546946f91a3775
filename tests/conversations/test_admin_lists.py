"""The conversation list (entries, last activity, live thread, tenant search) and the compact
rows of a conversation's page."""

from __future__ import annotations

import re

import pytest
from django.contrib import admin
from django.db import connection
from django.test import Client, RequestFactory
from django.utils import timezone

from conversations.admin import ConversationAdmin
from conversations.models import Conversation, ConversationEntry
from conversations.services import (
    ThreadOutcome,
    message_handle,
    thread_claim,
    thread_outcome_record,
)

pytestmark = pytest.mark.django_db

LIST = "/admin/conversations/conversation/"


def _row(html: str, conversation_id: object) -> str:
    """The list's row of a conversation (its short id's title holds the whole id)."""
    rows = [row for row in html.split("<tr>") if f'title="{conversation_id}"' in row]
    assert len(rows) == 1, html
    return rows[0]


def _finished(user_id: str, channel: str) -> Conversation:
    sent = message_handle(user_id=user_id, channel=channel, content="hello")
    thread_claim(user_id=user_id, thread_id=sent.thread_id, worker_id="w1")
    thread_outcome_record(
        user_id=user_id,
        thread_id=sent.thread_id,
        worker_id="w1",
        outcome=ThreadOutcome("completed", response="done"),
    )
    return Conversation.objects.get(pk=sent.conversation_id)


def test_conversation_list_shows_entries_last_activity_and_the_live_thread(
    admin_client: Client,
) -> None:
    live = message_handle(user_id="alice", channel="web", content="hello")
    message_handle(user_id="alice", channel="web", content="more")
    finished = _finished("bob", "web")
    updated_at = Conversation.objects.get(pk=live.conversation_id).updated_at
    shown = timezone.localtime(updated_at).strftime("%Y-%m-%d %H:%M:%S")

    html = admin_client.get(LIST).content.decode()

    live_row = _row(html, live.conversation_id)
    # hello, Thread started, more
    assert '<td class="field-entry_count">3</td>' in live_row
    assert f'<td class="field-last_activity nowrap">{shown}</td>' in live_row
    thread_url = f"/admin/conversations/thread/{live.thread_id}/change/"
    assert re.search(
        rf'<td class="field-live_thread"><a href="{thread_url}">.*</a> created</td>', live_row
    )
    finished_row = _row(html, finished.pk)
    # hello, Thread started, done
    assert '<td class="field-entry_count">3</td>' in finished_row
    assert '<td class="field-live_thread">-</td>' in finished_row


def test_conversation_search_matches_a_tenant_by_its_beginning_or_a_whole_id(
    admin_client: Client,
) -> None:
    alice = message_handle(user_id="alice-42", channel="web", content="hello")
    alicia = message_handle(user_id="alicia", channel="web", content="hello")
    bob = message_handle(user_id="bob", channel="web", content="hello")

    tenant = admin_client.get(LIST, {"q": "alice-42"}).content.decode()
    prefix = admin_client.get(LIST, {"q": " ali "}).content.decode()
    by_id = admin_client.get(LIST, {"q": str(bob.conversation_id)}).content.decode()
    nul = admin_client.get(LIST, {"q": "ali\x00"})

    shown = [
        [str(sent.conversation_id) in page for sent in (alice, alicia, bob)]
        for page in (tenant, prefix, by_id)
    ]
    assert shown == [[True, False, False], [True, True, False], [False, False, True]]
    assert nul.status_code == 200


def test_conversation_search_reads_indexes_only(rf: RequestFactory) -> None:
    model_admin = ConversationAdmin(Conversation, admin.site)
    request = rf.get(LIST)
    by_tenant, _ = model_admin.get_search_results(request, Conversation.objects.all(), "ali")
    either, _ = model_admin.get_search_results(
        request, Conversation.objects.all(), "7c9e6679-7425-40de-944b-e07fc1f90ae7"
    )

    with connection.cursor() as cursor:
        # An empty test table is scanned whatever the indexes: ask whether indexes can serve it.
        cursor.execute("SET LOCAL enable_seqscan = off")
        plans = [by_tenant.explain(), either.explain()]

    # Either tenant index (both lead with user_id) serves the range.
    assert "using conversation_user_" in plans[0]
    assert "conversation_user_" in plans[1]
    assert "conversations_conversation_pkey" in plans[1]
    assert "Seq Scan" not in "".join(plans)


def test_conversation_page_rows_have_no_captions_and_say_tracked_in_words(
    admin_client: Client,
) -> None:
    finished = _finished("alice", "web")
    live = message_handle(user_id="alice", channel="web", content="again")

    html = admin_client.get(f"{LIST}{finished.pk}/change/").content.decode()

    threads = html[html.index('id="threads-group"') : html.index('id="entries-group"')]
    entries = html[html.index('id="entries-group"') :]
    assert "has_original" not in html
    assert "inlineviewlink" not in html
    assert "icon-no.svg" not in threads
    assert "icon-yes.svg" not in threads
    assert '<td class="field-tracking"><p>not tracked</p></td>' in threads
    assert '<td class="field-tracking"><p>tracked</p></td>' in threads
    assert str(live.thread_id) in threads
    first_entry = ConversationEntry.objects.get(conversation=finished, seq=1)
    entry_url = f"/admin/conversations/conversationentry/{first_entry.pk}/change/"
    assert f'<td class="field-entry_link"><p><a href="{entry_url}">1</a></p></td>' in entries

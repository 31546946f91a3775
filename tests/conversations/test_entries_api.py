"""GET conversations/{id}/entries: the first page written once, the ``sender`` filter and the
long-poll that waits for one sender's entry."""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from rest_framework.test import APIClient

from conversations import selectors
from conversations.services import (
    ThreadOutcome,
    message_handle,
    thread_claim,
    thread_outcome_record,
)

Tenant = Callable[[str], APIClient]


@pytest.fixture
def alice(tenant_client: Tenant) -> APIClient:
    return tenant_client("alice")


def _send(client: APIClient, content: str) -> dict[str, Any]:
    response = client.post(
        "/api/v1/messages", {"channel": "web", "content": content}, format="json"
    )
    assert response.status_code == 202, response.json()
    body: dict[str, Any] = response.json()
    return body


def _turn(content: str, outcome: ThreadOutcome) -> uuid.UUID:
    """A message to alice's web conversation, its thread claimed and ended with ``outcome``:
    the user's entry, "Thread started", then what the outcome writes."""
    sent = message_handle(user_id="alice", channel="web", content=content)
    thread_claim(user_id="alice", thread_id=sent.thread_id, worker_id="e1")
    thread_outcome_record(
        user_id="alice", thread_id=sent.thread_id, outcome=outcome, worker_id="e1"
    )
    return sent.conversation_id


def _replied(content: str) -> ThreadOutcome:
    return ThreadOutcome(kind="completed", response=f"re: {content}")


def _conversation_of_every_sender() -> uuid.UUID:
    """Fifteen entries: four replied turns (user, system, agent each), then a failed turn
    (user, "Thread started", "Thread failed")."""
    for n in range(4):
        conversation_id = _turn(f"turn {n}", _replied(f"turn {n}"))
    _turn("doomed", ThreadOutcome(kind="failed", error="boom"))
    return conversation_id


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("query", "senders"),
    [
        ({"sender": "agent"}, ["agent"] * 4),
        ({"sender": "user"}, ["user"] * 5),
        ({"sender": "system"}, ["system"] * 6),
        ({"sender": "agent", "after_seq": 6}, ["agent"] * 2),
        ({}, ["user", "system", "agent"] * 4 + ["user", "system", "system"]),
    ],
)
def test_sender_keeps_only_that_senders_entries_in_seq_order(
    alice: APIClient, query: dict[str, Any], senders: list[str]
) -> None:
    conversation_id = _conversation_of_every_sender()

    body = alice.get(f"/api/v1/conversations/{conversation_id}/entries", query).json()

    assert [entry["sender"] for entry in body["results"]] == senders
    seqs = [entry["seq"] for entry in body["results"]]
    assert seqs == sorted(seqs)
    assert all(seq > query.get("after_seq", 0) for seq in seqs)


@pytest.mark.django_db
@pytest.mark.parametrize("sender", ["bot", "AGENT", "agent,system", " agent"])
@pytest.mark.parametrize("extra", [{}, {"wait_seconds": 5}, {"cursor": "cD0z"}])
def test_an_unknown_sender_is_400_naming_it(
    alice: APIClient, sender: str, extra: dict[str, Any]
) -> None:
    sent = _send(alice, "hello")

    response = alice.get(
        f"/api/v1/conversations/{sent['conversation_id']}/entries", {"sender": sender, **extra}
    )

    assert response.status_code == 400
    assert "sender" in response.json()["error"]["details"]


@pytest.mark.django_db
@pytest.mark.parametrize("query", [{"sender": "agent"}, {"sender": "agent", "wait_seconds": 5}])
def test_another_tenants_or_an_unknown_conversation_is_404_with_a_sender(
    alice: APIClient, tenant_client: Tenant, query: dict[str, Any]
) -> None:
    conversation_id = _conversation_of_every_sender()
    bob = tenant_client("bob")

    foreign = bob.get(f"/api/v1/conversations/{conversation_id}/entries", query)
    unknown = alice.get(f"/api/v1/conversations/{uuid.uuid4()}/entries", query)

    assert [foreign.status_code, unknown.status_code] == [404, 404]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("query", "pages"),
    [
        ({}, 1),
        ({"limit": 3}, 5),
        ({"limit": 2, "after_seq": 2}, 7),
        ({"limit": 4, "after_seq": 5}, 3),
        ({"limit": 20, "after_seq": 13}, 1),
        ({"after_seq": 99}, 1),
        ({"sender": "agent"}, 1),
        ({"sender": "agent", "limit": 1}, 4),
        ({"sender": "system", "limit": 2, "after_seq": 2}, 3),
        ({"sender": "user", "limit": 4, "after_seq": 1}, 1),
        ({"sender": "agent", "after_seq": 12}, 1),
    ],
)
def test_the_first_entries_page_renders_as_drf_s_cursor_paging_would(
    alice: APIClient, query: dict[str, Any], pages: int
) -> None:
    conversation_id = _conversation_of_every_sender()
    url = f"/api/v1/conversations/{conversation_id}/entries"

    fast = alice.get(url, query)
    expected = _drf_first_page(url, query, conversation_id)

    assert fast.status_code == 200
    assert fast.json() == expected
    # Its next link leads on through DRF's cursor paging, page by page to the end, keeping the
    # sender filter (the link carries the query).
    seen, page, senders = 1, fast.json(), [e["sender"] for e in fast.json()["results"]]
    while page["next"]:
        page = alice.get(page["next"]).json()
        senders += [entry["sender"] for entry in page["results"]]
        seen += 1
    assert seen == pages
    every = selectors.entry_list(
        user_id="alice",
        conversation_id=conversation_id,
        after_seq=query.get("after_seq"),
        sender=query.get("sender"),
    )
    assert senders == [entry.sender for entry in every]


def _drf_first_page(url: str, query: dict[str, Any], conversation_id: uuid.UUID) -> Any:
    """The first page as DRF's CursorPagination and EntrySerializer render entry_list."""
    from rest_framework.request import Request
    from rest_framework.test import APIRequestFactory

    from conversations.api.serializers import EntrySerializer
    from core.api.cursor_pagination import SeqPagination

    request = Request(APIRequestFactory().get(url, query))
    entries = selectors.entry_list(
        user_id="alice",
        conversation_id=conversation_id,
        after_seq=query.get("after_seq"),
        sender=query.get("sender"),
    )
    paginator = SeqPagination()
    page = paginator.paginate_queryset(entries, request)
    return paginator.get_paginated_response(EntrySerializer(page, many=True).data).data


@pytest.mark.django_db
def test_the_sender_statements_probe_their_own_index_however_long_the_tail() -> None:
    conversation_id = _conversation_of_every_sender()
    with connection.cursor() as cursor:
        # A long conversation of user messages with an agent entry every thousand, and
        # statistics that know it, so the planner chooses as it would in production. A waiter
        # for the agent's reply after seq 10 must not read the two thousand user rows between.
        cursor.execute(
            "INSERT INTO conversations_conversationentry"
            " (id, conversation_id, user_id, seq, sender, content, created_at, metadata)"
            " SELECT gen_random_uuid(), %s, 'alice', n,"
            " CASE WHEN n %% 1000 = 999 THEN 'agent' ELSE 'user' END, 'words', now(), '{}'"
            " FROM generate_series(16, 3000) AS n",
            [conversation_id],
        )
        cursor.execute("ANALYZE conversations_conversationentry")
        plans = {}
        statements: dict[str, tuple[str, list[Any]]] = {
            "after_from": (selectors._ENTRY_AFTER_FROM, [conversation_id, "alice", 10, "agent"]),
            "page_from": (
                selectors._ENTRY_FIRST_PAGE_FROM,
                [conversation_id, "alice", 10, "agent", 51],
            ),
        }
        for name, (sql, params) in statements.items():
            cursor.execute("EXPLAIN " + sql, params)
            plans[name] = "\n".join(row[0] for row in cursor.fetchall())

    for filtered in ("after_from", "page_from"):
        assert _index_scans(plans[filtered]) == ["entry_by_sender_seq"], plans
        assert "Sort" not in plans[filtered], plans[filtered]


def _index_scans(plan: str) -> list[str]:
    return re.findall(r"Index (?:Only )?Scan using (\w+)", plan)


@pytest.mark.django_db(transaction=True)
def test_a_long_poll_for_the_agent_is_not_answered_by_the_thread_started_line(
    alice: APIClient,
) -> None:
    # The first turn is over; the client posts the next message and waits after its seq.
    conversation_id = _turn("first", _replied("first"))
    url = f"/api/v1/conversations/{conversation_id}/entries"
    answered: dict[str, Any] = {}

    def long_poll() -> None:
        try:
            query = {"after_seq": "3", "sender": "agent", "wait_seconds": "20"}
            answered["body"] = alice.get(url, query).json()
        finally:
            connection.close()

    poller = threading.Thread(target=long_poll)
    poller.start()
    time.sleep(0.5)
    # The user's entry and "Thread started" commit and wake the wait, which goes on waiting.
    sent = message_handle(user_id="alice", channel="web", content="second")
    time.sleep(1.5)
    still_waiting = poller.is_alive()
    thread_claim(user_id="alice", thread_id=sent.thread_id, worker_id="e1")
    thread_outcome_record(
        user_id="alice", thread_id=sent.thread_id, outcome=_replied("second"), worker_id="e1"
    )
    poller.join(timeout=20)

    assert still_waiting, "the long-poll answered without an agent entry"
    results = answered["body"]["results"]
    assert [(entry["seq"], entry["sender"], entry["content"]) for entry in results] == [
        (6, "agent", "re: second")
    ]


@pytest.mark.django_db(transaction=True)
def test_a_long_poll_without_a_sender_is_answered_by_the_thread_started_line(
    alice: APIClient,
) -> None:
    conversation_id = _turn("first", _replied("first"))
    url = f"/api/v1/conversations/{conversation_id}/entries"
    answered: dict[str, Any] = {}

    def long_poll() -> None:
        try:
            answered["body"] = alice.get(url, {"after_seq": 3, "wait_seconds": 20}).json()
        finally:
            connection.close()

    poller = threading.Thread(target=long_poll)
    poller.start()
    time.sleep(0.5)
    message_handle(user_id="alice", channel="web", content="second")
    poller.join(timeout=20)

    assert not poller.is_alive()
    senders = [entry["sender"] for entry in answered["body"]["results"]]
    assert senders == ["user", "system"]

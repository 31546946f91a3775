"""Every admin list and page runs a fixed number of queries, however many rows it shows.

Each page is built once with one row (or one related row) and once with 30; both must run the
pinned number of queries. A change that adds a query per row fails here, as does one that adds
a query to a page: re-pin it on purpose.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from django.db import connection
from django.db.models import Model
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from procrastinate.contrib.django import app
from procrastinate.contrib.django.models import ProcrastinateJob
from pytest_django.fixtures import Settings as SettingsWrapper

from accounts.models import ApiKey, IdempotencyKey
from accounts.services import api_key_create
from conversations.models import ChannelUserIndex, ConversationEntry, Thread
from conversations.services import (
    lease_owner_id,
    message_handle,
    thread_claim,
    thread_claim_runnable,
)
from engine.checkpoint import TurnState, checkpoint_save, now_iso
from operations.workers import WORKER_NAME_INSERT_SQL, worker_name_params
from tests.conversations.factories import ConversationFactory, ThreadFactory
from workspace import services
from workspace.models import Chunk, Document, DocumentVersion

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _index_inline(settings: SettingsWrapper) -> None:
    """Documents get their chunks as they are written."""
    settings.WORKSPACE_INDEXING = "inline"
    settings.EMBEDDING_PROVIDER = "hashing"
    settings.EMBEDDING_DIMENSIONS = 64


MANY = 30


def _conversations(rows: int) -> None:
    for number in range(rows):
        message_handle(user_id=f"user-{number}", channel="web", content=f"hello {number}")


def _documents(rows: int) -> None:
    for number in range(rows):
        services.document_write(user_id="alice", path=f"notes/{number}.md", content="one two")
        services.document_write(user_id="alice", path=f"notes/{number}.md", content="one three")


def _jobs(rows: int) -> None:
    index = app.configure_task(name=services.INDEX_DOCUMENT_TASK, queue="indexing")
    for _ in range(rows):
        index.defer(document_id=str(uuid.uuid4()))


def _api_keys(rows: int) -> None:
    for number in range(rows):
        api_key_create(name=f"key {number}", user_id=f"user-{number}")


def _idempotency_keys(rows: int) -> None:
    api_key = api_key_create(name="engine", user_id="alice").api_key
    IdempotencyKey.objects.bulk_create(
        IdempotencyKey(
            api_key=api_key,
            user_id="alice",
            key=f"key-{number}",
            fingerprint="0" * 64,
            response_status=202,
            response_body="{}",
            created_at=timezone.now(),
        )
        for number in range(rows)
    )


def _dashboard_with(rows: int) -> str:
    """``rows`` failed turns, and ``rows`` turn workers each running a turn."""
    for _ in range(rows):
        ThreadFactory.create(
            state="failed",
            tracked=False,
            finished_at=timezone.now(),
            outcome={"kind": "failed", "error": "boom"},
        )
        with connection.cursor() as cursor:
            cursor.execute("SELECT worker_id FROM procrastinate_register_worker_v1()")
            (worker_id,) = cursor.fetchone()
            cursor.execute(
                WORKER_NAME_INSERT_SQL, worker_name_params(worker_id=worker_id, name="turns")
            )
        message_handle(user_id="alice", channel=f"web-{worker_id}", content="hello")
        thread_claim_runnable(worker_id=lease_owner_id(worker_row=worker_id), lease_seconds=60)
    return reverse("admin:index")


def _periodic_jobs(rows: int) -> None:
    for number in range(rows):
        app.configure_task(
            name="conversations.tasks.sweep_expired_leases", queueing_lock=f"sweep-{uuid.uuid4()}"
        ).defer(timestamp=1_700_000_000 + 60 * number)


def _runtime_documents(rows: int) -> None:
    _documents(rows)
    for number in range(rows):
        services.document_write(user_id="alice", path=f"engine/t{number}.json", content="{}")


def _changelist(name: str, build: Callable[[int], None], query: str = "") -> Callable[[int], str]:
    def page(rows: int) -> str:
        build(rows)
        return reverse(f"admin:{name}_changelist") + query

    return page


def _conversation_with(rows: int) -> str:
    """A conversation with ``rows`` threads and about 2 x ``rows`` entries."""
    conversation = ConversationFactory.create()
    for _ in range(rows - 1):
        ThreadFactory.create(conversation=conversation, tracked=False, state="completed")
    message_handle(user_id="alice", channel=conversation.channel, content="first")
    for number in range(rows):
        message_handle(user_id="alice", channel=conversation.channel, content=f"more {number}")
    return reverse("admin:conversations_conversation_change", args=[conversation.pk])


def _thread_with(rows: int) -> str:
    """A thread with ``rows`` messages injected into it."""
    sent = message_handle(user_id="alice", channel="web", content="first")
    for number in range(rows):
        message_handle(user_id="alice", channel="web", content=f"more {number}")
    return reverse("admin:conversations_thread_change", args=[sent.thread_id])


def _running_thread_with(rows: int) -> str:
    """A running thread whose engine checkpointed ``rows`` model steps (its step events)."""
    sent = message_handle(user_id="alice", channel="web", content="first")
    claimed = thread_claim(user_id="alice", thread_id=sent.thread_id, worker_id="w1")
    state = TurnState(
        thread_id=str(sent.thread_id), conversation_id=None, user_id="alice", started_at=now_iso()
    )
    for n in range(1, rows + 1):
        step = {"n": n, "started_at": now_iso(), "ended_at": now_iso(), "model_ms": 5.0}
        checkpoint_save(
            state, user_id="alice", changed_by="w1", lease_epoch=claimed.claim_count, step=step
        )
    return reverse("admin:conversations_thread_change", args=[sent.thread_id])


def _stop_confirmation(rows: int) -> str:
    """The page that asks before a running thread is stopped."""
    sent = message_handle(user_id="alice", channel="web", content="first")
    thread_claim(user_id="alice", thread_id=sent.thread_id, worker_id="w1")
    return reverse("admin:conversations_thread_stop", args=[sent.thread_id])


def _document_with(rows: int) -> str:
    for number in range(rows + 1):
        services.document_write(
            user_id="alice", path="a.md", content=f"version {number}\n" + "words " * 400
        )
    return reverse("admin:workspace_document_change", args=[Document.objects.get().pk])


def _row_page(name: str, build: Callable[[int], None], model: type[Model]) -> Callable[[int], str]:
    def page(rows: int) -> str:
        build(rows)
        first = model._default_manager.order_by("pk").values_list("pk", flat=True)[0]
        return reverse(f"admin:{name}_change", args=[first])

    return page


# Queries a page runs, whatever the number of rows: session, user, then the page's own.
PAGES: dict[str, tuple[Callable[[int], str], int]] = {
    # Session, user, readiness (2), the bounded status transaction (begin, timeout, 10 figures,
    # the failures, end), the charts' bounded transaction (savepoint, timeout, 4 charts,
    # release) and the recent actions box.
    "dashboard": (_dashboard_with, 26),
    "dashboard, the day's charts": (lambda rows: _dashboard_with(rows) + "?span=day", 26),
    # Session, user, then the charts' bounded transaction.
    "charts page": (lambda rows: (_dashboard_with(rows), reverse("admin:charts"))[1], 9),
    "conversation list": (_changelist("conversations_conversation", _conversations), 4),
    "conversation list searched by tenant": (
        _changelist("conversations_conversation", _conversations, "?q=user-"),
        4,
    ),
    "thread list": (_changelist("conversations_thread", _conversations), 4),
    "entry list": (_changelist("conversations_conversationentry", _conversations), 4),
    "channel index list": (_changelist("conversations_channeluserindex", _conversations), 4),
    "job list": (_changelist("procrastinate_procrastinatejob", _jobs), 4),
    "job list of periodic jobs": (
        _changelist("procrastinate_procrastinatejob", _periodic_jobs, "?periodic=only"),
        4,
    ),
    "document list": (_changelist("workspace_document", _documents), 4),
    "document list with runtime documents": (
        _changelist("workspace_document", _runtime_documents, "?is_runtime__exact=all"),
        4,
    ),
    "version list": (_changelist("workspace_documentversion", _documents), 4),
    "chunk list": (_changelist("workspace_chunk", _documents), 4),
    "api key list": (_changelist("accounts_apikey", _api_keys), 4),
    # One of them the live panel's cursor (conversation_now), read before the entries.
    "conversation page": (_conversation_with, 8),
    "thread page": (_thread_with, 4),
    # One of them the steps of its run so far (its step events), read once for two sections.
    "thread page of a running thread": (_running_thread_with, 5),
    "thread stop confirmation page": (_stop_confirmation, 3),
    "entry page": (
        _row_page("conversations_conversationentry", _conversations, ConversationEntry),
        5,
    ),
    "channel index page": (
        _row_page("conversations_channeluserindex", _conversations, ChannelUserIndex),
        4,
    ),
    "job page": (_row_page("procrastinate_procrastinatejob", _jobs, ProcrastinateJob), 4),
    "document page": (_document_with, 6),
    "version page": (_row_page("workspace_documentversion", _documents, DocumentVersion), 5),
    "chunk page": (_row_page("workspace_chunk", _documents, Chunk), 3),
    "api key page": (_row_page("accounts_apikey", _api_keys, ApiKey), 3),
    "idempotency key list": (_changelist("accounts_idempotencykey", _idempotency_keys), 5),
    "idempotency key page": (
        _row_page("accounts_idempotencykey", _idempotency_keys, IdempotencyKey),
        4,
    ),
    "thread page of a finished thread": (
        _row_page("conversations_thread", _conversations, Thread),
        4,
    ),
}


def _queries(client: Client, url: str) -> int:
    client.get(url)  # warm the session and content-type caches
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200, url
    return len(captured)


@pytest.mark.parametrize("page", list(PAGES))
def test_admin_page_query_count_is_pinned_and_does_not_grow_with_rows(
    admin_client: Client, page: str
) -> None:
    build, pinned = PAGES[page]
    few = _queries(admin_client, build(1))

    many = _queries(admin_client, build(MANY))

    assert (few, many) == (pinned, pinned)

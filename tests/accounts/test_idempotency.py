"""Idempotency-Key: a repeat replays the first response and changes nothing; the key commits with
the work or not at all; a repeat waits for a first request still running."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from django.db import connection
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.idempotency import idempotency_keys_prune
from accounts.models import IdempotencyKey
from accounts.services import CreatedApiKey
from conversations.models import Conversation, ConversationEntry, Thread

pytestmark = pytest.mark.django_db

Tenant = Callable[[str], APIClient]


def _post(client: APIClient, url: str, body: dict[str, Any] | None, key: str | None) -> Any:
    headers = {} if key is None else {"Idempotency-Key": key}
    return client.post(f"/api/v1/{url}", body or {}, format="json", headers=headers)


def test_a_repeated_message_is_stored_once_and_answered_alike(tenant_client: Tenant) -> None:
    alice = tenant_client("alice")
    body = {"channel": "web", "content": "hello"}

    first = _post(alice, "messages", body, "k-1")
    repeat = _post(alice, "messages", body, "k-1")

    assert first.status_code == repeat.status_code == 202
    assert repeat.content == first.content
    assert repeat["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first
    assert list(ConversationEntry.objects.values_list("sender", "content")) == [
        ("user", "hello"),
        ("system", "Thread started"),
    ]
    assert Thread.objects.count() == 1


def test_the_same_key_with_another_body_is_refused_and_changes_nothing(
    tenant_client: Tenant,
) -> None:
    alice = tenant_client("alice")
    _post(alice, "messages", {"channel": "web", "content": "hello"}, "k-1")

    reused = _post(alice, "messages", {"channel": "web", "content": "other"}, "k-1")
    elsewhere = _post(alice, "conversations/new", {"channel": "web"}, "k-1")

    assert reused.status_code == elsewhere.status_code == 422
    assert reused.json()["error"]["code"] == "idempotency_key_reused"
    assert reused.json()["error"]["details"] == {"Idempotency-Key": ["k-1"]}
    assert ConversationEntry.objects.filter(content="other").count() == 0
    assert Conversation.objects.count() == 1


def test_a_body_serialised_differently_is_the_same_request(tenant_client: Tenant) -> None:
    alice = tenant_client("alice")
    first = alice.post(
        "/api/v1/messages",
        b'{"channel": "web", "content": "hi"}',
        content_type="application/json",
        headers={"Idempotency-Key": "k"},
    )
    repeat = alice.post(
        "/api/v1/messages",
        b'{"content":"hi","channel":"web"}',
        content_type="application/json",
        headers={"Idempotency-Key": "k"},
    )

    assert (first.status_code, repeat.status_code) == (202, 202)
    assert repeat["Idempotent-Replayed"] == "true"
    assert ConversationEntry.objects.filter(sender="user").count() == 1


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9", "tab\there"])
def test_a_malformed_key_is_a_400_naming_the_header(tenant_client: Tenant, key: str) -> None:
    response = tenant_client("alice").post(
        "/api/v1/messages",
        {"channel": "web", "content": "hello"},
        format="json",
        headers={"Idempotency-Key": key},
    )

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_idempotency_key"
    assert "Idempotency-Key" in response.json()["error"]["details"]
    assert ConversationEntry.objects.count() == 0


def test_keys_are_scoped_to_the_api_key_and_the_tenant(
    tenant_client: Tenant, make_api_key: Callable[..., CreatedApiKey]
) -> None:
    service = make_api_key(service=True).raw_key

    def as_service(tenant: str) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {service}", HTTP_X_USER_ID=tenant)
        return client

    body = {"channel": "web", "content": "hello"}
    answers = [
        _post(client, "messages", body, "shared")
        for client in (tenant_client("alice"), tenant_client("alice"), as_service("alice"))
    ]
    answers.append(_post(as_service("bob"), "messages", body, "shared"))
    replayed = _post(as_service("bob"), "messages", body, "shared")

    assert [answer.status_code for answer in answers] == [202] * 4
    assert not any("Idempotent-Replayed" in answer for answer in answers)
    assert replayed["Idempotent-Replayed"] == "true"
    assert ConversationEntry.objects.filter(sender="user").count() == 4


def test_an_error_keeps_no_key_so_the_retry_runs(tenant_client: Tenant) -> None:
    alice = tenant_client("alice")
    missing = uuid.uuid4()

    refused = _post(alice, f"conversations/{missing}/clear", None, "k-clear")
    conversation_id = _post(alice, "messages", {"channel": "web", "content": "x"}, None).json()[
        "conversation_id"
    ]
    rejected = _post(alice, f"conversations/{conversation_id}/policy", {"busy_policy": "?"}, "k-p")
    fixed = _post(alice, f"conversations/{conversation_id}/policy", {"busy_policy": None}, "k-p")

    assert refused.status_code == 404
    assert rejected.status_code == 400
    # The refused request kept no key: the corrected one under the same key is a new request.
    assert fixed.status_code == 200
    assert "Idempotent-Replayed" not in fixed
    assert IdempotencyKey.objects.filter(key="k-clear").count() == 0
    assert IdempotencyKey.objects.filter(key="k-p").count() == 1


def test_a_claim_next_that_finds_nothing_keeps_no_key_and_a_claim_is_replayed(
    tenant_client: Tenant,
) -> None:
    alice = tenant_client("alice")
    body = {"worker_id": "engine-1"}

    empty = _post(alice, "threads/next", body, "claim-1")
    assert empty.status_code == 204
    assert not IdempotencyKey.objects.exists()

    sent = _post(alice, "messages", {"channel": "web", "content": "hello"}, None).json()
    claimed = _post(alice, "threads/next", body, "claim-1")
    repeat = _post(alice, "threads/next", body, "claim-1")

    assert claimed.status_code == repeat.status_code == 200
    assert claimed.json()["thread"]["id"] == sent["thread_id"]
    assert repeat.content == claimed.content
    assert repeat["Idempotent-Replayed"] == "true"
    assert Thread.objects.get(pk=sent["thread_id"]).claim_count == 1


def test_an_expired_key_is_a_new_request_and_pruning_deletes_it(tenant_client: Tenant) -> None:
    alice = tenant_client("alice")
    body = {"channel": "web", "content": "hello"}
    _post(alice, "messages", body, "old")
    IdempotencyKey.objects.update(created_at=timezone.now() - timedelta(hours=25))

    again = _post(alice, "messages", body, "old")
    _post(alice, "messages", {"channel": "web", "content": "fresh"}, "new")
    IdempotencyKey.objects.filter(key="new").update(created_at=timezone.now() - timedelta(hours=23))
    IdempotencyKey.objects.filter(key="old").update(
        created_at=timezone.now() - timedelta(hours=24, seconds=1)
    )

    assert again.status_code == 202
    assert "Idempotent-Replayed" not in again
    assert ConversationEntry.objects.filter(sender="user").count() == 3
    assert idempotency_keys_prune(batch=1) == 1
    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == ["new"]


def test_the_openapi_schema_documents_the_header_and_its_answers(api_client: APIClient) -> None:
    schema = api_client.get("/api/schema/", {"format": "json"}).json()
    operations = {
        operation["operationId"]: operation
        for path in schema["paths"].values()
        for operation in path.values()
        if isinstance(operation, dict) and "operationId" in operation
    }
    idempotent = {
        name
        for name, operation in operations.items()
        if any(p["name"] == "Idempotency-Key" for p in operation.get("parameters", []))
    }

    assert idempotent == {
        "message_create",
        "conversation_new",
        "conversation_clear",
        "conversation_policy_set",
        "thread_next",
        "thread_claim",
        "thread_heartbeat",
        "thread_suspend",
        "thread_inbox_take",
        "thread_outcome_record",
        "workspace_document_append",
        "workspace_document_patch",
        "workspace_document_restore",
        "routine_create",
        "webhook_create",
        "webhook_delivery_redeliver",
    }
    for name in idempotent:
        responses = operations[name]["responses"]
        assert "idempotency_key_reused" in responses["422"]["description"], name
        assert "idempotency_in_progress" in responses["409"]["description"], name


@contextmanager
def _conversation_locked(conversation_id: str) -> Iterator[None]:
    """Another session holds the conversation's row lock until the block ends."""
    params = connection.get_connection_params()
    with psycopg.connect(**{k: v for k, v in params.items() if k != "context"}) as holder:
        holder.execute(
            "SELECT 1 FROM conversations_conversation WHERE id = %s FOR UPDATE", [conversation_id]
        )
        yield
        holder.rollback()


def _alice_in_a_conversation(tenant_client: Tenant) -> tuple[APIClient, str]:
    """Alice's client, and the conversation her first message (unkeyed) started."""
    alice = tenant_client("alice")
    sent = _post(alice, "messages", {"channel": "web", "content": "a"}, None).json()
    return alice, sent["conversation_id"]


def _in_thread(work: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    answers: list[Any] = []

    def run() -> None:
        try:
            answers.append(work())
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, answers


def _wait_for_lock_waiters(count: int) -> None:
    params = connection.get_connection_params()
    # Autocommit: inside a transaction pg_stat_activity is a snapshot taken by its first read,
    # and a waiter arriving after it would never be seen.
    params = {k: v for k, v in params.items() if k != "context"}
    with psycopg.connect(**params, autocommit=True) as watcher:
        for _ in range(200):
            (waiting,) = watcher.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ).fetchone() or (0,)
            if waiting >= count:
                return
            threading.Event().wait(0.05)
    raise AssertionError(f"{count} requests never waited for a lock")


@pytest.mark.django_db(transaction=True)
def test_a_repeat_while_the_first_runs_waits_for_it_and_replays(tenant_client: Tenant) -> None:
    alice, conversation_id = _alice_in_a_conversation(tenant_client)
    body = {"channel": "web", "content": "b"}

    with _conversation_locked(conversation_id):
        first, first_answer = _in_thread(lambda: _post(alice, "messages", body, "k"))
        _wait_for_lock_waiters(1)  # the first holds its key and waits for the conversation
        repeat, repeat_answer = _in_thread(lambda: _post(alice, "messages", body, "k"))
        _wait_for_lock_waiters(2)  # the repeat waits for the first's key
    first.join(10)
    repeat.join(10)

    assert first_answer[0].status_code == repeat_answer[0].status_code == 202
    assert repeat_answer[0].content == first_answer[0].content
    assert repeat_answer[0]["Idempotent-Replayed"] == "true"
    assert ConversationEntry.objects.filter(sender="user", content="b").count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_repeat_that_waits_too_long_is_a_409_with_retry_after(tenant_client: Tenant) -> None:
    alice, conversation_id = _alice_in_a_conversation(tenant_client)
    body = {"channel": "web", "content": "b"}

    with override_settings(IDEMPOTENCY_WAIT_SECONDS=0.2, CONVERSATION_LOCK_TIMEOUT_MS=5000):
        with _conversation_locked(conversation_id):
            first, first_answer = _in_thread(lambda: _post(alice, "messages", body, "k"))
            _wait_for_lock_waiters(1)
            in_progress = _post(alice, "messages", body, "k")
        first.join(10)

    assert in_progress.status_code == 409
    assert in_progress.json()["error"]["code"] == "idempotency_in_progress"
    assert in_progress["Retry-After"] == "1"
    assert first_answer[0].status_code == 202
    assert _post(alice, "messages", body, "k")["Idempotent-Replayed"] == "true"
    assert ConversationEntry.objects.filter(sender="user", content="b").count() == 1


@pytest.mark.django_db(transaction=True)
def test_work_that_fails_rolls_its_key_back_with_it(tenant_client: Tenant) -> None:
    alice, conversation_id = _alice_in_a_conversation(tenant_client)
    body = {"channel": "web", "content": "b"}

    with override_settings(CONVERSATION_LOCK_TIMEOUT_MS=100):
        with _conversation_locked(conversation_id):
            busy = _post(alice, "messages", body, "k")
        retried = _post(alice, "messages", body, "k")

    assert busy.status_code == 409
    assert busy.json()["error"]["code"] == "conversation_busy"
    assert retried.status_code == 202
    assert "Idempotent-Replayed" not in retried
    assert ConversationEntry.objects.filter(sender="user", content="b").count() == 1
    assert IdempotencyKey.objects.count() == 1

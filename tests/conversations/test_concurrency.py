from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import pytest
from django.db import connection, transaction
from django.test import override_settings
from rest_framework.test import APIClient

from conversations.errors import ConversationBusy, ThreadBusy, ThreadNotClaimable
from conversations.models import Conversation, ConversationEntry, Thread
from conversations.services import (
    MessageResult,
    ThreadOutcome,
    conversation_clear,
    message_handle,
    thread_claim,
    thread_inbox_take,
    thread_lease_renew,
    thread_outcome_record,
    thread_suspend,
)
from tests.conversations.concurrency import (
    assert_exactly_one_thread_took_every_message,
    tracked_threads_have_their_entries,
)
from tests.conversations.helpers import waiting_for_a_worker
from tests.support.concurrency import run_together

pytestmark = pytest.mark.django_db(transaction=True)

CONCURRENT_MESSAGES = 20


def _sender(content: str, user_id: str = "alice") -> Callable[[], MessageResult]:
    return lambda: message_handle(user_id=user_id, channel="web", content=content)


# The race is about exactly-once, not timeouts: give slow CI machines room.
@override_settings(CONVERSATION_LOCK_TIMEOUT_MS=20_000)
def test_concurrent_first_messages_from_threads_spawn_exactly_one_thread() -> None:
    contents = [f"message {n}" for n in range(CONCURRENT_MESSAGES)]

    started = time.monotonic()
    results, errors = run_together([_sender(content) for content in contents])
    print(f"{CONCURRENT_MESSAGES} racing messages from threads: {time.monotonic() - started:.3f} s")

    assert errors == []
    assert len({result.conversation_id for result in results}) == 1
    assert len({result.seq for result in results}) == CONCURRENT_MESSAGES
    assert_exactly_one_thread_took_every_message(
        user_id="alice",
        channel="web",
        contents=contents,
        actions=[result.action for result in results],
    )


def _hold_row_lock(
    row_id: uuid.UUID,
    seconds: float,
    locked: threading.Event,
    released: list[float],
    model: type[Conversation | Thread] = Conversation,
) -> threading.Thread:
    def hold() -> None:
        try:
            with transaction.atomic():
                model.objects.select_for_update(no_key=True).get(pk=row_id)
                locked.set()
                time.sleep(seconds)
            released.append(time.monotonic())
        finally:
            connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    assert locked.wait(timeout=10)
    return holder


def test_a_locked_conversation_does_not_delay_another_conversation() -> None:
    a = message_handle(user_id="alice", channel="web", content="to A")
    message_handle(user_id="bob", channel="web", content="to B")
    locked, released = threading.Event(), list[float]()
    holder = _hold_row_lock(a.conversation_id, 3.0, locked, released)

    started = time.monotonic()
    b = message_handle(user_id="bob", channel="web", content="to B again")
    finished = time.monotonic()
    holder.join()

    print(f"message to B took {(finished - started) * 1000:.1f} ms while A was locked for 3 s")
    assert b.action == "injected"
    assert finished - started < 0.5
    assert finished < released[0]


@override_settings(CONVERSATION_LOCK_TIMEOUT_MS=200)
def test_lock_timeout_is_conversation_busy_and_writes_nothing(
    tenant_client: Callable[[str], APIClient],
) -> None:
    a = message_handle(user_id="alice", channel="web", content="to A")
    client = tenant_client("alice")
    locked, released = threading.Event(), list[float]()
    holder = _hold_row_lock(a.conversation_id, 1.5, locked, released)

    started = time.monotonic()
    with pytest.raises(ConversationBusy):
        message_handle(user_id="alice", channel="web", content="blocked")
    waited = time.monotonic() - started
    response = client.post(
        "/api/v1/messages", {"channel": "web", "content": "blocked"}, format="json"
    )
    holder.join()

    assert 0.15 < waited < 1.0
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conversation_busy"
    assert response["Retry-After"] == "1"
    assert not ConversationEntry.objects.filter(content="blocked").exists()
    assert Conversation.objects.get(pk=a.conversation_id).last_seq == 2


@override_settings(CONVERSATION_LOCK_TIMEOUT_MS=200)
def test_a_heartbeat_waiting_for_a_locked_thread_is_bounded_by_the_lock_timeout() -> None:
    result = message_handle(user_id="alice", channel="web", content="hello")
    thread_claim(user_id="alice", thread_id=result.thread_id, worker_id="w1")
    locked, released = threading.Event(), list[float]()
    holder = _hold_row_lock(result.thread_id, 1.5, locked, released, model=Thread)

    started = time.monotonic()
    with pytest.raises(ThreadBusy):
        thread_lease_renew(user_id="alice", thread_id=result.thread_id, worker_id="w1")
    waited = time.monotonic() - started
    holder.join()

    assert 0.15 < waited < 1.0


def test_racing_claims_have_exactly_one_winner() -> None:
    result = message_handle(user_id="alice", channel="web", content="hello")

    def claim(worker: str) -> Callable[[], object]:
        return lambda: thread_claim(user_id="alice", thread_id=result.thread_id, worker_id=worker)

    results, errors = run_together([claim(f"w{n}") for n in range(8)])

    assert len(results) == 1
    assert len(errors) == 7
    assert all(isinstance(error, ThreadNotClaimable) for error in errors)
    thread = Thread.objects.get(pk=result.thread_id)
    assert (thread.claim_count, thread.lease_owner) == (1, results[0].lease_owner)


@override_settings(CONVERSATION_LOCK_TIMEOUT_MS=20_000)
def test_messages_racing_with_the_outcome_are_never_lost() -> None:
    first = message_handle(user_id="alice", channel="web", content="start")
    thread_claim(user_id="alice", thread_id=first.thread_id, worker_id="w1")
    taken: list[str] = []

    def engine() -> None:
        for _ in range(3):
            taken.extend(
                entry.content
                for entry in thread_inbox_take(
                    user_id="alice", thread_id=first.thread_id, worker_id="w1"
                )
            )
        thread_outcome_record(
            user_id="alice",
            thread_id=first.thread_id,
            worker_id="w1",
            outcome=ThreadOutcome(kind="completed", response="done"),
        )

    contents = [f"late {n}" for n in range(10)]
    _, errors = run_together([engine, *(_sender(content) for content in contents)])

    assert errors == []
    goals = "\n\n".join(Thread.objects.exclude(pk=first.thread_id).values_list("goal", flat=True))
    for content in contents:
        # Taken by the engine, carried by a follow-up's goal, or waiting in a live thread's inbox.
        waiting = ConversationEntry.objects.filter(
            content=content, delivered_at__isnull=True, thread__tracked=True
        ).exists()
        assert content in taken or content in goals or waiting, content
    assert Thread.objects.filter(tracked=True).count() <= 1


@override_settings(CONVERSATION_LOCK_TIMEOUT_MS=20_000)
def test_clear_racing_with_messages_never_leaves_a_tracked_thread_without_its_entries() -> None:
    first = message_handle(user_id="alice", channel="web", content="start")

    def clear() -> None:
        for _ in range(3):
            conversation_clear(user_id="alice", conversation_id=first.conversation_id)

    contents = [f"message {n}" for n in range(12)]
    _, errors = run_together([clear, *(_sender(content) for content in contents)])

    assert errors == []
    assert tracked_threads_have_their_entries(first.conversation_id) == []
    assert Thread.objects.filter(tracked=True).count() <= 1
    # Every surviving message belongs to a thread that is still tracked (or was just spawned).
    for entry in ConversationEntry.objects.filter(sender="user"):
        assert entry.thread is not None
        assert entry.thread.tracked


@override_settings(CONVERSATION_LOCK_TIMEOUT_MS=20_000)
def test_a_message_committing_while_the_engine_suspends_is_not_stranded() -> None:
    first = message_handle(user_id="alice", channel="web", content="start")
    thread_claim(user_id="alice", thread_id=first.thread_id, worker_id="w1")
    thread_inbox_take(user_id="alice", thread_id=first.thread_id, worker_id="w1")
    injected, results = threading.Event(), list[MessageResult]()

    def message_in_flight() -> None:
        # The message is written but not yet committed when the engine suspends.
        try:
            with transaction.atomic():
                results.append(message_handle(user_id="alice", channel="web", content="late"))
                injected.set()
                time.sleep(1.0)
        finally:
            connection.close()

    sender = threading.Thread(target=message_in_flight)
    sender.start()
    assert injected.wait(timeout=10)
    thread_suspend(user_id="alice", thread_id=first.thread_id, worker_id="w1")
    sender.join()

    assert results[0].action == "injected"
    assert Thread.objects.get(pk=first.thread_id).state == "suspended"
    # The late message waits in the parked thread's inbox, which makes it runnable.
    assert waiting_for_a_worker(first.thread_id)


@override_settings(CONVERSATION_LOCK_TIMEOUT_MS=200)
def test_a_claim_waiting_for_a_locked_thread_is_bounded_by_the_lock_timeout() -> None:
    result = message_handle(user_id="alice", channel="web", content="hello")
    locked, released = threading.Event(), list[float]()
    holder = _hold_row_lock(result.thread_id, 1.5, locked, released, model=Thread)

    started = time.monotonic()
    with pytest.raises(ThreadBusy):
        thread_claim(user_id="alice", thread_id=result.thread_id, worker_id="w1")
    waited = time.monotonic() - started
    holder.join()

    assert 0.15 < waited < 1.0
    assert Thread.objects.get(pk=result.thread_id).state == "created"


@override_settings(CONVERSATION_LOCK_TIMEOUT_MS=200)
def test_an_outcome_waiting_for_a_locked_conversation_is_bounded_by_the_lock_timeout() -> None:
    result = message_handle(user_id="alice", channel="web", content="hello")
    thread_claim(user_id="alice", thread_id=result.thread_id, worker_id="w1")
    locked, released = threading.Event(), list[float]()
    holder = _hold_row_lock(result.conversation_id, 1.5, locked, released)

    started = time.monotonic()
    with pytest.raises(ConversationBusy):
        thread_outcome_record(
            user_id="alice",
            thread_id=result.thread_id,
            worker_id="w1",
            outcome=ThreadOutcome("completed", response="done"),
        )
    waited = time.monotonic() - started
    holder.join()

    assert 0.15 < waited < 1.0
    assert Thread.objects.get(pk=result.thread_id).state == "running"

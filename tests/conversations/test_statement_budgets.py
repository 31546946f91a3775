"""Statement budgets of the hot paths: each message, claim and outcome is a fixed number of round
trips, whatever the conversation holds. In a test, the service's transaction is a savepoint, so
its BEGIN and COMMIT count as SAVEPOINT and RELEASE."""

from __future__ import annotations

import uuid

import pytest
from pytest_django import DjangoAssertNumQueries

from conversations.models import Thread, ThreadState
from conversations.services import (
    ThreadOutcome,
    message_handle,
    thread_claim,
    thread_claim_next,
    thread_claim_runnable,
    thread_outcome_record,
)

pytestmark = pytest.mark.django_db


def _finished(thread_id: uuid.UUID) -> None:
    thread_claim(user_id="alice", thread_id=thread_id, worker_id="w1")
    thread_outcome_record(
        user_id="alice", thread_id=thread_id, worker_id="w1", outcome=ThreadOutcome("completed")
    )


def test_first_message_spawns_in_six_statements(
    django_assert_num_queries: DjangoAssertNumQueries,
) -> None:
    # BEGIN, lock by channel (none yet), create the conversation and its index row, insert the
    # thread (the queue's entry: its trigger wakes the workers), entries with the seq bump,
    # COMMIT.
    with django_assert_num_queries(6):
        result = message_handle(user_id="alice", channel="web", content="hello")

    assert result.action == "spawned"
    assert result.seq == 1


def test_inject_is_five_statements(django_assert_num_queries: DjangoAssertNumQueries) -> None:
    message_handle(user_id="alice", channel="web", content="hello")

    # BEGIN, resolve and lock the conversation, read its live thread, entry with the seq bump,
    # COMMIT.
    with django_assert_num_queries(5):
        result = message_handle(user_id="alice", channel="web", content="more")

    assert (result.action, result.seq) == ("injected", 3)


def test_a_later_spawn_is_seven_statements(
    django_assert_num_queries: DjangoAssertNumQueries,
) -> None:
    _finished(message_handle(user_id="alice", channel="web", content="hello").thread_id)

    # BEGIN, resolve and lock, live thread, queued messages, insert the thread, entries with the
    # seq bump, COMMIT.
    with django_assert_num_queries(7):
        result = message_handle(user_id="alice", channel="web", content="again")

    assert result.action == "spawned"


def test_a_turn_workers_claim_is_one_statement(
    django_assert_num_queries: DjangoAssertNumQueries,
) -> None:
    spawned = message_handle(user_id="alice", channel="web", content="hello")

    with django_assert_num_queries(1):
        claimed = thread_claim_runnable(worker_id="w1")

    assert claimed is not None
    assert (claimed.pk, claimed.state) == (spawned.thread_id, "running")


def test_claim_is_one_statement(django_assert_num_queries: DjangoAssertNumQueries) -> None:
    spawned = message_handle(user_id="alice", channel="web", content="hello")

    with django_assert_num_queries(1):
        thread = thread_claim(user_id="alice", thread_id=spawned.thread_id, worker_id="w1")

    assert (thread.state, thread.lease_owner, thread.claim_count) == ("running", "w1", 1)


def test_claim_next_is_four_statements(django_assert_num_queries: DjangoAssertNumQueries) -> None:
    spawned = message_handle(user_id="alice", channel="web", content="hello")
    message_handle(user_id="alice", channel="web", content="more")

    # BEGIN, pick-lock-claim the oldest created thread, take its inbox, COMMIT.
    with django_assert_num_queries(4):
        claimed = thread_claim_next(user_id="alice", worker_id="w1")

    assert claimed is not None
    assert claimed.thread.id == spawned.thread_id
    assert [entry.content for entry in claimed.inbox] == ["more"]


def test_completed_outcome_is_seven_statements(
    django_assert_num_queries: DjangoAssertNumQueries,
) -> None:
    spawned = message_handle(user_id="alice", channel="web", content="hello")
    thread_claim(user_id="alice", thread_id=spawned.thread_id, worker_id="w1")

    # BEGIN, lock the conversation (via the thread), lock the thread, save it, unread and queued
    # messages, the agent's entry with the seq bump, COMMIT.
    with django_assert_num_queries(7):
        result = thread_outcome_record(
            user_id="alice",
            thread_id=spawned.thread_id,
            worker_id="w1",
            outcome=ThreadOutcome("completed", response="done"),
        )

    assert result.thread.state == ThreadState.COMPLETED
    assert [entry.content for entry in result.entries] == ["done"]
    assert Thread.objects.get(pk=spawned.thread_id).tracked is False

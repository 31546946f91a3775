"""Helpers shared by the real-thread and multi-process concurrency tests."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

from django.db import connection

from conversations.models import ChannelUserIndex, Conversation, ConversationEntry, Thread


def run_together(workers: list[Callable[[], Any]]) -> tuple[list[Any], list[BaseException]]:
    """Run each callable in its own thread, released together by a barrier.

    Each thread opens its database connection before the barrier (so the race is between the
    operations, not connection set-up) and closes it in ``finally``.
    """
    barrier = threading.Barrier(len(workers))
    results: list[Any] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(work: Callable[[], Any]) -> None:
        try:
            connection.ensure_connection()
            barrier.wait(timeout=30)
            outcome = work()
            with lock:
                results.append(outcome)
        except BaseException as error:
            with lock:
                errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(work,)) for work in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results, errors


def assert_exactly_one_thread_took_every_message(
    *, user_id: str, channel: str, contents: list[str], actions: list[str]
) -> None:
    """The issue's guarantee for N concurrent first messages to one (channel, user)."""
    conversation = Conversation.objects.get(user_id=user_id, channel=channel)
    assert ChannelUserIndex.objects.filter(user_id=user_id, channel=channel).count() == 1
    thread = Thread.objects.get()
    assert thread.conversation_id == conversation.id
    assert thread.tracked

    users = list(conversation.entries.filter(sender="user").order_by("seq"))
    assert sorted(entry.content for entry in users) == sorted(contents)
    all_seqs = list(conversation.entries.order_by("seq").values_list("seq", flat=True))
    assert all_seqs == list(range(1, len(contents) + 2))  # distinct and gap-free (+ "started")
    assert conversation.last_seq == len(contents) + 1

    assert sorted(actions) == ["injected"] * (len(contents) - 1) + ["spawned"]
    goal_entries = [entry for entry in users if entry.seq in thread.metadata["goal_entry_seqs"]]
    assert [entry.content for entry in goal_entries] == [thread.goal]
    for entry in users:
        # Either the spawn's goal or injected into that same thread: nothing else exists.
        assert entry.thread_id == thread.id


def tracked_threads_have_their_entries(conversation_id: uuid.UUID) -> list[str]:
    """Problems with the invariant "a tracked thread's entries are in its conversation"."""
    problems = []
    for thread in Thread.objects.filter(conversation_id=conversation_id, tracked=True):
        entries = ConversationEntry.objects.filter(conversation_id=conversation_id, thread=thread)
        if not entries.filter(sender="system", content="Thread started").exists():
            problems.append(f"{thread.id} has no 'Thread started' entry")
        goal_seqs = thread.metadata["goal_entry_seqs"]
        present = ConversationEntry.objects.filter(
            conversation_id=conversation_id, seq__in=goal_seqs
        ).count()
        if present != len(goal_seqs):
            problems.append(f"{thread.id} lost goal entries {goal_seqs}")
    return problems

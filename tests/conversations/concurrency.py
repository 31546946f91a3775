"""Assertions shared by the real-thread and multi-process concurrency tests."""

from __future__ import annotations

import uuid

from conversations.models import ChannelUserIndex, Conversation, ConversationEntry, Thread


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

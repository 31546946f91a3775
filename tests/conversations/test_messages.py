from __future__ import annotations

import pytest
from django.test import override_settings

from conversations.errors import MessageRejected, MessageTooLarge
from conversations.models import ChannelUserIndex, Conversation, ConversationEntry, Thread
from conversations.services import (
    ThreadOutcome,
    conversation_busy_policy_set,
    conversation_get_or_create,
    conversation_start_new,
    message_handle,
    thread_claim,
    thread_inbox_take,
    thread_outcome_record,
    thread_suspend,
)
from core.errors import InvalidInput
from tests.conversations.helpers import entries_of, waiting_for_a_worker

pytestmark = pytest.mark.django_db


def test_first_message_spawns_a_thread_with_user_and_started_entries() -> None:
    result = message_handle(user_id="alice", channel="web", content="hello")

    thread = Thread.objects.get(pk=result.thread_id)
    assert result.action == "spawned"
    assert result.seq == 1
    assert thread.state == "created"
    assert thread.tracked is True
    assert thread.goal == "hello"
    assert thread.conversation_id == result.conversation_id
    assert entries_of(result.conversation_id) == [
        (1, "user", "hello", thread.id),
        (2, "system", "Thread started", thread.id),
    ]
    assert ConversationEntry.objects.get(seq=1).delivered_at is not None
    assert Conversation.objects.get(pk=result.conversation_id).last_seq == 2


def test_a_spawned_thread_waits_for_a_worker() -> None:
    result = message_handle(user_id="alice", channel="web", content="hello")

    assert waiting_for_a_worker(result.thread_id)


def test_same_channel_and_user_share_a_conversation_others_do_not() -> None:
    first = conversation_get_or_create(user_id="alice", channel="web")

    again = conversation_get_or_create(user_id="alice", channel="web")
    other_channel = conversation_get_or_create(user_id="alice", channel="telegram")
    other_user = conversation_get_or_create(user_id="bob", channel="web")
    scoped = conversation_get_or_create(user_id="alice", channel="web", scope="tab-1")

    assert again.id == first.id
    assert len({first.id, other_channel.id, other_user.id, scoped.id}) == 4
    assert scoped.channel == "web:tab-1"


def test_start_new_conversation_repoints_the_index_and_keeps_the_old_one() -> None:
    old = message_handle(user_id="alice", channel="web", content="hello")

    new = conversation_start_new(user_id="alice", channel="web")
    after = message_handle(user_id="alice", channel="web", content="again")

    assert after.conversation_id == new.id != old.conversation_id
    assert ChannelUserIndex.objects.get(user_id="alice", channel="web").conversation_id == new.id
    assert entries_of(old.conversation_id)[0][2] == "hello"
    assert Conversation.objects.filter(user_id="alice").count() == 2


def test_inject_is_the_default_and_targets_the_live_thread_undelivered() -> None:
    first = message_handle(user_id="alice", channel="web", content="hello")

    second = message_handle(user_id="alice", channel="web", content="and also")

    assert second.action == "injected"
    assert second.thread_id == first.thread_id
    entry = ConversationEntry.objects.get(seq=second.seq, conversation_id=first.conversation_id)
    assert (entry.sender, entry.thread_id, entry.delivered_at) == ("user", first.thread_id, None)
    assert Thread.objects.count() == 1


def test_inject_into_a_running_thread() -> None:
    first = message_handle(user_id="alice", channel="web", content="hello")
    thread_claim(user_id="alice", thread_id=first.thread_id, worker_id="w1")

    second = message_handle(user_id="alice", channel="web", content="more")

    assert (second.action, second.thread_id) == ("injected", first.thread_id)


def test_inject_into_a_waiting_thread_makes_it_runnable_to_resolve_its_gate() -> None:
    first = message_handle(user_id="alice", channel="web", content="hello")
    thread_claim(user_id="alice", thread_id=first.thread_id, worker_id="w1")
    thread_outcome_record(
        user_id="alice",
        thread_id=first.thread_id,
        worker_id="w1",
        outcome=ThreadOutcome(kind="gate_paused", gate_name="approval", gate_action="shell"),
    )
    assert not waiting_for_a_worker(first.thread_id)

    second = message_handle(user_id="alice", channel="web", content="approve")

    assert (second.action, second.thread_id) == ("injected", first.thread_id)
    assert Thread.objects.get(pk=first.thread_id).state == "waiting"
    assert waiting_for_a_worker(first.thread_id)


def test_a_suspended_thread_is_resumed_with_the_message() -> None:
    first = message_handle(user_id="alice", channel="web", content="hello")
    thread_claim(user_id="alice", thread_id=first.thread_id, worker_id="w1")
    thread_suspend(user_id="alice", thread_id=first.thread_id, worker_id="w1")
    assert not waiting_for_a_worker(first.thread_id)

    second = message_handle(user_id="alice", channel="web", content="wake up")

    assert (second.action, second.thread_id) == ("resumed", first.thread_id)
    assert entries_of(first.conversation_id)[-2:] == [
        (3, "user", "wake up", first.thread_id),
        (4, "system", "Thread resumed", first.thread_id),
    ]
    assert waiting_for_a_worker(first.thread_id)
    assert thread_claim(user_id="alice", thread_id=first.thread_id, worker_id="w2").state == (
        "running"
    )


def test_suspending_with_an_unread_message_leaves_it_runnable_to_take_it() -> None:
    first = message_handle(user_id="alice", channel="web", content="hello")
    thread_claim(user_id="alice", thread_id=first.thread_id, worker_id="w1")
    late = message_handle(user_id="alice", channel="web", content="after the last inbox read")

    thread_suspend(user_id="alice", thread_id=first.thread_id, worker_id="w1")

    assert late.action == "injected"
    assert Thread.objects.get(pk=first.thread_id).state == "suspended"
    assert waiting_for_a_worker(first.thread_id)


def test_suspending_with_an_empty_inbox_waits_for_the_next_message() -> None:
    first = message_handle(user_id="alice", channel="web", content="hello")
    thread_claim(user_id="alice", thread_id=first.thread_id, worker_id="w1")

    thread_suspend(user_id="alice", thread_id=first.thread_id, worker_id="w1")

    assert not waiting_for_a_worker(first.thread_id)


def test_queue_policy_stores_the_message_and_makes_it_the_next_goal() -> None:
    first = message_handle(user_id="alice", channel="web", content="hello")
    conversation_busy_policy_set(
        user_id="alice", conversation_id=first.conversation_id, busy_policy="queue"
    )
    thread_claim(user_id="alice", thread_id=first.thread_id, worker_id="w1")

    queued_a = message_handle(user_id="alice", channel="web", content="later one")
    queued_b = message_handle(user_id="alice", channel="web", content="later two")
    result = thread_outcome_record(
        user_id="alice",
        thread_id=first.thread_id,
        worker_id="w1",
        outcome=ThreadOutcome(kind="completed", response="hi"),
    )

    assert (queued_a.action, queued_a.thread_id) == ("queued", first.thread_id)
    assert queued_b.action == "queued"
    assert ConversationEntry.objects.get(seq=queued_a.seq).thread_id is None
    assert result.follow_up is not None
    assert result.follow_up.goal == "later one\n\nlater two"
    assert result.follow_up.metadata["goal_entry_seqs"] == [queued_a.seq, queued_b.seq]
    assert not ConversationEntry.objects.filter(sender="user", delivered_at__isnull=True).exists()
    assert Thread.objects.tracked_foreground().get().id == result.follow_up.id


def test_queue_policy_spawns_when_no_thread_is_live() -> None:
    conversation = conversation_get_or_create(user_id="alice", channel="web")
    conversation_busy_policy_set(
        user_id="alice", conversation_id=conversation.id, busy_policy="queue"
    )

    result = message_handle(user_id="alice", channel="web", content="hello")

    assert result.action == "spawned"


def test_reject_policy_refuses_while_a_thread_is_live_and_writes_nothing() -> None:
    first = message_handle(user_id="alice", channel="web", content="hello")
    conversation_busy_policy_set(
        user_id="alice", conversation_id=first.conversation_id, busy_policy="reject"
    )

    with pytest.raises(MessageRejected):
        message_handle(user_id="alice", channel="web", content="again")

    assert len(entries_of(first.conversation_id)) == 2
    assert Conversation.objects.get(pk=first.conversation_id).last_seq == 2


@override_settings(CONVERSATION_DEFAULT_BUSY_POLICY="reject")
def test_busy_policy_default_comes_from_the_setting() -> None:
    message_handle(user_id="alice", channel="web", content="hello")

    with pytest.raises(MessageRejected):
        message_handle(user_id="alice", channel="web", content="again")


def test_interrupt_policy_cancels_the_live_thread_and_spawns_a_new_one() -> None:
    first = message_handle(user_id="alice", channel="web", content="hello")
    conversation_busy_policy_set(
        user_id="alice", conversation_id=first.conversation_id, busy_policy="interrupt"
    )
    thread_claim(user_id="alice", thread_id=first.thread_id, worker_id="w1")

    second = message_handle(user_id="alice", channel="web", content="no, do this")

    old = Thread.objects.get(pk=first.thread_id)
    new = Thread.objects.get(pk=second.thread_id)
    assert second.action == "spawned"
    assert second.interrupted_thread_id == old.id
    assert (old.tracked, old.cancel_requested, old.state) == (False, True, "running")
    assert (new.tracked, new.goal) == (True, "no, do this")
    assert entries_of(first.conversation_id)[2:] == [
        (3, "system", "Thread interrupted", old.id),
        (4, "user", "no, do this", new.id),
        (5, "system", "Thread started", new.id),
    ]


def test_interrupt_carries_messages_the_interrupted_thread_never_took() -> None:
    first = message_handle(user_id="alice", channel="web", content="hello")
    thread_claim(user_id="alice", thread_id=first.thread_id, worker_id="w1")
    unread = message_handle(user_id="alice", channel="web", content="also this")
    conversation_busy_policy_set(
        user_id="alice", conversation_id=first.conversation_id, busy_policy="interrupt"
    )

    second = message_handle(user_id="alice", channel="web", content="no, do this")

    new = Thread.objects.get(pk=second.thread_id)
    assert unread.action == "injected"
    assert new.goal == "also this\n\nno, do this"
    assert new.metadata["goal_entry_seqs"] == [unread.seq, second.seq]
    assert ConversationEntry.objects.get(seq=unread.seq).delivered_at is not None
    assert thread_inbox_take(user_id="alice", thread_id=first.thread_id, worker_id="w1") == []


def test_interrupting_an_unclaimed_thread_stops_it_at_once() -> None:
    first = message_handle(user_id="alice", channel="web", content="hello")
    conversation_busy_policy_set(
        user_id="alice", conversation_id=first.conversation_id, busy_policy="interrupt"
    )

    message_handle(user_id="alice", channel="web", content="no, do this")

    old = Thread.objects.get(pk=first.thread_id)
    assert (old.state, old.tracked) == ("stopped", False)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"content": ""}, "content"),
        ({"content": "   "}, "content"),
        ({"channel": ""}, "channel"),
        ({"channel": "we b"}, "channel"),
        ({"scope": " padded "}, "scope"),
        ({"user_id": ""}, "user_id"),
    ],
)
def test_invalid_messages_name_the_field(kwargs: dict[str, str], field: str) -> None:
    arguments = {"user_id": "alice", "channel": "web", "content": "hi", **kwargs}

    with pytest.raises(InvalidInput) as raised:
        message_handle(**arguments)

    assert field in raised.value.details
    assert not Conversation.objects.exists()


@override_settings(CONVERSATION_MAX_MESSAGE_BYTES=10)
def test_content_over_the_byte_limit_is_too_large() -> None:
    with pytest.raises(MessageTooLarge) as raised:
        message_handle(user_id="alice", channel="web", content="ééééééé")  # 14 bytes

    assert raised.value.status_code == 413
    assert not Conversation.objects.exists()

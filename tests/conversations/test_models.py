from __future__ import annotations

import pytest
from django.db import DatabaseError, IntegrityError, transaction
from django.utils import timezone

from conversations.models import Conversation, ConversationEntry, EntrySender, Thread, ThreadState
from tests.conversations.factories import ConversationFactory, EntryFactory, ThreadFactory

pytestmark = pytest.mark.django_db

ALLOWED = [
    ("created", "running"),
    ("created", "failed"),
    ("created", "stopped"),
    ("running", "created"),
    ("running", "waiting"),
    ("running", "suspended"),
    ("running", "completed"),
    ("running", "failed"),
    ("running", "stopped"),
    ("waiting", "running"),
    ("waiting", "failed"),
    ("waiting", "stopped"),
    ("suspended", "running"),
    ("suspended", "failed"),
    ("suspended", "stopped"),
]
STATES = [state.value for state in ThreadState]
FORBIDDEN = [
    (old, new) for old in STATES for new in STATES if old != new and (old, new) not in ALLOWED
]


def _untracked_thread(state: str) -> Thread:
    lease = {"lease_owner": "w", "lease_expires_at": timezone.now()} if state == "running" else {}
    return ThreadFactory.create(state=state, tracked=False, **lease)


def _move(thread: Thread, state: str) -> None:
    lease = (
        {"lease_owner": "w", "lease_expires_at": timezone.now()}
        if state == "running"
        else {"lease_owner": "", "lease_expires_at": None}
    )
    Thread.objects.filter(pk=thread.pk).update(state=state, **lease)


@pytest.mark.parametrize(("old", "new"), ALLOWED)
def test_thread_state_machine_allows_design_transitions(old: str, new: str) -> None:
    thread = _untracked_thread(old)

    _move(thread, new)

    thread.refresh_from_db()
    assert thread.state == new


@pytest.mark.parametrize(("old", "new"), FORBIDDEN)
def test_thread_state_machine_refuses_other_transitions(old: str, new: str) -> None:
    thread = _untracked_thread(old)

    with pytest.raises(DatabaseError, match="Invalid transition"), transaction.atomic():
        _move(thread, new)

    thread.refresh_from_db()
    assert thread.state == old


def test_database_refuses_a_second_tracked_foreground_thread() -> None:
    first = ThreadFactory.create()

    with pytest.raises(IntegrityError, match="thread_one_tracked_foreground"), transaction.atomic():
        ThreadFactory.create(conversation=first.conversation)

    assert Thread.objects.filter(conversation=first.conversation).count() == 1


def test_untracked_and_background_threads_do_not_count_as_tracked_foreground() -> None:
    first = ThreadFactory.create()

    ThreadFactory.create(conversation=first.conversation, tracked=False)
    ThreadFactory.create(conversation=first.conversation, kind="research")

    assert Thread.objects.filter(conversation=first.conversation).count() == 3


def test_database_refuses_a_tracked_terminal_thread() -> None:
    thread = ThreadFactory.create(state="running", lease_owner="w", lease_expires_at=timezone.now())

    with pytest.raises(IntegrityError, match="thread_tracked_is_live"), transaction.atomic():
        Thread.objects.filter(pk=thread.pk).update(
            state="completed", lease_owner="", lease_expires_at=None
        )


def test_entry_seq_is_unique_per_conversation() -> None:
    entry = EntryFactory.create(seq=1)

    with pytest.raises(IntegrityError, match="entry_unique_seq"), transaction.atomic():
        EntryFactory.create(conversation=entry.conversation, seq=1)

    EntryFactory.create(seq=1)
    assert ConversationEntry.objects.filter(seq=1).count() == 2


@pytest.mark.parametrize(
    ("field", "value"),
    [("seq", 99), ("sender", EntrySender.AGENT), ("content", "rewritten"), ("user_id", "mallory")],
)
def test_entries_are_read_only(field: str, value: object) -> None:
    entry = EntryFactory.create(content="original")

    with pytest.raises(DatabaseError, match="Cannot update"), transaction.atomic():
        ConversationEntry.objects.filter(pk=entry.pk).update(**{field: value})

    entry.refresh_from_db()
    assert entry.content == "original"


def test_entry_thread_is_read_only() -> None:
    entry = EntryFactory.create()
    thread = ThreadFactory.create(conversation=entry.conversation)

    with pytest.raises(DatabaseError, match="Cannot update"), transaction.atomic():
        ConversationEntry.objects.filter(pk=entry.pk).update(thread=thread)

    entry.refresh_from_db()
    assert entry.thread_id is None


def test_entry_delivered_at_is_set_once() -> None:
    entry = EntryFactory.create()
    first = timezone.now()

    ConversationEntry.objects.filter(pk=entry.pk).update(delivered_at=first)
    with pytest.raises(DatabaseError, match="Cannot update"), transaction.atomic():
        ConversationEntry.objects.filter(pk=entry.pk).update(delivered_at=timezone.now())
    with pytest.raises(DatabaseError, match="Cannot update"), transaction.atomic():
        ConversationEntry.objects.filter(pk=entry.pk).update(delivered_at=None)

    entry.refresh_from_db()
    assert entry.delivered_at == first


def test_busy_policy_is_checked_by_the_database() -> None:
    conversation = ConversationFactory.create()

    with pytest.raises(IntegrityError, match="busy_policy_valid"), transaction.atomic():
        Conversation.objects.filter(pk=conversation.pk).update(busy_policy="shout")

"""A thread's start and end as its conversation sees them: spawning a tracked thread, cancelling
one, giving its lease up, and carrying the messages it never took into a follow-up thread."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from django.utils import timezone

from conversations.models import (
    LIVE_STATES,
    Conversation,
    ConversationEntry,
    EntrySender,
    Thread,
    ThreadKind,
    ThreadState,
)
from conversations.services.entry_writer import EntryWriter
from core.db import FixedSelect, ModelInsert, ModelRows, server_bound_cursor
from core.log_context import current_request_id

logger = logging.getLogger(__name__)


# Messages queued behind a live thread (ConversationEntry.objects.queued(), served by
# entry_queued_by_conversation): read by every spawn, so SQL written once.
# The spawn's insert: 8 % of a message's CPU went to compiling it with the ORM.
_THREAD_INSERT = ModelInsert(Thread)
_QUEUED = FixedSelect(
    ConversationEntry,
    f"user_id = %s AND conversation_id = %s AND sender = '{EntrySender.USER}'"
    " AND thread_id IS NULL"
    " AND delivered_at IS NULL",
    tail="ORDER BY seq",
)


def thread_spawn(
    conversation: Conversation,
    writer: EntryWriter,
    *,
    new_message: str | None = None,
    carried: list[ConversationEntry] | None = None,
) -> tuple[Thread, ConversationEntry]:
    """Create a tracked foreground thread whose goal is the carried and/or new user messages.

    Caller holds the conversation lock and flushes ``writer``. Returns the thread and the last
    user entry of its goal.
    """
    now = writer.now
    # Messages queued behind a thread that is gone (policy changed, thread interrupted) join the
    # next goal rather than waiting forever.
    earlier = (
        carried if carried is not None else _QUEUED.all([conversation.user_id, conversation.id])
    )
    writer.deliver(earlier)
    thread = Thread(
        user_id=conversation.user_id,
        conversation=conversation,
        kind=ThreadKind.FOREGROUND,
        tracked=True,
        enqueued_at=now,
    )
    goal = list(earlier)
    if new_message is not None:
        goal.append(writer.add(EntrySender.USER, new_message, thread=thread, delivered_at=now))
    thread.goal = "\n\n".join(entry.content for entry in goal)
    thread.metadata = {"goal_entry_seqs": [entry.seq for entry in goal]}
    request_id = current_request_id()
    if request_id:
        # The turn's log lines carry the id of the request that spawned it.
        thread.metadata["request_id"] = request_id
    # Its seq is allocated now (written by the flush, after the thread): streams of the
    # conversation follow the thread's events from this entry on.
    thread.start_seq = writer.add(EntrySender.SYSTEM, "Thread started", thread=thread).seq
    _THREAD_INSERT.insert(thread)
    # Nothing to enqueue: a created thread is in the queue, and its insert's trigger wakes the
    # workers when this transaction commits.
    return thread, goal[-1]


@dataclass(frozen=True)
class FollowUp:
    """The thread spawned to take over from one that ended, and what its goal took."""

    thread: Thread
    # The last user entry of its goal: the new message when there is one.
    last_entry: ConversationEntry
    # How many earlier messages (unread by the ended thread, or queued) joined its goal.
    carried: int


_ENTRY_ROWS = ModelRows(ConversationEntry)
# What a follow-up thread carries: the user messages sent to the ended thread that it never took
# (ConversationEntryQuerySet.undelivered_for) and those queued in the conversation (.queued()).
# One statement, each half served by its own partial index; written once, since every outcome
# asks it and the ORM spent more CPU building the union than PostgreSQL spends running it.
_CARRIED_SQL = f"""
(SELECT {_ENTRY_ROWS.columns()} FROM {_ENTRY_ROWS.table}
 WHERE user_id = %s AND thread_id = %s AND sender = '{EntrySender.USER}'
   AND delivered_at IS NULL)
UNION ALL
(SELECT {_ENTRY_ROWS.columns()} FROM {_ENTRY_ROWS.table}
 WHERE user_id = %s AND conversation_id = %s AND sender = '{EntrySender.USER}' AND thread_id IS NULL
   AND delivered_at IS NULL)
ORDER BY seq
"""


def thread_follow_up_spawn(
    conversation: Conversation,
    writer: EntryWriter,
    ended: Thread,
    *,
    new_message: str | None = None,
) -> FollowUp | None:
    """Spawn the thread that takes over from ``ended`` (finished, stopped or interrupted): its goal
    is the messages ``ended`` never took and those queued in the conversation, in seq order, then
    ``new_message``. None when there is nothing to carry and no new message.

    Caller holds the conversation lock, then ``ended``'s, and flushes ``writer``.
    """
    with server_bound_cursor() as cursor:
        cursor.execute(
            _CARRIED_SQL, [ended.user_id, ended.pk, conversation.user_id, conversation.pk]
        )
        carried = [_ENTRY_ROWS.instance(row) for row in cursor.fetchall()]
    if not carried and new_message is None:
        return None
    thread, last_entry = thread_spawn(
        conversation, writer, new_message=new_message, carried=carried
    )
    return FollowUp(thread=thread, last_entry=last_entry, carried=len(carried))


def lease_released_fields(state: str) -> dict[str, Any]:
    """A thread that gives its lease up for ``state``: nobody holds it and nothing expires (the
    values of an UPDATE of many rows; ``thread_lease_release`` sets them on one)."""
    return {"state": state, "lease_owner": "", "lease_expires_at": None}


def thread_lease_release(thread: Thread, *, state: str) -> list[str]:
    """Give a locked thread's lease up and put it in ``state`` (the caller saves it); returns the
    fields changed, for ``update_fields``."""
    released = lease_released_fields(state)
    for name, value in released.items():
        setattr(thread, name, value)
    return list(released)


def thread_cancel(thread: Thread, *, reason: str) -> None:
    """Untrack a locked thread; stop it now unless a worker holds it (then ask it to stop)."""
    now = timezone.now()
    thread.tracked = False
    thread.cancel_requested = True
    if thread.state in LIVE_STATES and thread.state != ThreadState.RUNNING:
        # Nobody runs it: stop it here, and a pending run's claim will be refused.
        thread.state = ThreadState.STOPPED
        thread.outcome = {"kind": "stopped", "reason": reason}
        thread.finished_at = now
    thread.save(
        update_fields=[
            "tracked",
            "cancel_requested",
            "state",
            "outcome",
            "finished_at",
            "updated_at",
        ]
    )
    logger.info(
        "thread %s interrupted (%s): %s",
        thread.pk,
        reason,
        "stopped" if thread.state == ThreadState.STOPPED else "its worker is asked to stop",
        extra={"thread_id": str(thread.pk), "tenant": thread.user_id, "reason": reason},
    )

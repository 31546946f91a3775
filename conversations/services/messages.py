"""A user message: it spawns a thread, is injected into one, resumes one or queues behind one."""

from __future__ import annotations

from django.db import IntegrityError

from conversations.errors import ConversationBusy, MessageRejected
from conversations.models import (
    LIVE_STATES,
    BusyPolicy,
    Conversation,
    EntrySender,
    Thread,
    ThreadKind,
    ThreadState,
)
from conversations.services.conversations import conversation_create
from conversations.services.entry_writer import EntryWriter
from conversations.services.lifecycle import thread_cancel, thread_follow_up_spawn, thread_spawn
from conversations.services.locking import (
    conversation_lock_by_channel,
    locked_transaction,
    thread_lock,
)
from conversations.services.turn_queue import thread_runnable_notify
from conversations.services.validation import channel_key, check_content, check_user_id
from conversations.services.values import MessageResult
from core.db import FixedSelect, violated_constraint


def message_handle(
    *, user_id: str, channel: str, content: str, scope: str | None = None
) -> MessageResult:
    """Append a user message and spawn, inject into, resume or queue behind a thread.

    Locks the conversation row (bounded by the lock timeout: ConversationBusy). A spawned or
    resumed thread becomes runnable in the same transaction, so it is visible to workers exactly
    when the message is.
    """
    check_user_id(user_id)
    key = channel_key(channel, scope)
    check_content(content)
    try:
        with locked_transaction(bound_by_first_statement=True):
            conversation = conversation_lock_by_channel(user_id, key)
            if conversation is None:
                # A conversation we insert is invisible to others until we commit: no lock
                # needed, and it has no thread or message yet. If another transaction created
                # it first, lock that one.
                created = conversation_create(user_id, key)
                if created is not None:
                    writer = EntryWriter(created)
                    thread, entry = thread_spawn(created, writer, new_message=content, carried=[])
                    writer.flush()
                    return MessageResult(created.id, thread.id, "spawned", entry.seq)
                conversation = conversation_lock_by_channel(user_id, key)
            if conversation is None:  # created, then deleted before we could lock it
                raise ConversationBusy()
            return _message_apply(conversation, content)
    except IntegrityError as error:
        # The one-tracked-foreground-thread index refused a second thread: only reachable if a
        # writer skipped the conversation lock. The database kept the invariant; tell the
        # client to retry instead of failing with a 500.
        if violated_constraint(error) == "thread_one_tracked_foreground_per_conversation":
            raise ConversationBusy() from None
        raise


# Every message reads its conversation's live tracked thread: SQL written once (the ORM spent
# more CPU building it than PostgreSQL spends running it). As tracked_foreground().live(),
# served by the index of thread_one_tracked_foreground_per_conversation.
_LIVE_THREAD = FixedSelect(
    Thread,
    f"user_id = %s AND conversation_id = %s AND tracked AND kind = '{ThreadKind.FOREGROUND}'"
    f" AND state IN ({', '.join(repr(str(state)) for state in LIVE_STATES)})",
    tail="LIMIT 1",
)


def _message_apply(conversation: Conversation, content: str) -> MessageResult:
    writer = EntryWriter(conversation)
    live = _LIVE_THREAD.first([conversation.user_id, conversation.id])
    policy = conversation.effective_busy_policy

    if live is None:
        thread, entry = thread_spawn(conversation, writer, new_message=content)
        writer.flush()
        return MessageResult(conversation.id, thread.id, "spawned", entry.seq)

    if policy == BusyPolicy.REJECT:
        raise MessageRejected(details={"thread_id": str(live.id)})

    if policy == BusyPolicy.QUEUE:
        # No target thread: it becomes part of the next thread's goal when this one ends.
        entry = writer.add(EntrySender.USER, content)
        writer.flush()
        return MessageResult(conversation.id, live.id, "queued", entry.seq)

    if policy == BusyPolicy.INTERRUPT:
        interrupted = thread_lock(live.user_id, live.id)
        thread_cancel(interrupted, reason="interrupted by a new message")
        writer.add(EntrySender.SYSTEM, "Thread interrupted", thread=interrupted)
        # Messages injected into the interrupted thread that it never took (sent while the
        # policy was still inject) would otherwise never reach any thread: its later outcome
        # adds nothing. They join the new goal with any queued ones, in seq order.
        follow_up = thread_follow_up_spawn(conversation, writer, interrupted, new_message=content)
        assert follow_up is not None  # a new message always spawns
        writer.flush()
        return MessageResult(
            conversation.id,
            follow_up.thread.id,
            "spawned",
            follow_up.last_entry.seq,
            interrupted_thread_id=interrupted.id,
        )

    entry = writer.add(EntrySender.USER, content, thread=live)
    if live.state == ThreadState.SUSPENDED:
        writer.add(EntrySender.SYSTEM, "Thread resumed", thread=live)
        writer.flush()
        thread_runnable_notify(live)
        return MessageResult(conversation.id, live.id, "resumed", entry.seq)
    writer.flush()
    if live.state == ThreadState.WAITING:
        # Paused on a gate with nobody running it: this message may resolve the gate.
        thread_runnable_notify(live)
    return MessageResult(conversation.id, live.id, "injected", entry.seq)

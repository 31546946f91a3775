"""A user message: it spawns a thread, is injected into one, resumes one or queues behind one."""

from __future__ import annotations

from django.db import IntegrityError

from conversations.errors import ConversationBusy, MessageRejected
from conversations.models import (
    BusyPolicy,
    Conversation,
    ConversationEntry,
    EntrySender,
    Thread,
    ThreadKind,
    ThreadState,
)
from conversations.services.conversations import conversation_create, thread_cancel
from conversations.services.results import MessageResult
from conversations.services.transactions import (
    EntryWriter,
    conversation_lock_by_channel,
    locked_transaction,
    thread_lock,
    thread_run_enqueue,
)
from conversations.services.validation import channel_key, check_content, check_user_id
from core.db import violated_constraint


def message_handle(
    *, user_id: str, channel: str, content: str, scope: str | None = None
) -> MessageResult:
    """Append a user message and spawn, inject into, resume or queue behind a thread.

    Locks the conversation row (bounded by the lock timeout: ConversationBusy). A spawned or
    resumed thread's run is enqueued in the same transaction, so it is visible to workers exactly
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


def _message_apply(conversation: Conversation, content: str) -> MessageResult:
    writer = EntryWriter(conversation)
    live = Thread.objects.tracked_foreground().filter(conversation=conversation).live().first()
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
        interrupted = thread_lock(live.id)
        thread_cancel(interrupted, reason="interrupted by a new message")
        writer.add(EntrySender.SYSTEM, "Thread interrupted", thread=interrupted)
        # Messages injected into the interrupted thread that it never took (sent while the
        # policy was still inject) would otherwise never reach any thread: its later outcome
        # adds nothing. They join the new goal with any queued ones, in seq order.
        unread = ConversationEntry.objects.undelivered_for(interrupted)
        queued = conversation.entries.queued()
        carried = sorted([*unread, *queued], key=lambda earlier: earlier.seq)
        thread, entry = thread_spawn(conversation, writer, new_message=content, carried=carried)
        writer.flush()
        return MessageResult(
            conversation.id, thread.id, "spawned", entry.seq, interrupted_thread_id=interrupted.id
        )

    entry = writer.add(EntrySender.USER, content, thread=live)
    if live.state == ThreadState.SUSPENDED:
        writer.add(EntrySender.SYSTEM, "Thread resumed", thread=live)
        writer.flush()
        thread_run_enqueue(live.id)
        return MessageResult(conversation.id, live.id, "resumed", entry.seq)
    writer.flush()
    if live.state == ThreadState.WAITING:
        # Paused on a gate with nobody running it: this message may resolve the gate.
        thread_run_enqueue(live.id)
    return MessageResult(conversation.id, live.id, "injected", entry.seq)


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
        carried if carried is not None else list(conversation.entries.queued().order_by("seq"))
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
    thread.save(force_insert=True)
    writer.add(EntrySender.SYSTEM, "Thread started", thread=thread)
    thread_run_enqueue(thread.id, new_thread=True)
    return thread, goal[-1]

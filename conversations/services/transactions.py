"""What every service runs inside its one transaction: the bounded transaction, row locks in
the policy's order, the seq-allocating entry writer and the transactional run enqueue."""

from __future__ import annotations

import datetime
import uuid
from contextlib import AbstractContextManager

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from procrastinate.contrib.django import app as procrastinate_app
from procrastinate.exceptions import AlreadyEnqueued

from conversations import selectors
from conversations.errors import ConversationBusy
from conversations.models import Conversation, ConversationEntry, EntrySender, Thread
from ironclaw_site.db import bounded_transaction
from ironclaw_site.errors import Conflict

# The task conversations.tasks registers to run a thread; THREAD_RUNNER says what it runs.
RUN_THREAD_TASK = "conversations.tasks.run_thread"
RUN_THREAD_QUEUE = "threads"


def locked_transaction(
    busy: type[Conflict] = ConversationBusy,
) -> AbstractContextManager[None]:
    """One transaction whose every lock wait is bounded by ``CONVERSATION_LOCK_TIMEOUT_MS``;
    a wait past it raises ``busy`` (the row the caller waits for: conversation or thread)."""
    return bounded_transaction(lock_timeout_ms=settings.CONVERSATION_LOCK_TIMEOUT_MS, busy=busy)


def conversation_lock(conversation_id: uuid.UUID) -> Conversation:
    # NO KEY UPDATE: serialises writers of this conversation but lets other transactions insert
    # rows that reference it (their FK check takes KEY SHARE, which FOR UPDATE would block).
    return Conversation.objects.for_update().get(pk=conversation_id)


def thread_lock(thread_id: uuid.UUID) -> Thread:
    return Thread.objects.for_update().get(pk=thread_id)


def thread_lock_with_conversation(
    user_id: str, thread_id: uuid.UUID
) -> tuple[Conversation | None, Thread]:
    """Lock the tenant's thread's conversation, then the thread (the policy's order)."""
    conversation_id = selectors.thread_get(user_id=user_id, thread_id=thread_id).conversation_id
    conversation = None
    if conversation_id is not None:
        # .first(), not .get(): if the conversation was deleted meanwhile, the thread outlives
        # it (its foreign key is now null) rather than the call failing.
        conversation = Conversation.objects.for_update().filter(pk=conversation_id).first()
    return conversation, thread_lock(thread_id)


def thread_run_enqueue(thread_id: uuid.UUID) -> None:
    """Enqueue the thread's run in the surrounding transaction (so it exists iff we commit)."""
    # By name: conversations.tasks imports the services, so the services cannot import it.
    run = procrastinate_app.configure_task(
        name=RUN_THREAD_TASK, queue=RUN_THREAD_QUEUE, queueing_lock=f"thread-run:{thread_id}"
    )
    try:
        # Own savepoint: a duplicate queueing lock is a unique violation that must not abort
        # the caller's transaction.
        with transaction.atomic():
            run.defer(thread_id=str(thread_id))
    except AlreadyEnqueued:
        # A run of this thread is already waiting for a worker; one is enough.
        pass


class EntryWriter:
    """Allocates gap-free seqs under the conversation lock and writes entries in one statement."""

    def __init__(self, conversation: Conversation):
        self.conversation = conversation
        self.entries: list[ConversationEntry] = []
        # One clock reading for every entry written and every delivery stamped with this writer.
        self.now = timezone.now()

    def add(
        self,
        sender: EntrySender,
        content: str,
        *,
        thread: Thread | None = None,
        delivered_at: datetime.datetime | None = None,
    ) -> ConversationEntry:
        entry = ConversationEntry(
            conversation=self.conversation,
            user_id=self.conversation.user_id,
            seq=self.conversation.last_seq + len(self.entries) + 1,
            sender=sender,
            content=content,
            thread=thread,
            delivered_at=delivered_at,
            created_at=self.now,
        )
        self.entries.append(entry)
        return entry

    def flush(self) -> list[ConversationEntry]:
        if not self.entries:
            return []
        ConversationEntry.objects.bulk_create(self.entries)
        # We hold the row lock, so last_seq read with it is current; F() keeps the update
        # correct even if that ever stopped being true (the unique (conversation, seq) backs it).
        Conversation.objects.filter(pk=self.conversation.pk).update(
            last_seq=F("last_seq") + len(self.entries), updated_at=timezone.now()
        )
        self.conversation.last_seq += len(self.entries)
        written, self.entries = self.entries, []
        return written

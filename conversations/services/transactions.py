"""What every service runs inside its one transaction: the bounded transaction, row locks in
the policy's order, the seq-allocating entry writer and the transactional run enqueue."""

from __future__ import annotations

import datetime
import uuid
from contextlib import AbstractContextManager

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Subquery
from django.db.models.expressions import RawSQL
from django.utils import timezone
from procrastinate.contrib.django import app as procrastinate_app
from procrastinate.exceptions import AlreadyEnqueued

from conversations.errors import ConversationBusy, ThreadNotFound
from conversations.models import (
    ChannelUserIndex,
    Conversation,
    ConversationEntry,
    EntrySender,
    Thread,
)
from core.db import bounded_transaction, lock_timeout_bound
from core.errors import Conflict
from core.log_context import job_args

# The task conversations.tasks registers to run a thread; THREAD_RUNNER says what it runs.
RUN_THREAD_TASK = "conversations.tasks.run_thread"
RUN_THREAD_QUEUE = "threads"


def locked_transaction(
    busy: type[Conflict] = ConversationBusy, *, bound_by_first_statement: bool = False
) -> AbstractContextManager[None]:
    """One transaction whose every lock wait is bounded by ``CONVERSATION_LOCK_TIMEOUT_MS``;
    a wait past it raises ``busy`` (the row the caller waits for: conversation or thread).

    ``bound_by_first_statement``: the first statement is one of the locks below (or carries
    ``lock_bound()``), which sets the bound without a round trip of its own.
    """
    return bounded_transaction(
        lock_timeout_ms=settings.CONVERSATION_LOCK_TIMEOUT_MS,
        busy=busy,
        bound_by_first_statement=bound_by_first_statement,
    )


def lock_bound() -> RawSQL:
    """The conversation lock timeout, set by the statement this filter is added to."""
    return lock_timeout_bound(settings.CONVERSATION_LOCK_TIMEOUT_MS)


def conversation_lock(conversation_id: uuid.UUID) -> Conversation:
    # NO KEY UPDATE: serialises writers of this conversation but lets other transactions insert
    # rows that reference it (their FK check takes KEY SHARE, which FOR UPDATE would block).
    return Conversation.objects.for_update().filter(lock_bound()).get(pk=conversation_id)


def conversation_lock_by_channel(user_id: str, key: str) -> Conversation | None:
    """Look the (user, channel) index up and lock the conversation it names, in one statement;
    None when the pair has no conversation yet."""
    current = ChannelUserIndex.objects.filter(user_id=user_id, channel=key)
    return (
        Conversation.objects.for_update()
        .filter(lock_bound(), pk=Subquery(current.values("conversation_id")[:1]))
        .first()
    )


def thread_lock(thread_id: uuid.UUID) -> Thread:
    return Thread.objects.for_update().filter(lock_bound()).get(pk=thread_id)


def thread_lock_with_conversation(
    user_id: str, thread_id: uuid.UUID
) -> tuple[Conversation | None, Thread]:
    """Lock the tenant's thread's conversation, then the thread (the policy's order)."""
    tenant_thread = Thread.objects.filter(pk=thread_id, user_id=user_id)
    # No row: the thread is unknown (found out below) or has no conversation. If the
    # conversation was deleted meanwhile, the thread outlives it (its foreign key is now null)
    # rather than the call failing.
    conversation = (
        Conversation.objects.for_update()
        .filter(lock_bound(), pk=Subquery(tenant_thread.values("conversation_id")))
        .first()
    )
    thread = Thread.objects.for_update().filter(pk=thread_id, user_id=user_id).first()
    if thread is None:
        raise ThreadNotFound()
    return conversation, thread


def thread_run_enqueue(thread_id: uuid.UUID, *, new_thread: bool = False) -> bool:
    """Enqueue the thread's run in the surrounding transaction (so it exists iff we commit);
    False when a run of it was already waiting for a worker.

    ``new_thread``: the thread was inserted by this transaction, so no run of it can be waiting.
    """
    # By name: conversations.tasks imports the services, so the services cannot import it.
    run = procrastinate_app.configure_task(
        name=RUN_THREAD_TASK,
        queue=RUN_THREAD_QUEUE,
        queueing_lock=thread_run_queueing_lock(thread_id),
    )
    if new_thread:
        # No savepoint: the queueing lock names a thread nobody else can see before we commit,
        # so the queueing-lock index cannot refuse it.
        run.defer(thread_id=str(thread_id), **job_args())
        return True
    try:
        # Own savepoint: a duplicate queueing lock is a unique violation that must not abort
        # the caller's transaction.
        with transaction.atomic():
            run.defer(thread_id=str(thread_id), **job_args())
    except AlreadyEnqueued:
        # A run of this thread is already waiting for a worker; one is enough.
        return False
    return True


def thread_run_queueing_lock(thread_id: uuid.UUID) -> str:
    """The queueing lock of the thread's run jobs (at most one waiting per thread)."""
    return f"thread-run:{thread_id}"


_ENTRY_TABLE = ConversationEntry._meta.db_table
_CONVERSATION_TABLE = Conversation._meta.db_table

# The entries, their seqs' allocation and any deliveries stamped with them, in one statement.
# We hold the conversation row lock, so last_seq read with it is current; "last_seq + count" keeps
# the update correct even if that ever stopped being true (the unique (conversation, seq) backs
# it). Data-modifying CTEs run to completion whether or not the INSERT reads them.
_FLUSH_SQL = f"""
WITH allocated AS (
    UPDATE {_CONVERSATION_TABLE} SET last_seq = last_seq + %(count)s, updated_at = %(now)s
    WHERE id = %(conversation_id)s
), delivered AS (
    UPDATE {_ENTRY_TABLE} SET delivered_at = %(now)s WHERE id = ANY(%(delivered_ids)s::uuid[])
)
INSERT INTO {_ENTRY_TABLE}
    (id, conversation_id, user_id, seq, sender, content, thread_id, delivered_at, created_at,
     metadata)
SELECT entry.id, %(conversation_id)s, %(user_id)s, entry.seq, entry.sender, entry.content,
       entry.thread_id, entry.delivered_at, %(now)s, '{{}}'
FROM unnest(%(ids)s::uuid[], %(seqs)s::bigint[], %(senders)s::text[], %(contents)s::text[],
            %(thread_ids)s::uuid[], %(delivered_ats)s::timestamptz[])
     AS entry(id, seq, sender, content, thread_id, delivered_at)
"""


class EntryWriter:
    """Allocates gap-free seqs under the conversation lock and writes entries in one statement."""

    def __init__(self, conversation: Conversation):
        self.conversation = conversation
        self.entries: list[ConversationEntry] = []
        # Earlier entries a new thread takes as its goal: stamped delivered by flush().
        self.delivered: list[ConversationEntry] = []
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

    def deliver(self, entries: list[ConversationEntry]) -> None:
        """Stamp earlier entries delivered (at ``now``) with the next flush."""
        for entry in entries:
            entry.delivered_at = self.now
        self.delivered.extend(entries)

    def flush(self) -> list[ConversationEntry]:
        if not self.entries:
            if self.delivered:
                ConversationEntry.objects.filter(
                    pk__in=[entry.pk for entry in self.delivered]
                ).update(delivered_at=self.now)
                self.delivered = []
            return []
        with connection.cursor() as cursor:
            cursor.execute(
                _FLUSH_SQL,
                {
                    "count": len(self.entries),
                    "now": self.now,
                    "conversation_id": self.conversation.pk,
                    "user_id": self.conversation.user_id,
                    "delivered_ids": [entry.pk for entry in self.delivered],
                    "ids": [entry.pk for entry in self.entries],
                    "seqs": [entry.seq for entry in self.entries],
                    "senders": [entry.sender for entry in self.entries],
                    "contents": [entry.content for entry in self.entries],
                    "thread_ids": [entry.thread_id for entry in self.entries],
                    "delivered_ats": [entry.delivered_at for entry in self.entries],
                },
            )
        for entry in self.entries:
            entry._state.adding = False
            entry._state.db = connection.alias
        self.conversation.last_seq += len(self.entries)
        self.conversation.updated_at = self.now
        written, self.entries, self.delivered = self.entries, [], []
        return written

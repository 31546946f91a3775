"""The bounded transaction every service runs in, and its row locks in the policy's order
(conversation, then thread: see the package docstring)."""

from __future__ import annotations

import uuid
from contextlib import AbstractContextManager

from django.conf import settings
from django.db.models.expressions import RawSQL

from conversations.errors import ConversationBusy, ThreadNotFound
from conversations.models import ChannelUserIndex, Conversation, Thread
from core.db import (
    LOCK_TIMEOUT_BOUND_SQL,
    FixedSelect,
    bounded_transaction,
    lock_timeout_bound,
    lock_timeout_value,
)
from core.errors import Conflict


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


def lock_bound_value() -> str:
    """The parameter of ``LOCK_TIMEOUT_BOUND_SQL`` in SQL written by hand: the same bound."""
    return lock_timeout_value(settings.CONVERSATION_LOCK_TIMEOUT_MS)


# Every message takes it: SQL written once (see _CONVERSATION_OF_THREAD_LOCK below).
_CONVERSATION_BY_CHANNEL_LOCK = FixedSelect(
    Conversation,
    f"{LOCK_TIMEOUT_BOUND_SQL} AND user_id = %s AND id = (SELECT conversation_id"
    f" FROM {ChannelUserIndex._meta.db_table} WHERE user_id = %s AND channel = %s LIMIT 1)",
    tail='LIMIT 1 FOR NO KEY UPDATE OF "conversations_conversation"',
)


def conversation_lock_by_channel(user_id: str, key: str) -> Conversation | None:
    """Look the (user, channel) index up and lock the conversation it names, in one statement;
    None when the pair has no conversation yet."""
    # NO KEY UPDATE: serialises writers of this conversation but lets other transactions insert
    # rows that reference it (their FK check takes KEY SHARE, which FOR UPDATE would block).
    return _CONVERSATION_BY_CHANNEL_LOCK.first([lock_bound_value(), user_id, user_id, key])


def thread_lock(user_id: str, thread_id: uuid.UUID) -> Thread:
    return Thread.objects.for_update().filter(lock_bound()).get(pk=thread_id, user_id=user_id)


# Both locks of every engine write (inbox, outcome...): SQL written once, since the ORM spends more
# CPU building these two statements than PostgreSQL spends running them (bench/lookups.py).
_CONVERSATION_OF_THREAD_LOCK = FixedSelect(
    Conversation,
    f"{LOCK_TIMEOUT_BOUND_SQL} AND user_id = %s AND id = (SELECT conversation_id"
    " FROM conversations_thread WHERE id = %s AND user_id = %s)",
    tail='LIMIT 1 FOR NO KEY UPDATE OF "conversations_conversation"',
)
_THREAD_LOCK = FixedSelect(
    Thread,
    "id = %s AND user_id = %s",
    tail='LIMIT 1 FOR NO KEY UPDATE OF "conversations_thread"',
)


def thread_lock_with_conversation(
    user_id: str, thread_id: uuid.UUID
) -> tuple[Conversation | None, Thread]:
    """Lock the tenant's thread's conversation, then the thread (the policy's order)."""
    # No row: the thread is unknown (found out below) or has no conversation. If the
    # conversation was deleted meanwhile, the thread outlives it (its foreign key is now null)
    # rather than the call failing. The first statement sets the transaction's lock bound.
    conversation = _CONVERSATION_OF_THREAD_LOCK.first(
        [lock_bound_value(), user_id, thread_id, user_id]
    )
    thread = _THREAD_LOCK.first([thread_id, user_id])
    if thread is None:
        raise ThreadNotFound()
    return conversation, thread

"""Reads of the conversations app, always scoped by tenant (another tenant's row is a 404)."""

from __future__ import annotations

import uuid
from typing import Any

from django.db.models import Prefetch, QuerySet

from conversations.errors import ConversationNotFound, ThreadNotFound
from conversations.models import Conversation, ConversationEntry, Thread
from core.db import fixed_exists, server_bound_cursor


def conversation_list(*, user_id: str, channel: str | None = None) -> QuerySet[Conversation]:
    """The tenant's conversations, newest first (one query per page; no joins)."""
    conversations = Conversation.objects.filter(user_id=user_id)
    if channel is not None:
        conversations = conversations.filter(channel=channel)
    return conversations.order_by("-created_at", "-id")


def conversation_get(*, user_id: str, conversation_id: uuid.UUID) -> Conversation:
    """One conversation with its active (tracked) threads prefetched."""
    active = Prefetch(
        "threads",
        queryset=Thread.objects.filter(user_id=user_id, tracked=True).order_by("created_at"),
        to_attr="active_threads",
    )
    return _tenant_conversation(
        Conversation.objects.all().prefetch_related(active), user_id, conversation_id
    )


def conversation_get_for_update(*, user_id: str, conversation_id: uuid.UUID) -> Conversation:
    """One conversation, row-locked (``FOR NO KEY UPDATE``) until the caller's transaction ends."""
    return _tenant_conversation(Conversation.objects.for_update(), user_id, conversation_id)


def _tenant_conversation(
    conversations: QuerySet[Conversation], user_id: str, conversation_id: uuid.UUID
) -> Conversation:
    try:
        return conversations.get(pk=conversation_id, user_id=user_id)
    except Conversation.DoesNotExist:
        raise ConversationNotFound() from None


# The long-poll asks these on every request and every wake-up: SQL written once, not built by the
# ORM each time (see core.db.FixedSelect).
_CONVERSATION_OF_TENANT = (
    "SELECT 1 FROM conversations_conversation WHERE id = %s AND user_id = %s LIMIT 1"
)
_ENTRY_AFTER = (
    "SELECT 1 FROM conversations_conversationentry"
    " WHERE conversation_id = %s AND user_id = %s AND seq > %s LIMIT 1"
)
# One sender's entries (a client waiting for the agent's reply): a statement of its own rather
# than a built one, so each stays one prepared statement. Both probe entry_by_sender_seq
# (conversation, sender, seq): however many entries of other senders follow after_seq, a waiter
# reads none of them.
_ENTRY_AFTER_FROM = (
    "SELECT 1 FROM conversations_conversationentry"
    " WHERE conversation_id = %s AND user_id = %s AND seq > %s AND sender = %s LIMIT 1"
)


# The first page of entry_list, which every long-poll answers with.
_ENTRY_FIRST_PAGE = (
    "SELECT id, seq, sender, content, thread_id, created_at, delivered_at"
    " FROM conversations_conversationentry"
    " WHERE conversation_id = %s AND user_id = %s AND seq > %s ORDER BY seq LIMIT %s"
)
_ENTRY_FIRST_PAGE_FROM = (
    "SELECT id, seq, sender, content, thread_id, created_at, delivered_at"
    " FROM conversations_conversationentry"
    " WHERE conversation_id = %s AND user_id = %s AND seq > %s AND sender = %s"
    " ORDER BY seq LIMIT %s"
)


def conversation_check(*, user_id: str, conversation_id: uuid.UUID) -> None:
    """Raise ConversationNotFound unless the tenant has this conversation."""
    if not fixed_exists(_CONVERSATION_OF_TENANT, [conversation_id, user_id]):
        raise ConversationNotFound()


def entry_list(
    *,
    user_id: str,
    conversation_id: uuid.UUID,
    after_seq: int | None = None,
    sender: str | None = None,
) -> QuerySet[ConversationEntry]:
    """A conversation's entries in seq order, optionally only those after ``after_seq`` and only
    ``sender``'s (an EntrySender value)."""
    conversation_check(user_id=user_id, conversation_id=conversation_id)
    entries = ConversationEntry.objects.filter(conversation_id=conversation_id, user_id=user_id)
    if after_seq is not None:
        entries = entries.filter(seq__gt=after_seq)
    if sender is not None:
        entries = entries.filter(sender=sender)
    return entries.order_by("seq")


def entry_first_rows(
    *,
    user_id: str,
    conversation_id: uuid.UUID,
    after_seq: int | None,
    limit: int,
    sender: str | None = None,
) -> list[tuple[Any, ...]]:
    """The first ``limit`` rows of ``entry_list`` (the caller has checked the conversation):
    id, seq, sender, content, thread_id, created_at, delivered_at."""
    after = -1 if after_seq is None else after_seq
    with server_bound_cursor() as cursor:
        if sender is None:
            cursor.execute(_ENTRY_FIRST_PAGE, [conversation_id, user_id, after, limit])
        else:
            cursor.execute(_ENTRY_FIRST_PAGE_FROM, [conversation_id, user_id, after, sender, limit])
        return list(cursor.fetchall())


def entry_after_exists(
    *, user_id: str, conversation_id: uuid.UUID, after_seq: int | None, sender: str | None = None
) -> bool:
    """Whether the conversation has an entry after ``after_seq`` (any entry, for None), of
    ``sender`` when given."""
    after = -1 if after_seq is None else after_seq
    if sender is None:
        return fixed_exists(_ENTRY_AFTER, [conversation_id, user_id, after])
    return fixed_exists(_ENTRY_AFTER_FROM, [conversation_id, user_id, after, sender])


def thread_get(*, user_id: str, thread_id: uuid.UUID) -> Thread:
    return _tenant_thread(Thread.objects.all(), user_id, thread_id)


def thread_get_for_update(*, user_id: str, thread_id: uuid.UUID) -> Thread:
    """One thread, row-locked (``FOR NO KEY UPDATE``) until the caller's transaction ends."""
    return _tenant_thread(Thread.objects.for_update(), user_id, thread_id)


def _tenant_thread(threads: QuerySet[Thread], user_id: str, thread_id: uuid.UUID) -> Thread:
    try:
        return threads.get(pk=thread_id, user_id=user_id)
    except Thread.DoesNotExist:
        raise ThreadNotFound() from None

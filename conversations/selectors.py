"""Reads of the conversations app, always scoped by tenant (another tenant's row is a 404)."""

from __future__ import annotations

import uuid

from django.db.models import Prefetch, QuerySet

from conversations.errors import ConversationNotFound, ThreadNotFound
from conversations.models import Conversation, ConversationEntry, Thread


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
        queryset=Thread.objects.filter(tracked=True).order_by("created_at"),
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


def entry_list(
    *, user_id: str, conversation_id: uuid.UUID, after_seq: int | None = None
) -> QuerySet[ConversationEntry]:
    """A conversation's entries in seq order, optionally only those after ``after_seq``."""
    if not Conversation.objects.filter(pk=conversation_id, user_id=user_id).exists():
        raise ConversationNotFound()
    entries = ConversationEntry.objects.filter(conversation_id=conversation_id, user_id=user_id)
    if after_seq is not None:
        entries = entries.filter(seq__gt=after_seq)
    return entries.order_by("seq")


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

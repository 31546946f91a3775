"""Conversations: the (channel, user) index, a new conversation, the busy policy, clearing."""

from __future__ import annotations

import uuid

from django.db import connection
from django.utils import timezone

from conversations import selectors
from conversations.errors import ConversationNotFound
from conversations.models import BusyPolicy, ChannelUserIndex, Conversation
from conversations.services.lifecycle import thread_cancel
from conversations.services.locking import locked_transaction, thread_lock
from conversations.services.validation import channel_key, check_user_id
from conversations.services.values import ClearResult
from core.errors import InvalidInput

# The pair's index row and its conversation, or nothing if another transaction holds the pair:
# ON CONFLICT DO NOTHING (no savepoint) and the conversation inserted only with the index row, so
# a lost race leaves no orphan conversation. The foreign key is checked at commit (deferred).
_CREATE_SQL = f"""
WITH pair AS (
    INSERT INTO {ChannelUserIndex._meta.db_table}
        (id, user_id, channel, conversation_id, updated_at)
    VALUES (%(index_id)s, %(user_id)s, %(channel)s, %(conversation_id)s, %(now)s)
    ON CONFLICT (user_id, channel) DO NOTHING
    RETURNING conversation_id
)
INSERT INTO {Conversation._meta.db_table}
    (id, user_id, channel, metadata, busy_policy, last_seq, created_at, updated_at)
SELECT conversation_id, %(user_id)s, %(channel)s, '{{}}', NULL, 0, %(now)s, %(now)s FROM pair
"""


def conversation_create(user_id: str, key: str) -> Conversation | None:
    """The (user, channel) pair's first conversation, in one statement; None if another
    transaction created it first (its row is visible once this returns)."""
    now = timezone.now()
    conversation = Conversation(
        user_id=user_id, channel=key, metadata={}, last_seq=0, created_at=now, updated_at=now
    )
    with connection.cursor() as cursor:
        cursor.execute(
            _CREATE_SQL,
            {
                "index_id": uuid.uuid4(),
                "user_id": user_id,
                "channel": key,
                "conversation_id": conversation.id,
                "now": now,
            },
        )
        created = cursor.rowcount == 1
    if not created:
        # Our insert waited on the index until the winner committed, so its row is visible now.
        return None
    conversation._state.adding = False
    conversation._state.db = connection.alias
    return conversation


def conversation_resolve(user_id: str, key: str) -> uuid.UUID:
    found = (
        ChannelUserIndex.objects.filter(user_id=user_id, channel=key)
        .values_list("conversation_id", flat=True)
        .first()
    )
    if found is not None:
        return found
    created = conversation_create(user_id, key)
    if created is not None:
        return created.id
    return ChannelUserIndex.objects.values_list("conversation_id", flat=True).get(
        user_id=user_id, channel=key
    )


def conversation_get_or_create(
    *, user_id: str, channel: str, scope: str | None = None
) -> Conversation:
    """The current conversation of (channel, user), created race-free through the unique index."""
    check_user_id(user_id)
    key = channel_key(channel, scope)
    with locked_transaction():
        conversation_id = conversation_resolve(user_id, key)
    return Conversation.objects.get(pk=conversation_id, user_id=user_id)


def conversation_start_new(*, user_id: str, channel: str, scope: str | None = None) -> Conversation:
    """A fresh conversation for (channel, user); the index is re-pointed, the old one kept."""
    check_user_id(user_id)
    key = channel_key(channel, scope)
    with locked_transaction():
        conversation = Conversation.objects.create(user_id=user_id, channel=key)
        # One upsert: racing with a first message's get-or-create on the same pair cannot fail.
        ChannelUserIndex.objects.bulk_create(
            [ChannelUserIndex(user_id=user_id, channel=key, conversation=conversation)],
            update_conflicts=True,
            unique_fields=["user_id", "channel"],
            update_fields=["conversation", "updated_at"],
        )
    return conversation


def conversation_busy_policy_set(
    *, user_id: str, conversation_id: uuid.UUID, busy_policy: str | None
) -> Conversation:
    """Set (or with None, reset to the setting's default) the conversation's busy policy."""
    if busy_policy is not None and busy_policy not in BusyPolicy.values:
        problem = f"must be one of {', '.join(BusyPolicy.values)} or null"
        raise InvalidInput(f"busy_policy {problem}.", details={"busy_policy": [problem]})
    with locked_transaction():
        # The UPDATE waits for the row lock like a message does, so it is bounded the same way.
        updated = Conversation.objects.filter(pk=conversation_id, user_id=user_id).update(
            busy_policy=busy_policy, updated_at=timezone.now()
        )
    if not updated:
        raise ConversationNotFound()
    return Conversation.objects.get(pk=conversation_id, user_id=user_id)


def conversation_clear(*, user_id: str, conversation_id: uuid.UUID) -> ClearResult:
    """Under the conversation lock: untrack and cancel its threads, then delete its entries.

    A message racing with it either lands before (and is cleared) or after (and starts fresh).
    Seqs are never reused, so ``after_seq`` cursors stay valid.
    """
    with locked_transaction():
        conversation = selectors.conversation_get_for_update(
            user_id=user_id, conversation_id=conversation_id
        )
        untracked = []
        # Threads before entries: thread_inbox_take locks a thread and then its entries.
        for thread_id in (
            conversation.threads.filter(user_id=user_id, tracked=True)
            .order_by("pk")
            .values_list("pk", flat=True)
        ):
            thread = thread_lock(user_id, thread_id)
            thread_cancel(thread, reason="conversation cleared")
            untracked.append(thread.id)
        deleted, _ = conversation.entries.filter(user_id=user_id).delete()
        Conversation.objects.filter(pk=conversation.pk, user_id=user_id).update(
            updated_at=timezone.now()
        )
    conversation.refresh_from_db()
    return ClearResult(
        conversation=conversation, deleted_entries=deleted, untracked_thread_ids=untracked
    )

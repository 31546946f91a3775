"""The turn's reads of its thread's messages, written once: the ORM spent more CPU building them
than PostgreSQL spends running them (tests/conversations/test_fixed_sql.py holds them to the ORM
queries they stand for)."""

from __future__ import annotations

from conversations.models import EntrySender

# Undelivered: ConversationEntry.objects.undelivered_for, served by the index
# entry_undelivered_by_thread.
UNDELIVERED_SQL = (
    "SELECT 1 FROM conversations_conversationentry WHERE user_id = %s AND thread_id = %s"
    f" AND sender = '{EntrySender.USER}' AND delivered_at IS NULL LIMIT 1"
)
# The newest of those messages, for the debounce (the same rows, the same index).
NEWEST_UNDELIVERED_SQL = (
    "SELECT max(created_at) FROM conversations_conversationentry"
    " WHERE user_id = %s AND thread_id = %s"
    f" AND sender = '{EntrySender.USER}' AND delivered_at IS NULL"
)
GOAL_SQL = (
    "SELECT seq, content FROM conversations_conversationentry"
    " WHERE user_id = %s AND conversation_id = %s AND seq = ANY(%s) ORDER BY seq"
)

"""What a turn's model sees besides the turn's own messages: the tenant's identity files as the
system prompt, and the conversation's recent entries before the turn. Read once per run."""

from __future__ import annotations

from django.conf import settings

from conversations.models import EntrySender
from core.db import server_bound_cursor
from engine.checkpoint import TurnState
from engine.model_clients import ChatMessage

# The tenant's identity files, in the order the system prompt shows them.
PROMPT_DOCUMENTS = (
    ("AGENTS.md", "Agent Instructions"),
    ("SOUL.md", "Core Values"),
    ("USER.md", "User Context"),
    ("MEMORY.md", "Long-Term Memory"),
)

# Written once, as the turn's other reads (the ORM spent more CPU building them than PostgreSQL
# spends running them).
_PROMPT_DOCUMENTS_SQL = (
    "SELECT path, content FROM workspace_document WHERE user_id = %s AND path = ANY(%s)"
)
# The conversation's user and agent entries before the thread started, newest first, leaving out
# the turn's own messages. "Before the thread started" is before its first system entry
# ("Thread started", written with its spawn): a follow-up thread's goal was sent before its
# predecessor replied, and that reply belongs in the history, before the goal. A thread without
# one falls back to its first message (all entries when it has none either).
_HISTORY_SQL = f"""
WITH bound AS (
    SELECT COALESCE(
        (SELECT min(started.seq) FROM conversations_conversationentry started
         WHERE started.user_id = %(user_id)s AND started.thread_id = %(thread)s
           AND started.sender = '{EntrySender.SYSTEM}'),
        %(before)s::integer) AS seq
)
SELECT e.sender, e.content FROM conversations_conversationentry e, bound
WHERE e.user_id = %(user_id)s AND e.conversation_id = %(conversation)s
  AND e.sender IN ('{EntrySender.USER}', '{EntrySender.AGENT}')
  AND NOT (e.seq = ANY(%(own)s::integer[]))
  AND (bound.seq IS NULL OR e.seq < bound.seq)
ORDER BY e.seq DESC LIMIT %(limit)s
"""


def system_prompt(user_id: str) -> str:
    """The tenant's identity files that exist and are not blank, each under its title."""
    with server_bound_cursor() as cursor:
        cursor.execute(_PROMPT_DOCUMENTS_SQL, [user_id, [path for path, _ in PROMPT_DOCUMENTS]])
        found = dict(cursor.fetchall())
    sections = [
        f"## {title}\n\n{found[path].strip()}"
        for path, title in PROMPT_DOCUMENTS
        if found.get(path, "").strip()
    ]
    return "\n\n---\n\n".join(sections)


def history_before(state: TurnState) -> list[ChatMessage]:
    """The conversation's entries before this turn (users and agent; system notes left out)."""
    if not state.conversation_id or settings.ENGINE_HISTORY_ENTRIES == 0:
        return []
    seqs = [message["seq"] for message in state.messages if "seq" in message]
    with server_bound_cursor() as cursor:
        cursor.execute(
            _HISTORY_SQL,
            {
                "user_id": state.user_id,
                "conversation": state.conversation_id,
                "thread": state.thread_id,
                "own": seqs,
                "before": min(seqs) if seqs else None,
                "limit": settings.ENGINE_HISTORY_ENTRIES,
            },
        )
        recent = cursor.fetchall()
    return [
        {"role": "user" if sender == EntrySender.USER else "assistant", "content": content}
        for sender, content in reversed(recent)
    ]

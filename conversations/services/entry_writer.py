"""The seq-allocating entry writer: a service's entries (and the deliveries it stamps) written
under the conversation lock in one statement."""

from __future__ import annotations

import datetime

from django.db import connection
from django.utils import timezone

from conversations.models import Conversation, ConversationEntry, EntrySender, Thread
from core.db import server_bound_cursor

_ENTRY_TABLE = ConversationEntry._meta.db_table
_CONVERSATION_TABLE = Conversation._meta.db_table

# The entries, their seqs' allocation and any deliveries stamped with them, in one statement.
# We hold the conversation row lock, so last_seq read with it is current; "last_seq + count" keeps
# the update correct even if that ever stopped being true (the unique (conversation, seq) backs
# it). Data-modifying CTEs run to completion whether or not the INSERT reads them.
_FLUSH_SQL = f"""
WITH allocated AS (
    UPDATE {_CONVERSATION_TABLE} SET last_seq = last_seq + %(count)s, updated_at = %(now)s
    WHERE id = %(conversation_id)s AND user_id = %(user_id)s
), delivered AS (
    UPDATE {_ENTRY_TABLE} SET delivered_at = %(now)s
    WHERE id = ANY(%(delivered_ids)s::uuid[]) AND user_id = %(user_id)s
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
                    pk__in=[entry.pk for entry in self.delivered],
                    user_id=self.conversation.user_id,
                ).update(delivered_at=self.now)
                self.delivered = []
            return []
        with server_bound_cursor() as cursor:
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

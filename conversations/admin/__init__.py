"""Operators' view of conversations and threads. Writes go through the services.

Lists stay fast on large tables: no full counts, no per-row queries (ids and links are built
from foreign key columns, not joined rows), inline lists capped with a link to the rest.

One module per page family, each registering its models when imported (as the admin's
autodiscovery imports this package): ``conversations`` (with the channel index), ``threads``
(the thread page's sections in ``thread_page``, their markup in
``templates/admin/conversations/thread/``), ``entries``; ``live`` gives the conversation and
thread pages their live panels and serves the staff event streams those read.
"""

from conversations.admin.conversations import (
    ADMIN_INLINE_ENTRIES,
    ADMIN_INLINE_THREADS,
    ChannelUserIndexAdmin,
    ConversationAdmin,
    EntryInline,
    ThreadInline,
)
from conversations.admin.entries import ConversationEntryAdmin
from conversations.admin.thread_page import THREAD_PAGE_ENTRIES
from conversations.admin.threads import (
    WAITING_MINUTES,
    ExpiredLeaseFilter,
    ThreadAdmin,
    WaitingLongerThanFilter,
)

__all__ = [
    "ADMIN_INLINE_ENTRIES",
    "ADMIN_INLINE_THREADS",
    "THREAD_PAGE_ENTRIES",
    "WAITING_MINUTES",
    "ChannelUserIndexAdmin",
    "ConversationAdmin",
    "ConversationEntryAdmin",
    "EntryInline",
    "ExpiredLeaseFilter",
    "ThreadAdmin",
    "ThreadInline",
    "WaitingLongerThanFilter",
]

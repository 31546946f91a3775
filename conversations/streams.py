"""What the event streams of a conversation and of a thread send: their cursors, the replay read
from the database, and the live delivery of notifications, checked against the cursor.

A conversation's durable events are its entries (numbered by ``seq``) and the events of its
threads (``ThreadEvent``, numbered per thread). Both numberings are gap-free and in commit order,
since each is taken under a row lock held to commit (the conversation's, the thread's); no
global order exists, and none is needed. A conversation stream's cursor is therefore

    ``<entry seq>`` then ``.<start seq>:<event seq>`` for each thread it still follows,

where a thread is named by the seq of the entry that announced it ("Thread started"), and a
thread whose final event has been sent is dropped. Resuming from it sends the entries after the
seq, the events after each followed thread's number, and every event of the threads announced
after the seq; a thread announced at or before the seq and not listed has ended and was seen
whole. A thread stream's cursor is its event number.

Live delivery takes the rows from the notifications (``conversations.event_sql``) when they
carry them and come next in order; anything else (a gap, a payload too large to carry, an event
of a thread whose announcement has not arrived) is settled by reading the database from the
cursor, so a stream never skips or repeats, however notifications and commits interleave.
"""

from __future__ import annotations

import datetime
import json
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from conversations.models import TERMINAL_EVENT_KINDS
from conversations.stream_frames import entry_data, frame, thread_event_data
from core.db import server_bound_cursor
from core.notify import ENTRIES_CHANNEL, KEYS_CHANNEL

EVENTS_CHANNEL = "ironclaw_events"
DELTAS_CHANNEL = "ironclaw_deltas"
# At most this many rows per read, and entries up to about this many bytes of content (at least
# one): a stream further behind reads again once its client has taken the page, so a replay or
# a catch-up costs its web process a page at a time, however long the conversation.
READ_LIMIT = 500
READ_PAGE_BYTES = 256 * 1024
# Events of threads not announced yet, held per stream until the announcement arrives.
PENDING_MAX = 200

# ASCII digits only: ``\d`` would take any script's digits, which int() reads as numbers too.
_CONVERSATION_CURSOR = re.compile(r"\A([0-9]{1,18})((?:\.[0-9]{1,18}:[0-9]{1,10}){0,64})\Z")
_THREAD_CURSOR = re.compile(r"\A[0-9]{1,10}\Z")
# A thread event's number is an integer column (ThreadEvent.seq): a larger one was never sent, and
# the database would refuse to compare it (a 500, not a 400).
EVENT_SEQ_MAX = 2**31 - 1


class CursorInvalid(ValueError):
    """A Last-Event-ID (or ``after``) this stream did not send."""


@dataclass
class ConversationCursor:
    entry_seq: int = 0
    # start seq -> the last event seq sent, for the threads followed.
    threads: dict[int, int] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.entry_seq}" + "".join(
            f".{start}:{seen}" for start, seen in sorted(self.threads.items())
        )

    @classmethod
    def parse(cls, text: str) -> ConversationCursor:
        match = _CONVERSATION_CURSOR.match(text.strip())
        if match is None:
            raise CursorInvalid(
                "must be an id this stream sent, e.g. 12 or 12.9:3 (0 replays everything)"
            )
        threads: dict[int, int] = {}
        for part in filter(None, match.group(2).split(".")):
            start, seen = part.split(":")
            if int(start) in threads:
                raise CursorInvalid("names a thread twice")
            if int(seen) > EVENT_SEQ_MAX:
                raise CursorInvalid("names an event number no thread reaches")
            threads[int(start)] = int(seen)
        entry_seq = int(match.group(1))
        if any(start > entry_seq for start in threads):
            raise CursorInvalid("names a thread announced after its entry seq")
        return cls(entry_seq=entry_seq, threads=threads)


def thread_cursor_parse(text: str) -> int:
    if _THREAD_CURSOR.match(text.strip()) is None or int(text) > EVENT_SEQ_MAX:
        raise CursorInvalid("must be an event number this stream sent, e.g. 3 (0 replays all)")
    return int(text)


_CURSOR_CHECK_SQL = """
SELECT c.last_seq, t.start_seq, t.event_seq
FROM conversations_conversation c
LEFT JOIN conversations_thread t ON t.conversation_id = c.id AND t.user_id = c.user_id
     AND t.start_seq = ANY(%(starts)s::bigint[])
WHERE c.id = %(conversation_id)s AND c.user_id = %(user_id)s
"""


def conversation_cursor_check(
    conversation_id: uuid.UUID, cursor: ConversationCursor, *, user_id: str
) -> None:
    """Refuse a cursor ahead of the conversation (an entry or a thread event it does not have
    yet, e.g. one kept from before a database restore): resuming from it would skip whatever
    comes to fill the difference."""
    rows = _rows(
        _CURSOR_CHECK_SQL,
        {"conversation_id": conversation_id, "user_id": user_id, "starts": sorted(cursor.threads)},
    )
    if rows and cursor.entry_seq > rows[0]["last_seq"]:
        raise CursorInvalid(
            f"is ahead of this conversation, whose last entry is {rows[0]['last_seq']}"
        )
    found = {row["start_seq"]: row["event_seq"] for row in rows if row["start_seq"] is not None}
    for start, seen in cursor.threads.items():
        if start not in found:
            raise CursorInvalid(f"names a thread at entry {start}, which announced none")
        if seen > found[start]:
            raise CursorInvalid(f"is ahead of the thread announced by entry {start}")


# --- Reads ----------------------------------------------------------------------------------------

# The page's entries: up to READ_LIMIT, and no further than the first that takes the content
# past READ_PAGE_BYTES (page_bytes: the content up to and including each entry).
_ENTRIES_AFTER_SQL = """
SELECT * FROM (
    SELECT e.id, e.seq, e.sender, e.content, e.thread_id, e.created_at, e.delivered_at,
           t.id IS NOT NULL AS starts_thread,
           sum(octet_length(e.content)) OVER (ORDER BY e.seq) AS page_bytes
    FROM (SELECT * FROM conversations_conversationentry
          WHERE conversation_id = %(conversation_id)s AND user_id = %(user_id)s
            AND seq > %(after)s
          ORDER BY seq LIMIT %(limit)s) AS e
    LEFT JOIN conversations_thread t ON t.id = e.thread_id AND t.user_id = %(user_id)s
         AND t.start_seq = e.seq
) AS page
WHERE page_bytes - octet_length(content) <= %(page_bytes)s
ORDER BY seq
"""

# The events after the cursor of the threads it follows, and every event of the threads announced
# after its seq up to the last entry this read returns (later ones wait for their announcement).
_CONVERSATION_EVENTS_SQL = """
SELECT ev.thread_id, ev.seq, ev.kind, ev.data, ev.created_at, t.start_seq
FROM conversations_thread t
JOIN conversations_threadevent ev ON ev.thread_id = t.id AND ev.user_id = t.user_id
LEFT JOIN unnest(%(starts)s::bigint[], %(seen)s::int[]) AS followed(start_seq, seen)
       ON followed.start_seq = t.start_seq
WHERE t.conversation_id = %(conversation_id)s AND t.user_id = %(user_id)s
  AND (t.start_seq > %(after)s OR t.start_seq = ANY(%(starts)s::bigint[]))
  AND CASE WHEN followed.start_seq IS NOT NULL THEN ev.seq > followed.seen
           ELSE t.start_seq > %(after)s AND t.start_seq <= %(upto)s END
ORDER BY ev.created_at, ev.thread_id, ev.seq LIMIT %(limit)s
"""

_THREAD_EVENTS_SQL = """
SELECT thread_id, seq, kind, data, created_at FROM conversations_threadevent
WHERE thread_id = %(thread_id)s AND user_id = %(user_id)s AND seq > %(after)s
ORDER BY seq LIMIT %(limit)s
"""

_THREAD_STARTS_SQL = """
SELECT start_seq, id FROM conversations_thread
WHERE conversation_id = %(conversation_id)s AND user_id = %(user_id)s
  AND start_seq = ANY(%(starts)s::bigint[])
"""


_NOW_SQL = """
SELECT c.last_seq, t.start_seq, t.event_seq
FROM conversations_conversation c
LEFT JOIN conversations_thread t ON t.conversation_id = c.id AND t.user_id = c.user_id
     AND t.start_seq IS NOT NULL AND t.state IN ('created', 'running', 'waiting', 'suspended')
WHERE c.id = %(conversation_id)s{tenant}
"""
# The API's, pinned to the tenant; the admin's (an operator's page, which names a conversation by
# its id alone) is a multi-shard query on Citus (docs/citus.md).
_NOW_OF_TENANT_SQL = _NOW_SQL.format(tenant=" AND c.user_id = %(user_id)s")
_NOW_ANY_TENANT_SQL = _NOW_SQL.format(tenant="")


def conversation_now(conversation_id: uuid.UUID, *, user_id: str | None) -> ConversationCursor:
    """The cursor of a stream that starts now: the last entry, and the live threads' last
    events (one snapshot, so every live thread it names was announced by then). ``user_id``
    None: of whichever tenant has the conversation (the admin)."""
    sql = _NOW_ANY_TENANT_SQL if user_id is None else _NOW_OF_TENANT_SQL
    rows = _rows(sql, {"conversation_id": conversation_id, "user_id": user_id})
    cursor = ConversationCursor(entry_seq=rows[0]["last_seq"] if rows else 0)
    for row in rows:
        if row["start_seq"] is not None:
            cursor.threads[row["start_seq"]] = row["event_seq"]
    return cursor


def _rows(sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    with server_bound_cursor() as cursor:
        cursor.execute(sql, params)
        names = [column.name for column in cursor.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _event_row(row: dict[str, Any]) -> dict[str, Any]:
    data = row["data"]
    return {
        "thread_id": str(row["thread_id"]),
        "seq": row["seq"],
        "type": row["kind"],
        "data": json.loads(data) if isinstance(data, str) else data,
        "at": row["created_at"],
    }


@dataclass
class ConversationRead:
    entries: list[dict[str, Any]]
    events: list[dict[str, Any]]
    # start seq -> thread id, for the threads the cursor follows.
    followed: dict[int, str]
    more: bool


def conversation_read(
    conversation_id: uuid.UUID, cursor: ConversationCursor, *, user_id: str
) -> ConversationRead:
    """The conversation's durable events after ``cursor`` (at most READ_LIMIT of each kind)."""
    entries = _rows(
        _ENTRIES_AFTER_SQL,
        {
            "conversation_id": conversation_id,
            "user_id": user_id,
            "after": cursor.entry_seq,
            "limit": READ_LIMIT,
            "page_bytes": READ_PAGE_BYTES,
        },
    )
    cut = len(entries) == READ_LIMIT or (
        bool(entries) and entries[-1]["page_bytes"] > READ_PAGE_BYTES
    )
    upto = entries[-1]["seq"] if entries else cursor.entry_seq
    starts = sorted(cursor.threads)
    events = _rows(
        _CONVERSATION_EVENTS_SQL,
        {
            "conversation_id": conversation_id,
            "user_id": user_id,
            "starts": starts,
            "seen": [cursor.threads[start] for start in starts],
            "after": cursor.entry_seq,
            "upto": upto,
            "limit": READ_LIMIT,
        },
    )
    followed = (
        {
            row["start_seq"]: str(row["id"])
            for row in _rows(
                _THREAD_STARTS_SQL,
                {"conversation_id": conversation_id, "user_id": user_id, "starts": starts},
            )
        }
        if starts
        else {}
    )
    return ConversationRead(
        entries=[{**entry_data(row), "starts_thread": row["starts_thread"]} for row in entries],
        events=[_event_row(row) for row in events],
        followed=followed,
        more=cut or len(events) == READ_LIMIT,
    )


@dataclass
class ThreadRead:
    events: list[dict[str, Any]]
    more: bool


def thread_read(thread_id: uuid.UUID, after: int, *, user_id: str) -> ThreadRead:
    rows = _rows(
        _THREAD_EVENTS_SQL,
        {"thread_id": thread_id, "user_id": user_id, "after": after, "limit": READ_LIMIT},
    )
    return ThreadRead([_event_row(row) for row in rows], more=len(rows) == READ_LIMIT)


# --- Live state -----------------------------------------------------------------------------------


def _delta(data: dict[str, Any] | None) -> list[bytes]:
    return [frame("delta", data)] if data else []


class _KeyWatch:
    """A stream ends once the API key it was opened with is revoked or deleted (it was
    authenticated once, when it opened)."""

    topics: tuple[tuple[str, str], ...]
    revoked = False

    def watch_key(self, stream_key: str) -> None:
        """End the stream when ``stream_key`` ("key:<id>") is revoked."""
        self.topics = (*self.topics, (KEYS_CHANNEL, stream_key))


@dataclass
class _Followed:
    start_seq: int
    seen: int


class ConversationStream(_KeyWatch):
    """One client's stream of a conversation: its cursor, and what to send next."""

    def __init__(self, conversation_id: uuid.UUID, cursor: ConversationCursor, *, user_id: str):
        self.conversation_id = conversation_id
        self.user_id = user_id
        key = str(conversation_id)
        self.topics = ((ENTRIES_CHANNEL, key), (EVENTS_CHANNEL, key), (DELTAS_CHANNEL, key))
        self.entry_seq = cursor.entry_seq
        # The cursor's threads by start seq until the first read names them.
        self._unresolved = dict(cursor.threads)
        self.followed: dict[str, _Followed] = {}
        self.pending: dict[str, list[dict[str, Any]]] = {}
        self._pending_count = 0
        # Threads whose final event this stream sent: a notification or a read that still
        # brings one of their events (sent already) must not wait in ``pending`` for ever.
        self._ended: set[str] = set()

    @property
    def cursor(self) -> ConversationCursor:
        threads = {f.start_seq: f.seen for f in self.followed.values()} | self._unresolved
        return ConversationCursor(self.entry_seq, threads)

    # Both return (frames, whether the database must be read).
    def notified(
        self, channel: str, key: str, data: dict[str, Any] | None
    ) -> tuple[list[bytes], bool]:
        if channel == KEYS_CHANNEL:
            self.revoked = True
            return [], False
        if channel == DELTAS_CHANNEL:
            return _delta(data), False
        if data is None or data.get("partial") or self._unresolved:
            return [], True
        if channel == ENTRIES_CHANNEL:
            return self._entry(data)
        if channel == EVENTS_CHANNEL:
            return self._event(data)
        return [], False

    def _entry(self, data: dict[str, Any]) -> tuple[list[bytes], bool]:
        if data["seq"] <= self.entry_seq:
            return [], False
        if data["seq"] != self.entry_seq + 1:
            return [], True
        self.entry_seq = data["seq"]
        starts = (
            str(data["thread_id"]) if data.get("starts_thread") and data.get("thread_id") else None
        )
        if starts is not None:
            self.followed[starts] = _Followed(start_seq=data["seq"], seen=0)
        frames = [frame("entry", entry_data(data), str(self.cursor))]
        if starts is not None:
            frames.extend(self._resolve_pending(starts))
        return frames, False

    def _resolve_pending(self, thread_id: str) -> list[bytes]:
        frames: list[bytes] = []
        held = self.pending.pop(thread_id, [])
        self._pending_count -= len(held)
        for event in sorted(held, key=lambda e: e["seq"]):
            sent, _ = self._event(event)
            frames.extend(sent)
        return frames

    def _event(self, data: dict[str, Any]) -> tuple[list[bytes], bool]:
        thread_id = str(data["thread_id"])
        followed = self.followed.get(thread_id)
        if followed is None:
            if thread_id in self._ended:
                return [], False
            if self._pending_count >= PENDING_MAX:
                return [], True
            self.pending.setdefault(thread_id, []).append(data)
            self._pending_count += 1
            return [], False
        if data["seq"] <= followed.seen:
            return [], False
        if data["seq"] != followed.seen + 1:
            return [], True
        followed.seen = data["seq"]
        if data["type"] in TERMINAL_EVENT_KINDS:
            del self.followed[thread_id]
            self._ended.add(thread_id)
        return [frame("thread", thread_event_data(data), str(self.cursor))], False

    def read_plan(self) -> Callable[[], ConversationRead]:
        conversation_id, cursor, user_id = self.conversation_id, self.cursor, self.user_id
        return lambda: conversation_read(conversation_id, cursor, user_id=user_id)

    def read_done(self, result: object) -> tuple[list[bytes], bool]:
        """Apply a read, dropping what was sent meanwhile; (frames, whether to read again)."""
        assert isinstance(result, ConversationRead)
        for start, thread_id in result.followed.items():
            if start in self._unresolved:
                self.followed[thread_id] = _Followed(start, self._unresolved.pop(start))
        # A followed thread the database no longer has (deleted): nothing more will come.
        self._unresolved = {}
        frames: list[bytes] = []
        gap = False
        for kind, item in _merged(result.entries, result.events):
            sent, missing = self._entry(item) if kind == "entry" else self._event(item)
            frames.extend(sent)
            gap = gap or missing
        for thread_id in [t for t in self.pending if t in self.followed]:
            frames.extend(self._resolve_pending(thread_id))
        return frames, result.more or (gap and bool(frames))

    def done(self) -> bool:
        return self.revoked


def _merged(
    entries: list[dict[str, Any]], events: list[dict[str, Any]]
) -> Iterable[tuple[str, dict[str, Any]]]:
    """Entries and events in time order; each kind keeps its own order (a thread's events
    whose announcement comes later wait in ``pending`` for it)."""
    items = [("entry", entry, _sort_time(entry["created_at"]), 0) for entry in entries]
    items += [("thread", event, _sort_time(event["at"]), 1) for event in events]
    items.sort(key=lambda item: (item[2], item[3]))
    return [(kind, item) for kind, item, _, _ in items]


def _sort_time(value: datetime.datetime | str | None) -> datetime.datetime:
    if isinstance(value, datetime.datetime):
        return value
    if value:
        return datetime.datetime.fromisoformat(value)
    return datetime.datetime.min.replace(tzinfo=datetime.UTC)


class ThreadStream(_KeyWatch):
    """One client's stream of a thread: its events after a number, and its deltas; it ends
    with the thread's final event."""

    def __init__(self, thread_id: uuid.UUID, after: int, *, user_id: str, ended: bool = False):
        self.thread_id = thread_id
        self.user_id = user_id
        key = str(thread_id)
        self.topics = ((EVENTS_CHANNEL, key), (DELTAS_CHANNEL, key))
        self.seen = after
        # Given for a thread that has ended and whose final event the client has seen.
        self.ended = ended

    def notified(
        self, channel: str, key: str, data: dict[str, Any] | None
    ) -> tuple[list[bytes], bool]:
        if channel == KEYS_CHANNEL:
            self.revoked = True
            return [], False
        if channel == DELTAS_CHANNEL:
            return _delta(data), False
        if channel != EVENTS_CHANNEL:
            return [], False
        if data is None or data.get("partial"):
            return [], True
        return self._event(data)

    def _event(self, data: dict[str, Any]) -> tuple[list[bytes], bool]:
        if data["seq"] <= self.seen or self.ended:
            return [], False
        if data["seq"] != self.seen + 1:
            return [], True
        self.seen = data["seq"]
        self.ended = data["type"] in TERMINAL_EVENT_KINDS
        return [frame("thread", thread_event_data(data), str(self.seen))], False

    def read_plan(self) -> Callable[[], ThreadRead]:
        thread_id, after, user_id = self.thread_id, self.seen, self.user_id
        return lambda: thread_read(thread_id, after, user_id=user_id)

    def read_done(self, result: object) -> tuple[list[bytes], bool]:
        assert isinstance(result, ThreadRead)
        events, more = result.events, result.more
        frames: list[bytes] = []
        for event in events:
            frames.extend(self._event(event)[0])
        return frames, more and not self.ended

    def done(self) -> bool:
        return self.ended or self.revoked

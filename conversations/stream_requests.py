"""What a request for a conversation's or a thread's event stream does, whoever serves it: the
API (``conversations.api.events``, its callers' API keys) and the admin's live panels
(``conversations.admin.live``, staff sessions).

Each view checks who may see what, then: the cursor to resume from (``cursor_given``: the
``Last-Event-ID`` header EventSource sends when it reconnects, else ``?after=``), the stream's
source from it (``conversation_source``, ``thread_source``; a cursor this stream never sent is
``InvalidInput``), and ``stream_open``: one of the hub's slots for the caller's key, the
subscription, the replay read, and the hand-off to the hub (under a server without one, the
test client or another WSGI server, the answer is the replay alone and the client reconnects
after ``retry`` with the last id it saw, which still loses nothing).
"""

from __future__ import annotations

import logging
from uuid import UUID

from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from rest_framework.request import Request

from conversations.models import Thread
from conversations.streams import (
    ConversationCursor,
    ConversationStream,
    CursorInvalid,
    ThreadStream,
    conversation_cursor_check,
    conversation_now,
    thread_cursor_parse,
)
from core import delta_watch, stream_handoff, streams
from core.errors import InvalidInput, RateLimited

logger = logging.getLogger(__name__)

# How long a client waits before reconnecting after a stream ends (the SSE ``retry`` field).
RECONNECT_MS = 1000
# A client refused for too many streams may try again after this long.
STREAM_CAP_RETRY_AFTER_S = 5
LAST_EVENT_ID = "Last-Event-ID"
# A stream reads once more this long after it opens: a step event that a turn worker recorded
# without notifying, just before it heard of this stream (core.delta_watch), arrives then rather
# than with the thread's next event.
LATE_READ_S = 2.0


def cursor_given(request: HttpRequest | Request) -> tuple[str, str] | None:
    """The cursor to resume from and the name it came under: the header EventSource sends
    when it reconnects wins over ``?after=``."""
    header = request.headers.get(LAST_EVENT_ID)
    if header is not None and header.strip():
        return LAST_EVENT_ID, header
    after = request.GET.get("after")
    return ("after", after) if after is not None else None


def _refused(name: str, error: CursorInvalid) -> InvalidInput:
    return InvalidInput(f"{name} is not a cursor of this stream.", details={name: [str(error)]})


def conversation_source(
    conversation_id: UUID, given: tuple[str, str] | None, *, user_id: str
) -> ConversationStream:
    """A conversation's stream from ``given`` (``cursor_given``), or from now without one."""
    if given is None:
        now = conversation_now(conversation_id, user_id=user_id)
        return ConversationStream(conversation_id, now, user_id=user_id)
    name, text = given
    try:
        cursor = ConversationCursor.parse(text)
        conversation_cursor_check(conversation_id, cursor, user_id=user_id)
    except CursorInvalid as error:
        raise _refused(name, error) from None
    return ConversationStream(conversation_id, cursor, user_id=user_id)


def thread_source(thread: Thread, given: tuple[str, str] | None) -> ThreadStream:
    """A thread's stream from ``given`` (``cursor_given``); without one, from now, or for a
    thread that has ended from its final event (its stream still says how it ended)."""
    if given is None:
        after = thread.event_seq - 1 if thread.is_terminal else thread.event_seq
    else:
        name, text = given
        try:
            after = thread_cursor_parse(text)
            if after > thread.event_seq:
                raise CursorInvalid(
                    f"is ahead of this thread, whose last event is {thread.event_seq}"
                )
        except CursorInvalid as error:
            raise _refused(name, error) from None
    ended = thread.is_terminal and after >= thread.event_seq
    return ThreadStream(thread.id, after, user_id=thread.user_id, ended=ended)


def _followed() -> list[str]:
    """The tenants of this process's open streams (all of them follow token deltas)."""
    return [
        source.user_id
        for source in streams.hub().sources()
        if isinstance(source, ConversationStream | ThreadStream)
    ]


def _announce(user_id: str) -> None:
    """The turn workers publish this tenant's token deltas from now on (core.delta_watch), and
    hear of it again every ANNOUNCE_S while this process has streams of it open. A courtesy:
    failing, it fails no stream (the replay read right after says whether the database is up)."""
    delta_watch.announcer_start(_followed)
    try:
        delta_watch.announce([user_id])
    except DatabaseError as error:
        logger.warning("could not announce that %s is followed live: %s", user_id, error)


def stream_open(
    request: HttpRequest | Request, source: ConversationStream | ThreadStream, key: str
) -> HttpResponse:
    """Serve ``source`` on one of ``key``'s STREAMS_PER_KEY slots (``RateLimited`` when it has
    none left): subscribed, then the replay read, then handed to the hub when it is offered.

    A thread stream that has nothing left to send (its thread ended, its client saw the final
    event) is a 204: the answer that tells EventSource to stop reconnecting."""
    if source.done():
        return HttpResponse(status=204)
    if key.startswith("key:"):
        source.watch_key(key)
    hub = streams.hub()
    if not hub.admit(key):
        raise RateLimited(
            "This key has as many streams open on this web process as STREAMS_PER_KEY allows; "
            "close one, or retry after Retry-After.",
            retry_after=STREAM_CAP_RETRY_AFTER_S,
        )
    # Subscribed before the replay's read: whatever commits after it is notified to it. The
    # subscription holds the slot from now on (a subscription that fails gives it back itself).
    subscription = hub.subscribe(source, key)
    try:
        _announce(source.user_id)
        frames, more = source.read_done(source.read_plan()())
    except BaseException:
        subscription.cancel()
        raise
    first = b"".join([b": stream open\n\n", f"retry: {RECONNECT_MS}\n\n".encode(), *frames])
    offer = stream_handoff.handoff_offered(request)
    if offer is None or source.done():
        # No hub under this server, or nothing more will come: the replay alone, then the end.
        subscription.cancel()
    else:
        if more:
            subscription.read_soon()
        subscription.read_after(LATE_READ_S)
        offer(subscription)
    return stream_handoff.event_stream_response(first)

"""``GET .../events``: a conversation's or a thread's events as Server-Sent Events.

The view checks the tenant and the cursor, replays what the client missed, and hands the
connection to this process's stream hub (``core.streams``), which sends the rest as it happens
without a request thread or a database connection. Under a server without the hub (the test
client, another WSGI server) the answer is the replay alone, and the client reconnects after
``retry`` with the last id it saw, which still loses nothing.
"""

from __future__ import annotations

from uuid import UUID

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.views import APIView

from accounts.authentication import request_user_id
from conversations import selectors
from conversations.api.views import TAG, THREAD_TAG, _errors
from conversations.streams import (
    ConversationCursor,
    ConversationStream,
    CursorInvalid,
    ThreadStream,
    conversation_now,
    thread_cursor_parse,
)
from core import streams
from core.errors import InvalidInput, RateLimited

# How long a client waits before reconnecting after a stream ends (the SSE ``retry`` field).
RECONNECT_MS = 1000
# A client refused for too many streams may try again after this long.
STREAM_CAP_RETRY_AFTER_S = 5
LAST_EVENT_ID = "Last-Event-ID"


class _EventsView(APIView):
    renderer_classes = [JSONRenderer]

    def perform_content_negotiation(
        self, request: Request, force: bool = False
    ) -> tuple[BaseRenderer, str]:
        # The stream is a plain HttpResponse, whatever Accept says (EventSource asks for
        # text/event-stream); everything DRF renders (errors) is JSON.
        return JSONRenderer(), JSONRenderer.media_type


def _cursor_text(request: Request) -> tuple[str, str] | None:
    """The cursor to resume from and the name it came under: the header EventSource sends
    when it reconnects wins over ``?after=``."""
    header = request.headers.get(LAST_EVENT_ID)
    if header is not None and header.strip():
        return LAST_EVENT_ID, header
    after = request.query_params.get("after")
    return ("after", after) if after is not None else None


def _stream_key(request: Request) -> str:
    """Whose streams the per-key cap counts: the API key, else the signed-in user."""
    auth = request.auth
    key_id = getattr(auth, "pk", None)
    if key_id is not None:
        return f"key:{key_id}"
    return f"user:{getattr(request.user, 'pk', None)}"


def _open(request: Request, source: ConversationStream | ThreadStream) -> HttpResponse:
    key = _stream_key(request)
    hub = streams.hub()
    if not hub.admit(key):
        raise RateLimited(
            "This key has as many streams open on this web process as STREAMS_PER_KEY allows; "
            "close one, or retry after Retry-After.",
            retry_after=STREAM_CAP_RETRY_AFTER_S,
        )
    try:
        # Subscribed before the replay's read: whatever commits after it is notified to it.
        subscription = hub.subscribe(source, key)
    except BaseException:
        hub.release(key)
        raise
    try:
        frames, more = source.read_done(source.read_plan()())
    except BaseException:
        subscription.cancel()
        raise
    first = b"".join([b": stream open\n\n", f"retry: {RECONNECT_MS}\n\n".encode(), *frames])
    offer = streams.handoff_offered(request)
    if offer is None or source.done():
        # No hub under this server, or nothing more will come: the replay alone, then the end.
        subscription.cancel()
        response = streams.event_stream_response(first)
    else:
        if more:
            subscription.read_soon()
        offer(subscription)
        response = streams.event_stream_response(first)
    return response


_CURSOR_PARAMETERS = [
    OpenApiParameter(
        LAST_EVENT_ID,
        str,
        location=OpenApiParameter.HEADER,
        description="The id of the last event seen: replays every durable event after it, "
        "then goes live. Browsers' EventSource sends it when it reconnects.",
    ),
    OpenApiParameter(
        "after",
        str,
        description=f"The same cursor as a parameter ({LAST_EVENT_ID} wins). `0` replays "
        "everything; without either, the stream starts now.",
    ),
]
_STREAM_RESPONSE = OpenApiResponse(
    response=OpenApiTypes.STR,
    description="`text/event-stream`: `entry`, `thread` and `delta` events (see the "
    "streaming guide); a comment every STREAM_KEEPALIVE_SECONDS.",
)


class ConversationEventsView(_EventsView):
    """A conversation's entries and its threads' events and token deltas, live."""

    @extend_schema(
        tags=TAG,
        operation_id="conversation_events",
        summary="Stream a conversation's events (Server-Sent Events)",
        parameters=_CURSOR_PARAMETERS,
        responses={
            (200, "text/event-stream"): _STREAM_RESPONSE,
            **_errors(
                bad_request="The cursor is not one this stream sent (details name it).",
                not_found="Unknown conversation.",
            ),
            429: OpenApiResponse(description="Too many open streams for this key (Retry-After)."),
        },
    )
    def get(self, request: Request, conversation_id: UUID) -> HttpResponse:
        user_id = request_user_id(request)
        selectors.conversation_check(user_id=user_id, conversation_id=conversation_id)
        given = _cursor_text(request)
        if given is None:
            cursor = conversation_now(conversation_id)
        else:
            name, text = given
            try:
                cursor = ConversationCursor.parse(text)
            except CursorInvalid as error:
                raise InvalidInput(
                    f"{name} is not a cursor of this stream.", details={name: [str(error)]}
                ) from None
        return _open(request, ConversationStream(conversation_id, cursor))


class ThreadEventsView(_EventsView):
    """One thread's events and token deltas, live; the stream ends after its final event."""

    @extend_schema(
        tags=THREAD_TAG,
        operation_id="thread_events",
        summary="Stream a thread's events (Server-Sent Events)",
        parameters=_CURSOR_PARAMETERS,
        responses={
            (200, "text/event-stream"): _STREAM_RESPONSE,
            **_errors(
                bad_request="The cursor is not one this stream sent (details name it).",
                not_found="Unknown thread.",
            ),
            429: OpenApiResponse(description="Too many open streams for this key (Retry-After)."),
        },
    )
    def get(self, request: Request, thread_id: UUID) -> HttpResponse:
        thread = selectors.thread_get(user_id=request_user_id(request), thread_id=thread_id)
        given = _cursor_text(request)
        if given is None:
            # An ended thread's stream still says how it ended: its final event, then the end.
            after = thread.event_seq - 1 if thread.is_terminal else thread.event_seq
        else:
            name, text = given
            try:
                after = thread_cursor_parse(text)
            except CursorInvalid as error:
                raise InvalidInput(
                    f"{name} is not a cursor of this stream.", details={name: [str(error)]}
                ) from None
        ended = thread.is_terminal and after >= thread.event_seq
        return _open(request, ThreadStream(thread.id, after, ended=ended))

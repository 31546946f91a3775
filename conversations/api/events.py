"""``GET .../events``: a conversation's or a thread's events as Server-Sent Events.

The view checks the tenant; the cursor, the replay and the hand-off to this process's stream hub
(``core.streams``), which sends the rest as it happens without a request thread or a database
connection, are ``conversations.stream_requests``'s, shared with the admin's live panels. Under a
server without the hub (the test client, another WSGI server) the answer is the replay alone, and
the client reconnects after ``retry`` with the last id it saw, which still loses nothing.
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
from conversations.stream_requests import (
    LAST_EVENT_ID,
    conversation_source,
    cursor_given,
    stream_open,
    thread_source,
)


class _EventsView(APIView):
    renderer_classes = [JSONRenderer]

    def perform_content_negotiation(
        self, request: Request, force: bool = False
    ) -> tuple[BaseRenderer, str]:
        # The stream is a plain HttpResponse, whatever Accept says (EventSource asks for
        # text/event-stream); everything DRF renders (errors) is JSON.
        return JSONRenderer(), JSONRenderer.media_type


def _stream_key(request: Request) -> str:
    """Whose streams the per-key cap counts: the API key, else the signed-in user."""
    auth = request.auth
    key_id = getattr(auth, "pk", None)
    if key_id is not None:
        return f"key:{key_id}"
    return f"user:{getattr(request.user, 'pk', None)}"


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
        source = conversation_source(conversation_id, cursor_given(request), user_id=user_id)
        return stream_open(request, source, _stream_key(request))


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
        source = thread_source(thread, cursor_given(request))
        return stream_open(request, source, _stream_key(request))

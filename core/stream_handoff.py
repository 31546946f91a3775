"""The hand-off of a stream's connection from the web server to the hub (``core.streams``): the
web server offers it in the WSGI environ, the view takes it with its subscription and answers the
stream's first bytes as an ordinary 200 (``event_stream_response``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.http import HttpRequest, HttpResponse
from rest_framework.request import Request

if TYPE_CHECKING:
    from core.streams import Subscription

# Where the web server offers the hand-off in the WSGI environ (a ``Handoff``).
HANDOFF_ENVIRON_KEY = "ironclaw.stream_handoff"


class Handoff:
    """The web server's offer, in the WSGI environ, to take a response's connection over: the
    view calls it with its subscription, then returns the replay as a 200."""

    subscription: Subscription | None = None

    def __call__(self, subscription: Subscription) -> None:
        self.subscription = subscription


def handoff_offered(request: HttpRequest | Request) -> Handoff | None:
    """The hand-off the web server offers for ``request`` (Django's or DRF's); None under any
    other server."""
    offered = request.META.get(HANDOFF_ENVIRON_KEY)
    return offered if isinstance(offered, Handoff) else None


def event_stream_response(first: bytes) -> HttpResponse:
    """A stream's response: ``first`` (the replay) now, then whatever the hub sends."""
    response = HttpResponse(first, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    # nginx and its kind would otherwise hold the frames back to fill their buffers.
    response["X-Accel-Buffering"] = "no"
    return response

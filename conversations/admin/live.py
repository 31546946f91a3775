"""The live panels of the conversation and thread pages: an EventSource (``conversations/live.js``)
on a staff-session stream of the page's conversation or thread.

A browser's EventSource cannot send an API key, so the admin serves the streams itself at
``<object id>/events`` under the model's admin URLs, to staff allowed to view the model (any
tenant's rows, as every admin page), with the API's machinery (``conversations.stream_requests``):
the same sources and cursors, the hub's slots (counted per staff user, ``user:<pk>``), the
subscription and the hand-off. The page gives the panel the cursor of what it shows, read before
its rows, so whatever commits after is streamed to it: nothing falls between the page and the
panel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import Model
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.urls import URLPattern, path, reverse

from conversations.stream_requests import cursor_given, stream_open
from conversations.streams import ConversationStream, ThreadStream
from core.api.exceptions import error_body
from core.errors import ApplicationError


@dataclass(frozen=True)
class LivePanel:
    """What the page's panel needs: its stream, the cursor to start from, what it follows."""

    url: str
    after: str
    kind: str
    # The thread page's thread, shown until its first event comes.
    thread_id: str = ""
    thread_state: str = ""


def staff_stream_key(request: HttpRequest) -> str:
    """Whose slots a staff member's streams take: theirs, however many pages they open."""
    return f"user:{request.user.pk}"


class LivePanelAdmin(admin.ModelAdmin):
    """A change page with a live panel, and the stream it reads."""

    change_form_template = "admin/conversations/live_change_form.html"

    def live_source(
        self, obj: Any, given: tuple[str, str] | None
    ) -> ConversationStream | ThreadStream:
        """The stream of ``obj`` from the cursor given (``cursor_given``)."""
        raise NotImplementedError

    def live_panel(self, obj: Any, context: dict[str, Any]) -> LivePanel:
        """The panel of ``obj``'s page (the cursor of what the page shows)."""
        raise NotImplementedError

    def live_url(self, obj: Model) -> str:
        opts = self.opts
        return reverse(
            f"{self.admin_site.name}:{opts.app_label}_{opts.model_name}_events", args=[obj.pk]
        )

    def get_urls(self) -> list[URLPattern]:
        opts = self.opts
        events = path(
            "<path:object_id>/events",
            self.admin_site.admin_view(self.live_events_view),
            name=f"{opts.app_label}_{opts.model_name}_events",
        )
        # Before the admin's own: its last pattern takes any path under an object id.
        return [events, *super().get_urls()]

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Any = None,
    ) -> HttpResponse:
        if obj is not None and not add:
            context["live_panel"] = self.live_panel(obj, context)
        return super().render_change_form(request, context, add, change, form_url, obj)

    def live_events_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """``GET <object id>/events``: the object's events as Server-Sent Events, from
        ``Last-Event-ID`` or ``?after=`` (or from now). Staff only (``admin_view`` sends anyone
        else to the login page); a 403 without the model's view permission."""
        if request.method not in ("GET", "HEAD"):
            return HttpResponseNotAllowed(["GET", "HEAD"])
        if not self.has_view_permission(request):
            raise PermissionDenied
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            raise Http404(f"No {self.opts.verbose_name} with id {object_id!r}.")
        if not self.has_view_permission(request, obj):
            raise PermissionDenied
        try:
            source = self.live_source(obj, cursor_given(request))
            return stream_open(request, source, staff_stream_key(request))
        except ApplicationError as error:
            # A cursor the stream never sent (400), too many streams for this user (429).
            refused = JsonResponse(
                error_body(error.code, error.message, error.details), status=error.status_code
            )
            if error.retry_after is not None:
                refused["Retry-After"] = str(error.retry_after)
            return refused

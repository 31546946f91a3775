"""The operators' actions on threads (request cancel, stop, requeue), from the thread list and as
buttons on a thread's page.

Both go through the same services and say what each did, skips included; what was done is
written to the admin's log (the thread's History, the index's Recent actions), naming the
operator, who the services also name in the outcome they record. A button leads to a page that
asks first: a GET never acts, the page's form POSTs. Only staff with the thread's change
permission may act (the page itself stays read-only: the services write threads, not forms).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.contrib import messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone

from conversations.models import Thread, ThreadState
from conversations.services import (
    OperatorActionResult,
    thread_request_cancel,
    thread_requeue,
    thread_stop,
)
from core.admin import OperateAdmin
from core.admin_display import SHORT_ID_LENGTH
from core.errors import ApplicationError


@dataclass(frozen=True)
class OperatorAction:
    """One action: its service, its words, and the threads its button is shown for."""

    name: str
    label: str
    # The list's report of a thread it acted on: "<done> <short id>: <what the service did>".
    done: str
    service: Callable[..., OperatorActionResult]
    # What the confirmation page says it will do.
    explanation: str
    shown_for: Callable[[Thread], bool]


def _live(thread: Thread) -> bool:
    return not thread.is_terminal


def _cancellable(thread: Thread) -> bool:
    return not thread.is_terminal and not thread.cancel_requested


def _requeueable(thread: Thread) -> bool:
    # The web's clock here; the service asks the database's, and explains a skip.
    return (
        thread.state == ThreadState.RUNNING
        and not thread.cancel_requested
        and thread.lease_expires_at is not None
        and thread.lease_expires_at < timezone.now()
    )


OPERATOR_ACTIONS: dict[str, OperatorAction] = {
    action.name: action
    for action in (
        OperatorAction(
            name="stop",
            label="Stop",
            done="Stopped",
            service=thread_stop,
            explanation="The thread is stopped now: its lease is cleared, its conversation is "
            "told, and messages it never read move to a follow-up thread. Its engine, if alive, "
            "is refused at its next heartbeat.",
            shown_for=_live,
        ),
        OperatorAction(
            name="cancel",
            label="Request cancel",
            done="Cancel requested for",
            service=thread_request_cancel,
            explanation="A running thread's engine stops at its next heartbeat; a thread nobody "
            "runs is stopped at once.",
            shown_for=_cancellable,
        ),
        OperatorAction(
            name="requeue",
            label="Requeue",
            done="Requeued",
            service=thread_requeue,
            explanation="A running thread whose lease expired goes back to created, waiting for "
            "a worker, as the lease sweeper would at its next pass.",
            shown_for=_requeueable,
        ),
    )
}


class ThreadActionsAdmin(OperateAdmin):
    """The actions' buttons on the thread page and the pages behind them; acting takes the
    operate permission (a view-only staff user sees neither the actions nor the buttons)."""

    def get_urls(self) -> list[URLPattern]:
        opts = self.opts
        actions = [
            path(
                f"<path:object_id>/{name}/",
                self.admin_site.admin_view(self.operator_action_view),
                {"action_name": name},
                name=f"{opts.app_label}_{opts.model_name}_{name}",
            )
            for name in OPERATOR_ACTIONS
        ]
        # Before the admin's own: its last pattern takes any path under an object id.
        return [*actions, *super().get_urls()]

    def operator_action_url(self, obj: Thread, name: str) -> str:
        opts = self.opts
        return reverse(
            f"{self.admin_site.name}:{opts.app_label}_{opts.model_name}_{name}", args=[obj.pk]
        )

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Any = None,
    ) -> HttpResponse:
        if obj is not None and not add and self.has_operate_permission(request, obj):
            context["thread_actions"] = [
                (action.label, self.operator_action_url(obj, action.name))
                for action in OPERATOR_ACTIONS.values()
                if action.shown_for(obj)
            ]
        return super().render_change_form(request, context, add, change, form_url, obj)

    def operator_action_view(
        self, request: HttpRequest, object_id: str, action_name: str
    ) -> HttpResponse:
        """``GET <thread id>/<action>/`` asks; ``POST`` acts through the action's service, logs
        what it did and goes back to the thread's page with the service's message."""
        if request.method not in ("GET", "HEAD", "POST"):
            return HttpResponseNotAllowed(["GET", "HEAD", "POST"])
        if not self.has_operate_permission(request):
            raise PermissionDenied
        action = OPERATOR_ACTIONS[action_name]
        thread = self.get_object(request, unquote(object_id))
        if thread is None:
            raise Http404(f"No thread with id {object_id!r}.")
        if request.method == "POST":
            self.operator_action_run(request, thread, action)
            opts = self.opts
            return redirect(f"admin:{opts.app_label}_{opts.model_name}_change", thread.pk)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "object": thread,
            "action": action,
            "title": f"{action.label}: thread {thread.pk}?",
            "shown": action.shown_for(thread),
        }
        return TemplateResponse(
            request, "admin/conversations/thread/action_confirmation.html", context
        )

    def operator_action_run(
        self, request: HttpRequest, thread: Thread, action: OperatorAction
    ) -> None:
        """Run ``action`` on ``thread`` as this operator, say what it did, log it if it did."""
        name = str(thread.pk)[:SHORT_ID_LENGTH]
        try:
            result = action.service(
                user_id=thread.user_id, thread_id=thread.pk, operator=request.user.get_username()
            )
        except ApplicationError as error:
            self.message_user(request, f"{name}: {error.message}", messages.ERROR)
            return
        if not result.done:
            # A skip changed nothing: said, not logged.
            self.message_user(request, f"Skipped {name}: {result.message}", messages.WARNING)
            return
        thread.state = result.state or thread.state
        self.log_change(request, thread, f"{action.label}: {result.message}")
        self.message_user(request, f"{action.done} {name}: {result.message}", messages.SUCCESS)

    def operator_action_run_each(
        self, request: HttpRequest, queryset: QuerySet[Thread], action_name: str
    ) -> None:
        """The list's action: ``action_name`` on each selected thread, in id order."""
        action = OPERATOR_ACTIONS[action_name]
        # What the services need and the log's line names (kind, id, state).
        for thread in queryset.order_by("pk").only("pk", "user_id", "kind", "state"):
            self.operator_action_run(request, thread, action)

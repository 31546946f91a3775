"""Threads: the list operators watch (lease, age, outcome; expired leases and long waits as
filters), the thread page (its sections are in ``thread_page``) and the operators' actions
(``thread_actions``: list actions and the page's buttons, through the services)."""

from __future__ import annotations

import datetime
from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.db.models.functions import Now
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

from conversations.admin.common import SystemRowsAdmin, ThreadFlagsAdmin
from conversations.admin.filters import FinishedWithinFilter
from conversations.admin.live import LivePanel, LivePanelAdmin
from conversations.admin.thread_actions import ThreadActionsAdmin
from conversations.admin.thread_page import ThreadPageSections
from conversations.models import Thread, ThreadState
from conversations.stream_requests import thread_source
from conversations.streams import ThreadStream
from core.admin import TenantPrefixFilter
from core.admin_display import change_link, duration_text, short_id, truncated

WAITING_MINUTES = (5, 15, 60)


class ExpiredLeaseFilter(admin.SimpleListFilter):
    """Running threads whose lease ran out: their engine died (the sweeper requeues them)."""

    title = "lease"
    parameter_name = "lease"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("expired", "expired"), ("held", "held")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Thread]) -> QuerySet[Thread]:
        # Both served by thread_running_lease_idx; the database's clock, as for claims.
        if self.value() == "expired":
            return queryset.filter(state=ThreadState.RUNNING, lease_expires_at__lt=Now())
        if self.value() == "held":
            return queryset.filter(state=ThreadState.RUNNING, lease_expires_at__gte=Now())
        return queryset


class WaitingLongerThanFilter(admin.SimpleListFilter):
    """Live threads nobody is running (created, waiting, suspended), unchanged for N minutes."""

    title = "waiting longer than"
    parameter_name = "waiting_minutes"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(str(minutes), f"{minutes} minutes") for minutes in WAITING_MINUTES]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Thread]) -> QuerySet[Thread]:
        if self.value() not in {str(minutes) for minutes in WAITING_MINUTES}:
            return queryset
        # Served by thread_live_state_idx (live states only, by last change).
        return queryset.filter(
            state__in=[ThreadState.CREATED, ThreadState.WAITING, ThreadState.SUSPENDED],
            updated_at__lt=Now() - datetime.timedelta(minutes=int(str(self.value()))),
        )


@admin.register(Thread)
class ThreadAdmin(
    ThreadPageSections, ThreadFlagsAdmin, ThreadActionsAdmin, LivePanelAdmin, SystemRowsAdmin
):
    # The live panel's page, with the actions' buttons.
    change_form_template = "admin/conversations/thread/change_form.html"
    list_display = (
        "thread_id",
        "user_id",
        "kind",
        "state",
        "age",
        "lease_left",
        "claim_count",
        "outcome_summary",
        "conversation_link",
    )
    list_filter = (
        "state",
        ExpiredLeaseFilter,
        WaitingLongerThanFilter,
        FinishedWithinFilter,
        "kind",
        "tracked",
        "cancel_requested",
        TenantPrefixFilter,
    )
    search_fields = ("=id", "=lease_owner")
    search_help_text = "A whole thread id, or a worker id (tenants: the filter)."
    raw_id_fields = ("conversation",)
    ordering = ("-created_at",)
    show_full_result_count = False
    actions = ("request_cancel", "stop", "requeue")
    readonly_fields = (
        "id",
        "user_id",
        "conversation_link",
        "kind",
        "state",
        "tracking",
        "cancel_requested_text",
        "goal",
        "lease_owner",
        "lease_expires_at",
        "lease_left",
        "claim_count",
        "outcome_rendered",
        "run_now",
        "timings",
        "model_calls_table",
        "step_count",
        "input_tokens",
        "output_tokens",
        "tokens_used",
        "cost_usd",
        "model_time_ms",
        "thread_entries",
        "outcome",
        "metadata",
        "created_at",
        "updated_at",
    )
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "id",
                    "user_id",
                    "conversation_link",
                    "kind",
                    "state",
                    "tracking",
                    "cancel_requested_text",
                    "goal",
                )
            },
        ),
        ("Outcome", {"fields": ("outcome_rendered",)}),
        ("Lease", {"fields": ("lease_owner", "lease_expires_at", "lease_left", "claim_count")}),
        ("Timings", {"fields": ("run_now", "timings", "model_calls_table")}),
        (
            "Usage",
            {
                "fields": (
                    "step_count",
                    "input_tokens",
                    "output_tokens",
                    "tokens_used",
                    "cost_usd",
                    "model_time_ms",
                )
            },
        ),
        ("Entries", {"fields": ("thread_entries",)}),
        (
            "Raw",
            {
                "classes": ("collapse",),
                "fields": ("outcome", "metadata", "created_at", "updated_at"),
            },
        ),
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Thread]:
        threads = super().get_queryset(request)
        match = request.resolver_match
        if match is not None and match.url_name == "conversations_thread_changelist":
            # A list row shows none of these, and model calls alone can be 100 JSON objects.
            return threads.defer("goal", "model_calls", "metadata")
        return threads

    def live_source(self, obj: Thread, given: tuple[str, str] | None) -> ThreadStream:
        return thread_source(obj, given)

    def live_panel(self, obj: Thread, context: dict[str, Any]) -> LivePanel:
        # From the row the page shows; an ended thread's panel gets its final event.
        after = obj.event_seq - 1 if obj.is_terminal else obj.event_seq
        return LivePanel(
            url=self.live_url(obj),
            after=str(after),
            kind="thread",
            thread_id=str(obj.pk),
            thread_state=obj.state,
        )

    @admin.display(description="thread", ordering="pk")
    def thread_id(self, thread: Thread) -> SafeString:
        return short_id(thread.pk)

    @admin.display(description="conversation")
    def conversation_link(self, thread: Thread) -> SafeString:
        return change_link("admin:conversations_conversation_change", thread.conversation_id)

    @admin.display(description="age", ordering="created_at")
    def age(self, thread: Thread) -> str:
        return duration_text(timezone.now() - thread.created_at)

    @admin.display(description="lease left", ordering="lease_expires_at")
    def lease_left(self, thread: Thread) -> SafeString:
        if thread.lease_expires_at is None:
            return mark_safe("-")
        left = thread.lease_expires_at - timezone.now()
        if left.total_seconds() < 0:
            return format_html(
                '<span style="color: var(--error-fg, #ba2121)">expired {} ago</span>',
                duration_text(-left),
            )
        return format_html("{}", duration_text(left))

    @admin.display(description="outcome")
    def outcome_summary(self, thread: Thread) -> str:
        outcome = thread.outcome or {}
        kind = str(outcome.get("kind", ""))
        detail = ""
        if isinstance(outcome.get("gate"), dict):
            detail = str(outcome["gate"].get("name") or "")
        elif outcome.get("error"):
            detail = str(outcome["error"])
        elif outcome.get("reason"):
            detail = str(outcome["reason"])
        return truncated(f"{kind}: {detail}" if detail else kind, 60)

    @admin.action(
        description="Request cancel (the engine stops at its next heartbeat)",
        permissions=["operate"],
    )
    def request_cancel(self, request: HttpRequest, queryset: QuerySet[Thread]) -> None:
        self.operator_action_run_each(request, queryset, "cancel")

    @admin.action(
        description="Stop now (untrack, write the entry, free the lease)", permissions=["operate"]
    )
    def stop(self, request: HttpRequest, queryset: QuerySet[Thread]) -> None:
        self.operator_action_run_each(request, queryset, "stop")

    @admin.action(
        description="Requeue (an expired lease: back to created)", permissions=["operate"]
    )
    def requeue(self, request: HttpRequest, queryset: QuerySet[Thread]) -> None:
        self.operator_action_run_each(request, queryset, "requeue")

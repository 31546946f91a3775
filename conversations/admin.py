"""Operators' view of conversations and threads. Writes go through the services.

Lists stay fast on large tables: no full counts, no per-row queries (ids and links are built
from foreign key columns, not joined rows), inline lists capped with a link to the rest.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.db.models.functions import Now
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest
from django.utils import formats, timezone
from django.utils.dateparse import parse_datetime
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe
from procrastinate.contrib.django.models import ProcrastinateJob

from conversations.models import (
    ChannelUserIndex,
    Conversation,
    ConversationEntry,
    Thread,
    ThreadState,
)
from conversations.services import (
    OperatorActionResult,
    conversation_busy_policy_set,
    conversation_clear,
    thread_request_cancel,
    thread_requeue,
    thread_run_queueing_lock,
    thread_stop,
)
from core.admin import (
    BoundedCountPaginator,
    ReadOnlyAdmin,
    ReadOnlyInline,
    TenantPrefixFilter,
)
from core.admin_display import (
    SHORT_ID_LENGTH,
    change_link,
    changelist_url,
    duration_text,
    short_id,
    truncated,
)
from core.errors import ApplicationError

# A conversation page shows this many of its latest entries and threads; a link lists the rest.
ADMIN_INLINE_ENTRIES = 20
ADMIN_INLINE_THREADS = 20
# A thread page shows this many of its latest entries and run jobs.
THREAD_PAGE_ENTRIES = 20
THREAD_PAGE_JOBS = 10
WAITING_MINUTES = (5, 15, 60)


class _NoDeleteAdmin(admin.ModelAdmin):
    # Deleting rows would break invariants (gap-free seqs, tracked threads need their
    # conversation, entries protect their threads): operators clear conversations instead.
    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class _SystemRowsAdmin(_NoDeleteAdmin, ReadOnlyAdmin):
    """Rows only the services write: shown, never added, changed or deleted by hand."""


def _when(moment: datetime.datetime | None) -> str:
    return formats.localize(timezone.localtime(moment)) if moment else "-"


class _LatestRowsFormSet(BaseInlineFormSet):
    """Only the latest rows, oldest first: a long conversation's page used to render (and load)
    every entry and thread it ever had."""

    latest_first: str
    shown_order: str
    limit: int

    def get_queryset(self) -> QuerySet[Any]:
        if not hasattr(self, "_latest"):
            latest = super().get_queryset().order_by(self.latest_first).values("pk")[: self.limit]
            self._latest = self.model.objects.filter(pk__in=latest).order_by(self.shown_order)
        return self._latest


class _LatestEntriesFormSet(_LatestRowsFormSet):
    latest_first, shown_order, limit = "-seq", "seq", ADMIN_INLINE_ENTRIES


class _LatestThreadsFormSet(_LatestRowsFormSet):
    latest_first, shown_order, limit = "-created_at", "-created_at", ADMIN_INLINE_THREADS


class EntryInline(ReadOnlyInline):
    model = ConversationEntry
    formset = _LatestEntriesFormSet
    verbose_name_plural = f"latest {ADMIN_INLINE_ENTRIES} conversation entries"
    fields = ("seq", "sender", "content", "thread_link", "created_at", "delivered_at")
    readonly_fields = fields
    ordering = ("seq",)

    @admin.display(description="thread")
    def thread_link(self, entry: ConversationEntry) -> SafeString:
        # From the foreign key column: rendering the joined thread cost one query per entry.
        return change_link("admin:conversations_thread_change", entry.thread_id)


class ThreadInline(ReadOnlyInline):
    model = Thread
    fk_name = "conversation"
    formset = _LatestThreadsFormSet
    verbose_name_plural = f"latest {ADMIN_INLINE_THREADS} threads"
    fields = ("thread_link", "kind", "state", "tracked", "lease_owner", "lease_expires_at")
    readonly_fields = fields
    ordering = ("-created_at",)
    show_change_link = False

    @admin.display(description="thread")
    def thread_link(self, thread: Thread) -> SafeString:
        return change_link("admin:conversations_thread_change", thread.pk)


@admin.register(Conversation)
class ConversationAdmin(_NoDeleteAdmin):
    list_display = (
        "conversation_id",
        "user_id",
        "channel",
        "busy_policy",
        "last_seq",
        "created_at",
        "updated_at",
    )
    list_filter = ("busy_policy", TenantPrefixFilter)
    search_fields = ("=id", "channel")
    search_help_text = "A whole conversation id, or part of a channel (tenants: the filter)."
    readonly_fields = (
        "id",
        "user_id",
        "channel",
        "last_seq",
        "metadata",
        "created_at",
        "updated_at",
        "threads_link",
        "entries_link",
    )
    fields = (
        "id",
        "user_id",
        "channel",
        "busy_policy",
        "last_seq",
        "threads_link",
        "entries_link",
        "metadata",
        "created_at",
        "updated_at",
    )
    ordering = ("-created_at",)
    show_full_result_count = False
    paginator = BoundedCountPaginator
    inlines = (ThreadInline, EntryInline)
    actions = ("clear_conversations",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Conversations start with a message (or conversations/new) so the index stays right.
        return False

    @admin.display(description="conversation", ordering="pk")
    def conversation_id(self, conversation: Conversation) -> SafeString:
        return short_id(conversation.pk)

    @admin.display(description="threads")
    def threads_link(self, conversation: Conversation) -> SafeString:
        count = Thread.objects.filter(conversation=conversation).count()
        url = changelist_url("admin:conversations_thread_changelist", conversation=conversation.pk)
        return format_html('<a href="{}">all {} threads →</a>', url, count)

    @admin.display(description="entries")
    def entries_link(self, conversation: Conversation) -> SafeString:
        count = ConversationEntry.objects.filter(conversation=conversation).count()
        url = changelist_url(
            "admin:conversations_conversationentry_changelist", conversation=conversation.pk
        )
        return format_html('<a href="{}">all {} entries →</a>', url, count)

    def save_model(self, request: HttpRequest, obj: Conversation, form: Any, change: bool) -> None:
        conversation_busy_policy_set(
            user_id=obj.user_id, conversation_id=obj.id, busy_policy=obj.busy_policy or None
        )

    @admin.action(description="Clear conversation (delete entries, cancel threads)")
    def clear_conversations(self, request: HttpRequest, queryset: QuerySet[Conversation]) -> None:
        cleared = entries = cancelled = 0
        for conversation in queryset.order_by("pk"):
            try:
                result = conversation_clear(
                    user_id=conversation.user_id, conversation_id=conversation.id
                )
            except ApplicationError as error:
                self.message_user(request, f"{conversation.id}: {error.message}", messages.ERROR)
                continue
            cleared += 1
            entries += result.deleted_entries
            cancelled += len(result.untracked_thread_ids)
        self.message_user(
            request,
            f"Cleared {cleared} conversations: {entries} entries deleted, "
            f"{cancelled} threads cancelled.",
            messages.SUCCESS,
        )


@admin.register(ChannelUserIndex)
class ChannelUserIndexAdmin(_SystemRowsAdmin):
    list_display = ("channel", "user_id", "conversation_link", "updated_at")
    list_filter = (TenantPrefixFilter,)
    search_fields = ("channel",)
    search_help_text = "Part of a channel (tenants: the filter)."
    raw_id_fields = ("conversation",)
    readonly_fields = ("user_id", "channel", "conversation", "updated_at")
    show_full_result_count = False

    @admin.display(description="conversation")
    def conversation_link(self, row: ChannelUserIndex) -> SafeString:
        return change_link("admin:conversations_conversation_change", row.conversation_id)


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
class ThreadAdmin(_SystemRowsAdmin):
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
        "tracked",
        "cancel_requested",
        "goal",
        "lease_owner",
        "lease_expires_at",
        "lease_left",
        "claim_count",
        "outcome_rendered",
        "timings",
        "model_calls_table",
        "step_count",
        "input_tokens",
        "output_tokens",
        "tokens_used",
        "cost_usd",
        "model_time_ms",
        "thread_entries",
        "run_jobs",
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
                    "tracked",
                    "cancel_requested",
                    "goal",
                )
            },
        ),
        ("Outcome", {"fields": ("outcome_rendered",)}),
        ("Lease", {"fields": ("lease_owner", "lease_expires_at", "lease_left", "claim_count")}),
        ("Timings", {"fields": ("timings", "model_calls_table")}),
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
        ("Run jobs", {"fields": ("run_jobs",)}),
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

    @admin.display(description="outcome")
    def outcome_rendered(self, thread: Thread) -> SafeString:
        outcome = thread.outcome or {}
        if not outcome:
            return mark_safe("none yet")
        rows: list[tuple[str, str]] = [("kind", str(outcome.get("kind", "")))]
        if outcome.get("reported_kind"):
            rows.append(("reported by the engine", str(outcome["reported_kind"])))
        gate = outcome.get("gate")
        if isinstance(gate, dict):
            rows.append(("gate", str(gate.get("name") or "")))
            rows.append(("gated action", str(gate.get("action") or "")))
        for key in ("error", "reason", "worker_id"):
            if outcome.get(key):
                rows.append((key.replace("_", " "), str(outcome[key])))
        recorded = parse_datetime(str(outcome.get("recorded_at") or ""))
        if recorded is not None:
            rows.append(("recorded", _when(recorded)))
        response = outcome.get("response")
        return format_html(
            '<dl class="outcome">{}</dl>{}',
            format_html_join("", "<dt>{}</dt><dd>{}</dd>", rows),
            format_html('<div class="response" style="white-space: pre-wrap">{}</div>', response)
            if response
            else "",
        )

    @admin.display(description="phases")
    def timings(self, thread: Thread) -> SafeString:
        phases = [
            ("created", thread.created_at),
            ("enqueued", thread.enqueued_at),
            ("claimed (latest)", thread.claimed_at),
            ("started (first claim)", thread.started_at),
            ("finished", thread.finished_at),
        ]
        start = thread.enqueued_at or thread.created_at
        rows = [
            (name, _when(moment), duration_text(moment - start) if moment else "-")
            for name, moment in phases
        ]
        model = datetime.timedelta(milliseconds=thread.model_time_ms)
        total = (thread.finished_at - start) if thread.finished_at else None
        overhead = max(total - model, datetime.timedelta(0)) if total is not None else None
        return format_html(
            '<table class="timings"><tr><th>phase</th><th>at</th><th>since enqueued</th></tr>{}'
            "</table><p>model time {}, overhead (total minus model time) {}, queue wait {}</p>",
            format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td></tr>", rows),
            duration_text(model),
            duration_text(overhead),
            duration_text(thread.claimed_at - start)
            if thread.claimed_at and thread.claimed_at >= start
            else "-",
        )

    @admin.display(description="model calls")
    def model_calls_table(self, thread: Thread) -> SafeString:
        calls = thread.model_calls or []
        if not calls:
            return mark_safe("none")
        rows = []
        previous_end: datetime.datetime | None = None
        for call in calls:
            started = parse_datetime(str(call.get("started_at") or ""))
            ended = parse_datetime(str(call.get("ended_at") or ""))
            took = ended - started if started and ended else None
            gap = started - previous_end if started and previous_end else None
            rows.append(
                (call.get("step", ""), _when(started), duration_text(took), duration_text(gap))
            )
            previous_end = ended
        return format_html(
            '<table class="model-calls"><tr><th>step</th><th>started</th><th>took</th>'
            "<th>gap before</th></tr>{}</table>",
            format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", rows),
        )

    @admin.display(description=f"latest {THREAD_PAGE_ENTRIES} entries")
    def thread_entries(self, thread: Thread) -> SafeString:
        entries = list(
            ConversationEntry.objects.filter(thread=thread)
            .order_by("-seq")
            .only("pk", "seq", "sender", "content", "created_at")[:THREAD_PAGE_ENTRIES]
        )
        url = changelist_url("admin:conversations_conversationentry_changelist", thread=thread.pk)
        if not entries:
            return mark_safe("none")
        rows = [
            (entry.seq, entry.sender, truncated(entry.content, 200), _when(entry.created_at))
            for entry in reversed(entries)
        ]
        return format_html(
            '<table class="thread-entries"><tr><th>seq</th><th>sender</th><th>content</th>'
            '<th>at</th></tr>{}</table><p><a href="{}">all entries of this thread →</a></p>',
            format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", rows),
            url,
        )

    @admin.display(description="jobs")
    def run_jobs(self, thread: Thread) -> SafeString:
        lock = thread_run_queueing_lock(thread.pk)
        jobs = list(
            ProcrastinateJob.objects.filter(queueing_lock=lock)
            .order_by("-id")
            .values_list("id", "status", "attempts")[:THREAD_PAGE_JOBS]
        )
        url = changelist_url("admin:procrastinate_procrastinatejob_changelist", queueing_lock=lock)
        rows = [
            (
                change_link("admin:procrastinate_procrastinatejob_change", job_id, f"#{job_id}"),
                status,
                attempts,
            )
            for job_id, status, attempts in jobs
        ]
        return format_html(
            '<table class="run-jobs"><tr><th>job</th><th>status</th><th>attempts</th></tr>{}'
            '</table><p><a href="{}">all run jobs of this thread →</a></p>',
            format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td></tr>", rows),
            url,
        )

    def _act(
        self,
        request: HttpRequest,
        queryset: QuerySet[Thread],
        service: Callable[..., OperatorActionResult],
        verb: str,
    ) -> None:
        """Run ``service`` on each selected thread and say what it did to each, skips included."""
        for thread_id, user_id in queryset.order_by("pk").values_list("pk", "user_id"):
            name = str(thread_id)[:SHORT_ID_LENGTH]
            try:
                result = service(user_id=user_id, thread_id=thread_id)
            except ApplicationError as error:
                self.message_user(request, f"{name}: {error.message}", messages.ERROR)
                continue
            if result.done:
                self.message_user(request, f"{verb} {name}: {result.message}", messages.SUCCESS)
            else:
                self.message_user(request, f"Skipped {name}: {result.message}", messages.WARNING)

    @admin.action(description="Request cancel (the engine stops at its next heartbeat)")
    def request_cancel(self, request: HttpRequest, queryset: QuerySet[Thread]) -> None:
        self._act(request, queryset, thread_request_cancel, "Cancel requested for")

    @admin.action(description="Stop now (untrack, write the entry, free the lease)")
    def stop(self, request: HttpRequest, queryset: QuerySet[Thread]) -> None:
        self._act(request, queryset, thread_stop, "Stopped")

    @admin.action(description="Requeue (created or expired lease: defer a run job)")
    def requeue(self, request: HttpRequest, queryset: QuerySet[Thread]) -> None:
        self._act(request, queryset, thread_requeue, "Requeued")


@admin.register(ConversationEntry)
class ConversationEntryAdmin(_SystemRowsAdmin):
    list_display = (
        "entry_id",
        "conversation_link",
        "seq",
        "sender",
        "short_content",
        "thread_link",
        "created_at",
        "delivered_at",
    )
    list_filter = ("sender", TenantPrefixFilter)
    search_fields = ("=conversation__id",)
    search_help_text = "A whole conversation id (tenants: the filter)."
    raw_id_fields = ("conversation", "thread")
    readonly_fields = [field.name for field in ConversationEntry._meta.fields]
    ordering = ("conversation", "seq")
    show_full_result_count = False

    @admin.display(description="entry", ordering="pk")
    def entry_id(self, entry: ConversationEntry) -> SafeString:
        return short_id(entry.pk)

    @admin.display(description="conversation", ordering="conversation")
    def conversation_link(self, entry: ConversationEntry) -> SafeString:
        return change_link("admin:conversations_conversation_change", entry.conversation_id)

    @admin.display(description="thread")
    def thread_link(self, entry: ConversationEntry) -> SafeString:
        return change_link("admin:conversations_thread_change", entry.thread_id)

    @admin.display(description="content")
    def short_content(self, entry: ConversationEntry) -> str:
        return truncated(entry.content, 80)

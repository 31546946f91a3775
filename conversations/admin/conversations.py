"""Conversations (with their latest threads and entries inline) and the (channel, user) index."""

from __future__ import annotations

import contextlib
import datetime
import uuid
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.contrib.admin.views.main import ChangeList
from django.db.models import OuterRef, Q, QuerySet, Subquery
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest, HttpResponse
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

from conversations.admin.common import NoDeleteAdmin, SystemRowsAdmin, ThreadFlagsAdmin
from conversations.admin.live import LivePanel, LivePanelAdmin
from conversations.models import ChannelUserIndex, Conversation, ConversationEntry, Thread
from conversations.services import conversation_busy_policy_set, conversation_clear
from conversations.stream_requests import conversation_source
from conversations.streams import ConversationStream, conversation_now
from core.admin import (
    BoundedCountPaginator,
    OperateAdmin,
    ReadOnlyInline,
    TenantPrefixFilter,
    tenant_prefix_q,
)
from core.admin_display import change_link, changelist_url, short_id
from core.errors import ApplicationError

# A conversation page shows this many of its latest entries and threads; a link lists the rest.
ADMIN_INLINE_ENTRIES = 20
ADMIN_INLINE_THREADS = 20


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


class _CompactInline(ReadOnlyInline):
    # One line per row: Django's tabular inline captions every row with its __str__ (and a View
    # link) on a line of its own; here the first column links to the row instead.
    template = "admin/conversations/compact_tabular.html"
    show_change_link = False


class EntryInline(_CompactInline):
    model = ConversationEntry
    formset = _LatestEntriesFormSet
    verbose_name_plural = f"latest {ADMIN_INLINE_ENTRIES} conversation entries"
    fields = ("entry_link", "sender", "content", "thread_link", "created_at", "delivered_at")
    readonly_fields = fields
    ordering = ("seq",)

    @admin.display(description="seq")
    def entry_link(self, entry: ConversationEntry) -> SafeString:
        return change_link("admin:conversations_conversationentry_change", entry.pk, entry.seq)

    @admin.display(description="thread")
    def thread_link(self, entry: ConversationEntry) -> SafeString:
        # From the foreign key column: rendering the joined thread cost one query per entry.
        return change_link("admin:conversations_thread_change", entry.thread_id)


class ThreadInline(ThreadFlagsAdmin, _CompactInline):
    model = Thread
    fk_name = "conversation"
    formset = _LatestThreadsFormSet
    verbose_name_plural = f"latest {ADMIN_INLINE_THREADS} threads"
    fields = ("thread_link", "kind", "state", "tracking", "lease_owner", "lease_expires_at")
    readonly_fields = fields
    ordering = ("-created_at",)

    @admin.display(description="thread")
    def thread_link(self, thread: Thread) -> SafeString:
        return change_link("admin:conversations_thread_change", thread.pk)


class ConversationChangeList(ChangeList):
    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> QuerySet[Any]:
        # The live thread of each listed conversation, through the unique index on its tracked
        # foreground thread; PostgreSQL evaluates these after the page's sort and LIMIT, so only
        # for the rows shown.
        live = Thread.objects.tracked_foreground().filter(conversation=OuterRef("pk"))
        return (
            super()
            .get_queryset(request, exclude_parameters)
            .annotate(
                live_thread_id=Subquery(live.values("pk")[:1]),
                live_thread_state=Subquery(live.values("state")[:1]),
            )
        )


@admin.register(Conversation)
class ConversationAdmin(LivePanelAdmin, OperateAdmin, NoDeleteAdmin):
    list_display = (
        "conversation_id",
        "user_id",
        "channel",
        "busy_policy",
        "entry_count",
        "last_activity",
        "live_thread",
        "created_at",
    )
    list_filter = ("busy_policy", TenantPrefixFilter)
    # Declared for the search box; get_search_results does the matching, on indexes only.
    search_fields = ("=id", "user_id")
    search_help_text = "A whole conversation id, or a tenant's user id or its beginning."
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

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return ConversationChangeList

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Conversation], search_term: str
    ) -> tuple[QuerySet[Conversation], bool]:
        # A tenant by its user id's beginning (a range on the tenant index), or a conversation by
        # its id (the primary key): no part-of-a-field match, which would read the whole table.
        term = search_term.replace("\x00", "").strip()
        if not term:
            return queryset, False
        matches = tenant_prefix_q(term)
        with contextlib.suppress(ValueError):  # not a conversation id
            matches |= Q(pk=uuid.UUID(term))
        return queryset.filter(matches), False

    @admin.display(description="entries", ordering="last_seq")
    def entry_count(self, conversation: Conversation) -> int:
        # The seq allocator: entries are numbered 1, 2, ... without gaps, so it counts them (and
        # still counts those a clear deleted) without a count(*).
        return conversation.last_seq

    @admin.display(description="last activity", ordering="updated_at")
    def last_activity(self, conversation: Conversation) -> datetime.datetime:
        # Written with every entry (in the statement that takes its seq), a clear or a policy
        # change.
        return conversation.updated_at

    @admin.display(description="live thread")
    def live_thread(self, conversation: Conversation) -> SafeString:
        thread_id = getattr(conversation, "live_thread_id", None)
        if thread_id is None:
            return mark_safe("-")
        link = change_link("admin:conversations_thread_change", thread_id)
        return format_html("{} {}", link, getattr(conversation, "live_thread_state", ""))

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Conversations start with a message (or conversations/new) so the index stays right.
        return False

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        context = dict(extra_context or {})
        try:
            conversation_id = uuid.UUID(unquote(object_id))
        except ValueError:
            pass  # not a conversation: the admin says so
        else:
            # The live panel's cursor, read before the page's entries: one committed in between
            # shows in both, never in neither.
            context["live_after"] = str(conversation_now(conversation_id, user_id=None))
        return super().change_view(request, object_id, form_url, context)

    def live_source(self, obj: Conversation, given: tuple[str, str] | None) -> ConversationStream:
        return conversation_source(obj.pk, given, user_id=obj.user_id)

    def live_panel(self, obj: Conversation, context: dict[str, Any]) -> LivePanel:
        after = context.get("live_after") or str(conversation_now(obj.pk, user_id=obj.user_id))
        return LivePanel(url=self.live_url(obj), after=after, kind="conversation")

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

    @admin.action(
        description="Clear conversation (delete entries, cancel threads)", permissions=["operate"]
    )
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
            self.log_change(
                request,
                conversation,
                f"Clear: {result.deleted_entries} entries deleted, "
                f"{len(result.untracked_thread_ids)} threads cancelled",
            )
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
class ChannelUserIndexAdmin(SystemRowsAdmin):
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

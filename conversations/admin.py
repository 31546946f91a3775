"""Operators' view of conversations and threads. Writes go through the services."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest

from conversations.models import ChannelUserIndex, Conversation, ConversationEntry, Thread
from conversations.services import conversation_busy_policy_set, conversation_clear
from ironclaw_site.admin import ReadOnlyAdmin, ReadOnlyInline
from ironclaw_site.errors import ApplicationError


class _NoDeleteAdmin(admin.ModelAdmin):
    # Deleting rows would break invariants (gap-free seqs, tracked threads need their
    # conversation, entries protect their threads): operators clear conversations instead.
    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class _SystemRowsAdmin(_NoDeleteAdmin, ReadOnlyAdmin):
    """Rows only the services write: shown, never added, changed or deleted by hand."""


# A conversation page shows this many of its latest entries; the entries list has the rest.
ADMIN_INLINE_ENTRIES = 100


class _LatestEntriesFormSet(BaseInlineFormSet):
    """Only the latest entries, in seq order: a long conversation's page used to render (and
    load) every entry it ever had."""

    def get_queryset(self) -> QuerySet[ConversationEntry]:
        if not hasattr(self, "_latest"):
            latest = super().get_queryset().order_by("-seq").values("pk")[:ADMIN_INLINE_ENTRIES]
            self._latest = ConversationEntry.objects.filter(pk__in=latest).order_by("seq")
        return self._latest


class EntryInline(ReadOnlyInline):
    model = ConversationEntry
    formset = _LatestEntriesFormSet
    verbose_name_plural = f"latest {ADMIN_INLINE_ENTRIES} conversation entries"
    fields = ("seq", "sender", "content", "thread", "created_at", "delivered_at")
    readonly_fields = fields
    ordering = ("seq",)


class ThreadInline(ReadOnlyInline):
    model = Thread
    fk_name = "conversation"
    fields = ("id", "kind", "state", "tracked", "lease_owner", "lease_expires_at", "created_at")
    readonly_fields = fields
    ordering = ("-created_at",)


@admin.register(Conversation)
class ConversationAdmin(_NoDeleteAdmin):
    list_display = (
        "id",
        "user_id",
        "channel",
        "busy_policy",
        "last_seq",
        "created_at",
        "updated_at",
    )
    list_filter = ("busy_policy",)
    search_fields = ("=id", "=user_id", "channel")
    readonly_fields = (
        "id",
        "user_id",
        "channel",
        "last_seq",
        "metadata",
        "created_at",
        "updated_at",
    )
    fields = (
        "id",
        "user_id",
        "channel",
        "busy_policy",
        "last_seq",
        "metadata",
        "created_at",
        "updated_at",
    )
    ordering = ("-created_at",)
    show_full_result_count = False
    inlines = (ThreadInline, EntryInline)
    actions = ("clear_conversations",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Conversations start with a message (or conversations/new) so the index stays right.
        return False

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
    list_display = ("channel", "user_id", "conversation", "updated_at")
    list_select_related = ("conversation",)
    search_fields = ("=user_id", "channel")
    raw_id_fields = ("conversation",)
    readonly_fields = ("user_id", "channel", "conversation", "updated_at")
    show_full_result_count = False


@admin.register(Thread)
class ThreadAdmin(_SystemRowsAdmin):
    list_display = (
        "id",
        "user_id",
        "kind",
        "state",
        "tracked",
        "lease_owner",
        "lease_expires_at",
        "outcome_kind",
        "conversation",
        "created_at",
    )
    list_filter = ("state", "kind", "tracked", "cancel_requested")
    list_select_related = ("conversation",)
    search_fields = ("=id", "=user_id", "=lease_owner")
    raw_id_fields = ("conversation",)
    readonly_fields = [field.name for field in Thread._meta.fields]
    ordering = ("-created_at",)
    show_full_result_count = False

    @admin.display(description="outcome")
    def outcome_kind(self, thread: Thread) -> str:
        return str((thread.outcome or {}).get("kind", ""))


@admin.register(ConversationEntry)
class ConversationEntryAdmin(_SystemRowsAdmin):
    list_display = ("conversation", "seq", "sender", "short_content", "thread", "delivered_at")
    list_filter = ("sender",)
    list_select_related = ("conversation", "thread")
    search_fields = ("=conversation__id", "=user_id")
    raw_id_fields = ("conversation", "thread")
    readonly_fields = [field.name for field in ConversationEntry._meta.fields]
    ordering = ("conversation", "seq")
    show_full_result_count = False

    @admin.display(description="content")
    def short_content(self, entry: ConversationEntry) -> str:
        return entry.content[:80]

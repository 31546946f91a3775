"""Conversation entries: every message and system note, in seq order per conversation."""

from __future__ import annotations

from django.contrib import admin
from django.utils.safestring import SafeString

from conversations.admin.common import SystemRowsAdmin
from conversations.models import ConversationEntry
from core.admin import TenantPrefixFilter
from core.admin_display import change_link, short_id, truncated


@admin.register(ConversationEntry)
class ConversationEntryAdmin(SystemRowsAdmin):
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

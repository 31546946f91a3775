"""Operators' view of routines and their firings, each with the thread it started.

Read-only, as the API's writes go through the services: enabling and disabling are actions that
call ``routine_update`` (so the next slot is computed as for the tenant). Firings grow with every
slot of every routine, so their list never counts the whole table and joins nothing per row.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.safestring import SafeString

from core.admin import OperateAdmin, ReadOnlyAdmin, TenantPrefixFilter
from core.admin_display import change_link, changelist_url
from core.errors import ApplicationError
from routines import services
from routines.models import Routine, RoutineFiring

THREAD_CHANGE = "admin:conversations_thread_change"


@admin.register(Routine)
class RoutineAdmin(OperateAdmin, ReadOnlyAdmin):
    list_display = (
        "name",
        "user_id",
        "cron",
        "timezone",
        "target_display",
        "enabled",
        "next_fire_at",
        "last_fire_at",
    )
    list_filter = ("enabled", TenantPrefixFilter)
    search_fields = ("name",)
    search_help_text = "Part of a routine's name (tenants: the filter)."
    show_full_result_count = False
    list_per_page = 50
    ordering = ("user_id", "name")
    readonly_fields = (
        "id",
        "user_id",
        "name",
        "cron",
        "timezone",
        "target_display",
        "channel",
        "scope",
        "message",
        "enabled",
        "next_fire_at",
        "last_fire_at",
        "firings_link",
        "created_at",
        "updated_at",
    )
    fields = readonly_fields
    actions = ("enable", "disable")

    @admin.display(description="target")
    def target_display(self, routine: Routine) -> str:
        if not routine.channel:
            return "goal (a new thread each firing)"
        return f"channel {routine.channel}" + (f":{routine.scope}" if routine.scope else "")

    @admin.display(description="firings")
    def firings_link(self, routine: Routine) -> SafeString:
        url = changelist_url(
            "admin:routines_routinefiring_changelist", routine__id__exact=routine.pk
        )
        return format_html('<a href="{}">firings, newest first</a>', url)

    @admin.action(description="Enable the selected routines", permissions=["operate"])
    def enable(self, request: HttpRequest, queryset: QuerySet[Routine]) -> None:
        self._enabled_set(request, queryset, enabled=True)

    @admin.action(description="Disable the selected routines", permissions=["operate"])
    def disable(self, request: HttpRequest, queryset: QuerySet[Routine]) -> None:
        self._enabled_set(request, queryset, enabled=False)

    def _enabled_set(
        self, request: HttpRequest, queryset: QuerySet[Routine], *, enabled: bool
    ) -> None:
        done, refused = 0, []
        for user_id, routine_id in queryset.order_by("pk").values_list("user_id", "pk"):
            try:
                services.routine_update(user_id=user_id, routine_id=routine_id, enabled=enabled)
                done += 1
            except ApplicationError as error:
                refused.append(f"{routine_id}: {error.message}")
        verb = "enabled" if enabled else "disabled"
        self.message_user(request, f"{done} routine(s) {verb}.", messages.SUCCESS)
        if refused:
            self.message_user(request, "Not changed: " + "; ".join(refused), messages.WARNING)


@admin.register(RoutineFiring)
class RoutineFiringAdmin(ReadOnlyAdmin):
    list_display = ("slot", "routine_link", "user_id", "state", "action", "thread_link", "fired_at")
    list_filter = ("state", TenantPrefixFilter)
    list_select_related = ("routine",)
    show_full_result_count = False
    list_per_page = 50
    # Newest first through routine_firing_recent_idx, not a sort of every firing.
    ordering = ("-fired_at", "-id")
    raw_id_fields = ("routine",)
    readonly_fields = (
        "id",
        "user_id",
        "routine_link",
        "slot",
        "state",
        "fired_at",
        "action",
        "conversation_id",
        "thread_link",
        "detail",
    )
    fields = readonly_fields

    @admin.display(description="routine", ordering="routine__name")
    def routine_link(self, firing: RoutineFiring) -> SafeString:
        return change_link("admin:routines_routine_change", firing.routine_id, firing.routine.name)

    @admin.display(description="thread")
    def thread_link(self, firing: RoutineFiring) -> SafeString:
        # No database key to the thread (it may be deleted while the firing stays): a link by id.
        return change_link(THREAD_CHANGE, firing.thread_id)

"""Admin bases shared by every app: rows the system writes are shown, never edited or deleted by
hand. Procrastinate's job admin, fit for one job per thread run."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from procrastinate.contrib.django.admin import ProcrastinateJobAdmin
from procrastinate.contrib.django.models import ProcrastinateJob


class ReadOnlyAdmin(admin.ModelAdmin):
    """A changelist and detail page with no add, change or delete; writes go through services."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # A delete here would bypass the services (versions, indexing, runtime rules).
        return False


class ReadOnlyInline(admin.TabularInline):
    """Related rows listed under their parent, linking to their own page."""

    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class OperatorsJobAdmin(ProcrastinateJobAdmin):
    """Procrastinate's job admin, fit for a queue with one job per thread run."""

    # Filters by lock and queueing lock listed one line per value, so one per thread ever run;
    # the thread page links to its jobs (``?queueing_lock=...``) instead.
    list_filter = [
        name for name in ProcrastinateJobAdmin.list_filter if name not in ("lock", "queueing_lock")
    ]
    show_full_result_count = False


admin.site.unregister(ProcrastinateJob)
admin.site.register(ProcrastinateJob, OperatorsJobAdmin)

"""Procrastinate's job admin, fit for a queue with one job per thread run."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponseRedirect
from procrastinate.contrib.django.admin import ProcrastinateJobAdmin
from procrastinate.contrib.django.models import ProcrastinateJob

from core.admin import BoundedCountPaginator


class OperatorsJobAdmin(ProcrastinateJobAdmin):
    """Procrastinate's job admin, fit for a queue with one job per thread run."""

    # Filters by lock and queueing lock listed one line per value, so one per thread ever run;
    # the thread page links to its jobs (``?queueing_lock=...``) instead.
    list_filter = [
        name for name in ProcrastinateJobAdmin.list_filter if name not in ("lock", "queueing_lock")
    ]
    show_full_result_count = False
    paginator = BoundedCountPaginator

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> Any:
        # The status column is a PostgreSQL enum: an unknown value in the URL would be a
        # DataError (a 500), where Django answers a bad filter by redirecting with ?e=1.
        known = {value for value, _ in ProcrastinateJob._meta.get_field("status").choices or ()}
        for name in ("status", "status__exact"):
            if name in request.GET and request.GET[name] not in known:
                return HttpResponseRedirect(f"{request.path}?e=1")
        return super().changelist_view(request, extra_context)


admin.site.unregister(ProcrastinateJob)
admin.site.register(ProcrastinateJob, OperatorsJobAdmin)

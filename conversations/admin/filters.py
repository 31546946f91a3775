"""Thread list filters that the operations console links to."""

from __future__ import annotations

import datetime
from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.db.models.functions import Now
from django.http import HttpRequest

from conversations.models import Thread

# The dashboard links to the last 15 minutes (failed turns) and the last hour (failures).
FINISHED_WITHIN = {
    "15m": ("last 15 minutes", datetime.timedelta(minutes=15)),
    "1h": ("last hour", datetime.timedelta(hours=1)),
    "1d": ("last day", datetime.timedelta(days=1)),
}


class FinishedWithinFilter(admin.SimpleListFilter):
    """Threads that ended (completed, failed or stopped) within the last 15 minutes, hour or
    day."""

    title = "finished within"
    parameter_name = "finished"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(value, label) for value, (label, _) in FINISHED_WITHIN.items()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Thread]) -> QuerySet[Thread]:
        window = FINISHED_WITHIN.get(str(self.value()))
        if window is None:
            return queryset
        # A range of thread_finished_idx: the window's threads, however many ended before.
        return queryset.filter(finished_at__gte=Now() - window[1])

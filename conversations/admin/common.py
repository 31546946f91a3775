"""What the conversations app's admin pages share: rows are never deleted by hand, rows only the
services write are never edited, and moments are shown in the operator's time zone."""

from __future__ import annotations

import datetime
from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.utils import formats, timezone

from conversations.models import Thread
from core.admin import ReadOnlyAdmin


class NoDeleteAdmin(admin.ModelAdmin):
    # Deleting rows would break invariants (gap-free seqs, tracked threads need their
    # conversation, entries protect their threads): operators clear conversations instead.
    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class SystemRowsAdmin(NoDeleteAdmin, ReadOnlyAdmin):
    """Rows only the services write: shown, never added, changed or deleted by hand."""


def when(moment: datetime.datetime | None) -> str:
    return formats.localize(timezone.localtime(moment)) if moment else "-"


class ThreadFlagsAdmin:
    """A thread's flags in words, not the admin's red cross: a finished thread is untracked by
    design, and "no cancel requested" is no fault either."""

    @admin.display(description="tracked")
    def tracking(self, thread: Thread) -> str:
        return "tracked" if thread.tracked else "not tracked"

    @admin.display(description="cancel requested")
    def cancel_requested_text(self, thread: Thread) -> str:
        return "yes" if thread.cancel_requested else "no"

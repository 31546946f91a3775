"""The dashboard's "Failures in the last hour": turns that ended failed or stopped, newest first."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import QuerySet, Value
from django.db.models.fields.json import KT
from django.db.models.functions import Coalesce, Left
from django.utils import timezone

from conversations.models import Thread, ThreadState
from operations.system_status import FAILURES_WINDOW, TIMED_OUT_TEXT

FAILURES_SHOWN = 20
# Enough for a table cell; the thread's page has the whole error.
REASON_CHARACTERS = 300


@dataclass(frozen=True)
class TurnFailure:
    thread_id: uuid.UUID
    tenant: str
    state: str
    # Never None here (the filter asks for one); typed as the column is.
    finished_at: datetime | None
    # The outcome's error (failed), its reason (stopped) or its kind (max_iterations).
    reason: str

    @property
    def timed_out(self) -> bool:
        return self.state == ThreadState.FAILED and TIMED_OUT_TEXT in self.reason.lower()


def latest_failures(*, limit: int = FAILURES_SHOWN) -> QuerySet[Thread, tuple[Any, ...]]:
    """The latest failed or stopped turns of the last hour: thread_finished_idx read backwards
    from now, so the threads that ended before the hour are never read."""
    return (
        Thread.objects.filter(
            finished_at__gte=timezone.now() - FAILURES_WINDOW,
            state__in=[ThreadState.FAILED, ThreadState.STOPPED],
        )
        .order_by("-finished_at")
        # Only the text shown: an outcome's response may be as long as any message.
        .annotate(
            reason=Left(
                Coalesce(
                    KT("outcome__error"), KT("outcome__reason"), KT("outcome__kind"), Value("")
                ),
                REASON_CHARACTERS,
            )
        )
        .values_list("id", "user_id", "state", "finished_at", "reason")[:limit]
    )


def turn_failures(*, limit: int = FAILURES_SHOWN) -> list[TurnFailure]:
    return [
        TurnFailure(
            thread_id=thread_id,
            tenant=tenant,
            state=state,
            finished_at=finished,
            reason=reason,
        )
        for thread_id, tenant, state, finished, reason in latest_failures(limit=limit)
    ]

"""Reads of the routines app, always scoped by tenant (another tenant's routine is a 404)."""

from __future__ import annotations

import uuid

from django.db.models import OuterRef, QuerySet, Subquery

from conversations.models import Thread
from routines.errors import RoutineNotFound
from routines.models import Routine, RoutineFiring


def routine_list(*, user_id: str) -> QuerySet[Routine]:
    """The tenant's routines, newest first."""
    return Routine.objects.filter(user_id=user_id).order_by("-created_at", "-id")


def routine_get(*, user_id: str, routine_id: uuid.UUID) -> Routine:
    routine = Routine.objects.filter(user_id=user_id, pk=routine_id).first()
    if routine is None:
        raise RoutineNotFound()
    return routine


def routine_check(*, user_id: str, routine_id: uuid.UUID) -> None:
    """RoutineNotFound unless the tenant has this routine."""
    if not Routine.objects.filter(user_id=user_id, pk=routine_id).exists():
        raise RoutineNotFound()


def firing_list(*, user_id: str, routine_id: uuid.UUID) -> QuerySet[RoutineFiring]:
    """The routine's firings, newest slot first, each annotated with its thread's state and
    outcome (``thread_state``, ``thread_outcome``; null once the thread is deleted), read by
    the page's one query: no query per firing."""
    thread = Thread.objects.filter(user_id=user_id, pk=OuterRef("thread_id"))
    return (
        RoutineFiring.objects.filter(user_id=user_id, routine_id=routine_id)
        .annotate(
            thread_state=Subquery(thread.values("state")[:1]),
            thread_outcome=Subquery(thread.values("outcome")[:1]),
        )
        .order_by("-slot", "-id")
    )

"""Routines: a tenant's schedules (cron in an IANA time zone) and the firing of each slot.

A firing's identity is (tenant, routine, slot): a unique index, so however many schedulers race
and whatever restarts, each slot fires once. Every table's primary key and foreign keys start
with ``user_id`` (set by migration 0001), so Citus can distribute them by tenant; Django sees
``id`` as the key, which stays unique.
"""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q

from core.db import RowLockQuerySet, TenantRow


class RoutineQuerySet(RowLockQuerySet["Routine"]):
    def due(self, now: object) -> RoutineQuerySet:
        """Enabled routines whose next slot has come (served by routine_due_idx)."""
        return self.filter(enabled=True, next_fire_at__lte=now)


class Routine(TenantRow):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user_id = models.CharField(max_length=255)
    name = models.CharField(max_length=100)
    # Five fields (minute hour day-of-month month day-of-week) or a nickname such as @daily.
    cron = models.CharField(max_length=255)
    # IANA name; slots are wall-clock times there, so a daily 09:00 stays 09:00 across DST.
    timezone = models.CharField(max_length=64, default="UTC")
    # The target: a channel (and scope) whose conversation gets `message` under its busy
    # policy, or, with no channel, a new conversation of its own whose thread has `message` as
    # its goal.
    channel = models.CharField(max_length=255, blank=True, default="")
    scope = models.CharField(max_length=255, blank=True, default="")
    message = models.TextField()
    enabled = models.BooleanField(default=True)
    # The next slot to fire (UTC); null while disabled. Only the scheduler advances it.
    next_fire_at = models.DateTimeField(null=True, blank=True)
    last_fire_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = RoutineQuerySet.as_manager()

    class Meta:
        indexes = [
            # The scheduler's scan, across tenants: enabled routines by their next slot.
            models.Index(
                fields=["next_fire_at"], name="routine_due_idx", condition=Q(enabled=True)
            ),
        ]
        constraints = [
            models.UniqueConstraint(fields=["user_id", "name"], name="routine_unique_name"),
            models.CheckConstraint(
                name="routine_enabled_has_next_fire",
                condition=Q(enabled=False) | Q(next_fire_at__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.cron} {self.timezone})"

    @property
    def target(self) -> str:
        return "channel" if self.channel else "goal"


class FiringState(models.TextChoices):
    # The message was handled: a thread spawned, fed, resumed, or the message queued.
    FIRED = "fired"
    # Missed by more than ROUTINE_CATCH_UP_MINUTES while the service was down.
    SKIPPED = "skipped"
    # The conversation refused the message (busy policy "reject", or busy past its lock bound).
    REJECTED = "rejected"
    # Firing it raised an unexpected error: the slot is given up (its detail says why) rather
    # than tried again at every tick ahead of every other routine.
    FAILED = "failed"


class RoutineFiring(TenantRow):
    id = models.BigAutoField(primary_key=True)
    user_id = models.CharField(max_length=255)
    # The key (user_id, routine_id) is declared in migration 0001, with ON DELETE CASCADE.
    routine = models.ForeignKey(
        Routine, on_delete=models.DO_NOTHING, db_constraint=False, related_name="firings"
    )
    # The slot's time (UTC): the firing's identity with the tenant and the routine.
    slot = models.DateTimeField()
    state = models.CharField(max_length=16, choices=FiringState.choices)
    fired_at = models.DateTimeField()
    # What the message did (spawned, injected, resumed, queued) and where; no database key to
    # the thread, which may be deleted while its routine's history stays.
    action = models.CharField(max_length=16, blank=True, default="")
    conversation_id = models.UUIDField(null=True, blank=True)
    thread_id = models.UUIDField(null=True, blank=True)
    detail = models.TextField(blank=True, default="")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user_id", "routine", "slot"], name="routine_firing_once_per_slot"
            ),
            models.CheckConstraint(
                name="routine_firing_state_valid", condition=Q(state__in=FiringState.values)
            ),
        ]
        indexes = [
            # The operations console and /metrics: firings of the last hour or day.
            models.Index(fields=["fired_at"], name="routine_firing_recent_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.routine_id} @ {self.slot:%Y-%m-%d %H:%M} {self.state}"

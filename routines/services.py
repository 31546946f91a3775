"""Every write of the routines app: a tenant's routines (create, update, delete), the
scheduler's pass that fires their due slots (``routines.firing``, re-exported here) and the
prune of old firings.

Locking policy: a routine's row is locked ``FOR NO KEY UPDATE`` by whoever changes it, the
tenant's edits (waits bounded by ``CONVERSATION_LOCK_TIMEOUT_MS``: ``RoutineBusy``) and the
scheduler (``SKIP LOCKED``: a routine another worker is firing is left to it); the scheduler
then takes the conversation's locks through the conversation services, so the order is always
routine, then conversation, then thread.
"""

from __future__ import annotations

import uuid
from contextlib import AbstractContextManager
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from conversations.services import channel_key
from core.db import bounded_transaction, violated_constraint
from core.errors import InvalidInput
from core.text import has_control_characters
from routines.clock import scheduler_now
from routines.errors import RoutineBusy, RoutineNotFound
from routines.firing import FireDueResult, routines_fire_due
from routines.models import Routine, RoutineFiring
from routines.schedule import DEFAULT_TIMEZONE, cron_check, next_slot, timezone_check

__all__ = [
    "FireDueResult",
    "routine_create",
    "routine_delete",
    "routine_firings_prune",
    "routine_update",
    "routines_fire_due",
]

MAX_NAME_LENGTH = 100
# Serialises one tenant's creates, so two racing ones cannot both pass ROUTINE_MAX_PER_TENANT
# (transaction-scoped: safe behind a transaction pooler).
_TENANT_CREATE_LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"
# Firings deleted per transaction.
FIRING_PRUNE_BATCH = 1000
_FIRING_TABLE = RoutineFiring._meta.db_table
# Served by routine_firing_recent_idx (fired_at), across tenants. Plain FOR UPDATE: these rows
# are deleted; SKIP LOCKED leaves a firing a routine's delete is cascading to for that delete.
_FIRING_PRUNE_SQL = f"""
DELETE FROM {_FIRING_TABLE} WHERE (user_id, id) IN (
    SELECT user_id, id FROM {_FIRING_TABLE}
    WHERE fired_at < %s ORDER BY fired_at LIMIT %s FOR UPDATE SKIP LOCKED
)
"""


def _invalid(field: str, problem: str) -> InvalidInput:
    return InvalidInput(f"{field} {problem}.", details={field: [problem]})


def _check_name(name: str) -> str:
    if not name or name != name.strip() or len(name) > MAX_NAME_LENGTH:
        raise _invalid(
            "name", f"must be 1-{MAX_NAME_LENGTH} characters without surrounding whitespace"
        )
    if has_control_characters(name):
        raise _invalid("name", "must not contain control characters")
    return name


def _check_message(message: str) -> str:
    if not message or not message.strip():
        raise _invalid("message", "must not be empty")
    limit = settings.CONVERSATION_MAX_MESSAGE_BYTES
    size = len(message.encode("utf-8", errors="surrogatepass"))
    if size > limit:
        raise _invalid(
            "message",
            f"is {size} bytes; the limit is {limit} bytes (CONVERSATION_MAX_MESSAGE_BYTES)",
        )
    return message


def _check_target(channel: str, scope: str) -> None:
    if channel:
        channel_key(channel, scope or None)
    elif scope:
        raise _invalid("scope", "needs a channel (a routine without one starts its own threads)")


def _lock_wait_bounded() -> AbstractContextManager[None]:
    return bounded_transaction(
        lock_timeout_ms=settings.CONVERSATION_LOCK_TIMEOUT_MS, busy=RoutineBusy
    )


def _name_taken(error: IntegrityError) -> bool:
    return violated_constraint(error) == "routine_unique_name"


def routine_create(
    *,
    user_id: str,
    name: str,
    cron: str,
    message: str,
    timezone: str = DEFAULT_TIMEZONE,
    channel: str = "",
    scope: str = "",
    enabled: bool = True,
) -> Routine:
    """A new routine; enabled, its first slot is the first after the scheduler's clock. Takes a
    per-tenant advisory lock to count the tenant's routines (``ROUTINE_MAX_PER_TENANT``)."""
    name = _check_name(name)
    cron = cron_check(cron)
    timezone_check(timezone)
    _check_target(channel, scope)
    message = _check_message(message)
    routine = Routine(
        user_id=user_id,
        name=name,
        cron=cron,
        timezone=timezone,
        channel=channel,
        scope=scope,
        message=message,
        enabled=enabled,
        next_fire_at=next_slot(cron, timezone, scheduler_now()) if enabled else None,
    )
    try:
        with _lock_wait_bounded():
            with connection.cursor() as cursor:
                cursor.execute(_TENANT_CREATE_LOCK_SQL, [f"routines:{user_id}"])
            limit = settings.ROUTINE_MAX_PER_TENANT
            if Routine.objects.filter(user_id=user_id).count() >= limit:
                raise _invalid(
                    "cron",
                    f"cannot be scheduled: this tenant has {limit} routines, the most "
                    "ROUTINE_MAX_PER_TENANT allows; delete one first",
                )
            routine.save(force_insert=True)
    except IntegrityError as error:
        if _name_taken(error):
            raise _invalid("name", "is taken by another routine of this tenant") from None
        raise
    return routine


def routine_update(
    *,
    user_id: str,
    routine_id: uuid.UUID,
    name: str | None = None,
    cron: str | None = None,
    timezone: str | None = None,
    channel: str | None = None,
    scope: str | None = None,
    message: str | None = None,
    enabled: bool | None = None,
) -> Routine:
    """Change the given fields (None: unchanged) under the routine's row lock. A new schedule,
    or enabling, sets the next slot to the first after the scheduler's clock (slots missed while
    disabled never fire); disabling clears it."""
    if name is not None:
        _check_name(name)
    if cron is not None:
        cron = cron_check(cron)
    if timezone is not None:
        timezone_check(timezone)
    if message is not None:
        _check_message(message)
    try:
        with _lock_wait_bounded():
            routine = Routine.objects.for_update().filter(user_id=user_id, pk=routine_id).first()
            if routine is None:
                raise RoutineNotFound()
            rescheduled = (cron is not None and cron != routine.cron) or (
                timezone is not None and timezone != routine.timezone
            )
            if enabled is not None:
                rescheduled = rescheduled or (enabled and not routine.enabled)
                routine.enabled = enabled
            for field, value in (
                ("name", name),
                ("cron", cron),
                ("timezone", timezone),
                ("channel", channel),
                ("scope", scope),
                ("message", message),
            ):
                if value is not None:
                    setattr(routine, field, value)
            if channel == "" and scope is None:
                routine.scope = ""  # a goal routine has no scope: dropping the channel drops it
            _check_target(routine.channel, routine.scope)
            if not routine.enabled:
                routine.next_fire_at = None
            elif rescheduled or routine.next_fire_at is None:
                routine.next_fire_at = next_slot(routine.cron, routine.timezone, scheduler_now())
            routine.save()
    except IntegrityError as error:
        if _name_taken(error):
            raise _invalid("name", "is taken by another routine of this tenant") from None
        raise
    return routine


def routine_delete(*, user_id: str, routine_id: uuid.UUID) -> None:
    """Delete the routine; the database deletes its firings (ON DELETE CASCADE). Waits, within
    the lock timeout, for a scheduler firing it."""
    with _lock_wait_bounded():
        # One statement: the firings' foreign key is the database's (Django collects nothing).
        deleted, _ = Routine.objects.filter(user_id=user_id, pk=routine_id).delete()
    if not deleted:
        raise RoutineNotFound()


def routine_firings_prune(*, older_than_days: int, batch: int = FIRING_PRUNE_BATCH) -> int:
    """Delete firings fired more than ``older_than_days`` ago, ``batch`` per transaction until
    none is left; ``0`` deletes nothing. The number deleted. A pruned slot never fires again:
    the scheduler only fires slots after the routine's ``next_fire_at``, which has passed it."""
    if older_than_days == 0:
        return 0
    cutoff = timezone.now() - timedelta(days=older_than_days)
    deleted = 0
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(_FIRING_PRUNE_SQL, [cutoff, batch])
            count = cursor.rowcount
        deleted += count
        if count < batch:
            return deleted

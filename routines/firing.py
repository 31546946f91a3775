"""The scheduler's pass: fire the due slots of every tenant's routines, each exactly once.

Each routine is fired in a transaction of its own, which holds its row lock (``FOR NO KEY
UPDATE SKIP LOCKED``: racing workers never wait for each other's routines) and
commits together the firing rows, the message's thread and entries, the ``routine.fired``
webhook deliveries and the advanced ``next_fire_at``. A worker killed mid-pass leaves all of
them or none. Whatever the row lock misses (a clock that went back, a bug), the unique index
``routine_firing_once_per_slot`` catches: a slot whose firing row exists is not fired again.

Slots older than ``ROUTINE_CATCH_UP_MINUTES`` (no scheduler ran then) are not fired: each run
of them is one ``skipped`` firing, at the run's first slot. A slot that fires sends the
routine's message: into its channel's conversation under that conversation's busy policy, or,
for a routine without a channel, into a new conversation of its own (channel ``routine``, the
routine's id as scope), so each firing starts a new thread. A refusal (busy policy ``reject``,
a conversation busy past its lock timeout) is a ``rejected`` firing, not retried. Both fired and
rejected firings emit ``routine.fired`` (with their ``state``); skipped ones emit nothing.
"""

from __future__ import annotations

import datetime
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction

from conversations.models import Thread
from conversations.services import conversation_start_new, message_handle
from core.errors import ApplicationError
from routines.metrics import routine_firing_observe
from routines.models import FiringState, Routine, RoutineFiring
from routines.schedule import next_slot, previous_slot
from webhooks.services import webhook_event_emit

logger = logging.getLogger(__name__)

# The conversation channel of routines without one; the scope is the routine's id.
GOAL_CHANNEL = "routine"
# Slots one routine fires in one transaction (a catch-up of an every-minute routine); the rest
# wait for the next pass, late by then, and may be skipped.
MAX_SLOTS_PER_TRANSACTION = 60
# A slot is found late by up to a tick, or a slow pass: within this it is on time and fires even
# with ROUTINE_CATCH_UP_MINUTES=0.
ON_TIME_WINDOW = datetime.timedelta(minutes=1)
# Missed slots counted one by one for a skipped firing's detail; beyond, "more than".
MAX_MISSED_COUNTED = 1000

_FIRING_INSERT_SQL = f"""
INSERT INTO {RoutineFiring._meta.db_table}
    (user_id, routine_id, slot, state, fired_at, action, conversation_id, thread_id, detail)
VALUES (%s, %s, %s, %s, %s, '', NULL, NULL, %s)
ON CONFLICT (user_id, routine_id, slot) DO NOTHING
RETURNING id
"""
_THREAD_TAG_SQL = (
    f"UPDATE {Thread._meta.db_table} SET metadata = metadata || %s::jsonb"
    " WHERE user_id = %s AND id = %s"
)


@dataclass
class FireDueResult:
    """What a pass did: routines handled (and failed), and firings by state."""

    routines: int = 0
    failed: int = 0
    firings: dict[str, int] = field(default_factory=dict)

    def count(self, state: str) -> None:
        self.firings[state] = self.firings.get(state, 0) + 1


def routines_fire_due(*, now: datetime.datetime, limit: int = 100) -> FireDueResult:
    """Fire the slots due at ``now`` (the scheduler's clock) of up to ``limit`` routines, each
    in its own transaction under its row lock, skipping routines another worker holds. A
    routine whose firing fails unexpectedly is logged, rolled back and left for the next pass.
    Metrics and log lines are written after each routine's commit."""
    result = FireDueResult()
    # Read without locks, across tenants; then each is locked by its tenant and id, a statement
    # on one shard (Citus runs FOR UPDATE only on one), and only if it is still due: a worker
    # that fired it meanwhile has moved next_fire_at past now.
    due = Routine.objects.due(now).order_by("next_fire_at", "pk").values_list("user_id", "pk")
    for user_id, routine_id in list(due[:limit]):
        routine: Routine | None = None
        try:
            with transaction.atomic():
                routine = (
                    Routine.objects.due(now)
                    .filter(user_id=user_id, pk=routine_id)
                    .for_update(skip_locked=True)
                    .first()
                )
                if routine is None:
                    continue
                _routine_fire(routine, now=now, result=result)
        except (OperationalError, InterfaceError):
            raise  # the database is away: the scheduler's loop logs it and tries next tick
        except Exception as error:
            logger.exception(
                "routine %s of %s not fired",
                routine_id,
                user_id,
                extra={"tenant": user_id, "routine_id": str(routine_id)},
            )
            result.failed += 1
            _slot_give_up(user_id, routine_id, now=now, error=error)
            continue
        result.routines += 1
    return result


def _slot_give_up(
    user_id: str, routine_id: uuid.UUID, *, now: datetime.datetime, error: Exception
) -> None:
    """Record the routine's due slot as ``failed`` and move on to its next one, so a routine
    whose firing raises does not come back at every tick, first in the due list, for ever."""
    try:
        with transaction.atomic():
            routine = (
                Routine.objects.due(now)
                .filter(user_id=user_id, pk=routine_id)
                .for_update(skip_locked=True)
                .first()
            )
            if routine is None or routine.next_fire_at is None:
                return
            slot = routine.next_fire_at
            detail = f"not fired: {type(error).__name__}: {error}"
            try:
                changes: dict[str, Any] = {
                    "next_fire_at": next_slot(routine.cron, routine.timezone, slot)
                }
            except Exception as unreadable:
                # Its schedule itself cannot be read (a row written by hand): it stops here,
                # disabled, until the tenant fixes it.
                changes = {"enabled": False, "next_fire_at": None}
                detail += f"; disabled, its schedule cannot be read ({unreadable})"
            if _firing_insert(
                routine, slot=slot, state=FiringState.FAILED, now=now, detail=detail[:2000]
            ):
                _after_commit_observe(routine, FiringState.FAILED, slot, detail[:2000])
            Routine.objects.filter(user_id=user_id, pk=routine_id).update(**changes)
    except (OperationalError, InterfaceError):
        raise
    except Exception:
        logger.exception("routine %s of %s: its failed slot not recorded", routine_id, user_id)


def _routine_fire(routine: Routine, *, now: datetime.datetime, result: FireDueResult) -> None:
    assert routine.next_fire_at is not None  # due() selects only routines with a next slot
    slot = routine.next_fire_at
    late_before = now - max(
        datetime.timedelta(minutes=settings.ROUTINE_CATCH_UP_MINUTES), ON_TIME_WINDOW
    )
    if slot < late_before:
        slot = _missed_run_skip(routine, first=slot, late_before=late_before, now=now)
        result.count(FiringState.SKIPPED)
    last_fired = routine.last_fire_at
    fired = 0
    while slot <= now and fired < MAX_SLOTS_PER_TRANSACTION:
        state = _slot_fire(routine, slot=slot, now=now)
        if state is not None:
            result.count(state)
            last_fired = slot
        fired += 1
        slot = next_slot(routine.cron, routine.timezone, slot)
    Routine.objects.filter(user_id=routine.user_id, pk=routine.pk).update(
        next_fire_at=slot, last_fire_at=last_fired
    )


def _missed_run_skip(
    routine: Routine,
    *,
    first: datetime.datetime,
    late_before: datetime.datetime,
    now: datetime.datetime,
) -> datetime.datetime:
    """Record the run of slots from ``first`` up to ``late_before`` as one skipped firing; the
    first slot at or after ``late_before``, where firing resumes."""
    missed, last, slot = 0, first, first
    while slot < late_before and missed < MAX_MISSED_COUNTED:
        missed, last = missed + 1, slot
        slot = next_slot(routine.cron, routine.timezone, slot)
    if slot < late_before:
        # A long outage: jump over the rest instead of walking every slot.
        last = previous_slot(routine.cron, routine.timezone, late_before)
        counted = f"more than {MAX_MISSED_COUNTED} slots"
        slot = next_slot(
            routine.cron, routine.timezone, late_before - datetime.timedelta(microseconds=1)
        )
    else:
        counted = "1 slot" if missed == 1 else f"{missed} slots"
    detail = (
        f"{counted} missed while no scheduler ran, from {first.isoformat()} to "
        f"{last.isoformat()}: older than ROUTINE_CATCH_UP_MINUTES "
        f"({settings.ROUTINE_CATCH_UP_MINUTES}) when found"
    )
    if _firing_insert(routine, slot=first, state=FiringState.SKIPPED, now=now, detail=detail):
        _after_commit_observe(routine, FiringState.SKIPPED, first, detail)
    return slot


def _firing_insert(
    routine: Routine, *, slot: datetime.datetime, state: str, now: datetime.datetime, detail: str
) -> int | None:
    """The new firing row's id, or None when the slot already has one (it fired before)."""
    with connection.cursor() as cursor:
        cursor.execute(_FIRING_INSERT_SQL, [routine.user_id, routine.pk, slot, state, now, detail])
        row = cursor.fetchone()
    return None if row is None else int(row[0])


def _slot_fire(routine: Routine, *, slot: datetime.datetime, now: datetime.datetime) -> str | None:
    """Fire one slot: its firing row first (the claim), then the message in a savepoint. The
    firing's state, or None when the slot had fired already."""
    firing_id = _firing_insert(routine, slot=slot, state=FiringState.FIRED, now=now, detail="")
    if firing_id is None:
        logger.info("routine %s slot %s fired before; skipped", routine.pk, slot.isoformat())
        return None
    changes: dict[str, Any] = {"state": FiringState.FIRED, "detail": ""}
    try:
        with transaction.atomic():
            changes.update(_message_send(routine, slot=slot))
    except ApplicationError as error:
        changes = {"state": FiringState.REJECTED, "detail": f"{error.code}: {error.message}"}
    RoutineFiring.objects.filter(user_id=routine.user_id, pk=firing_id).update(**changes)
    webhook_event_emit(
        user_id=routine.user_id,
        event_type="routine.fired",
        data={
            "routine_id": str(routine.pk),
            "routine_name": routine.name,
            "firing_id": firing_id,
            "slot": slot.isoformat(),
            "state": changes["state"],
            "action": changes.get("action"),
            "conversation_id": _text(changes.get("conversation_id")),
            "thread_id": _text(changes.get("thread_id")),
        },
    )
    _after_commit_observe(routine, changes["state"], slot, changes["detail"])
    return str(changes["state"])


def _text(value: uuid.UUID | None) -> str | None:
    return None if value is None else str(value)


def _message_send(routine: Routine, *, slot: datetime.datetime) -> dict[str, Any]:
    if routine.channel:
        channel, scope = routine.channel, routine.scope or None
    else:
        channel, scope = GOAL_CHANNEL, str(routine.pk)
        # A new conversation each firing: the message below spawns its first thread.
        conversation_start_new(user_id=routine.user_id, channel=channel, scope=scope)
    handled = message_handle(
        user_id=routine.user_id, channel=channel, scope=scope, content=routine.message
    )
    if handled.action == "spawned":
        # The thread's webhooks (thread.completed ...) carry metadata.routine_id.
        tag = {"routine_id": str(routine.pk), "routine_slot": slot.isoformat()}
        with connection.cursor() as cursor:
            cursor.execute(_THREAD_TAG_SQL, [json.dumps(tag), routine.user_id, handled.thread_id])
    return {
        "action": handled.action,
        "conversation_id": handled.conversation_id,
        "thread_id": handled.thread_id,
    }


def _after_commit_observe(
    routine: Routine, state: str, slot: datetime.datetime, detail: str
) -> None:
    def observe() -> None:
        routine_firing_observe(state)
        logger.info(
            "routine %s of %s: slot %s %s%s",
            routine.pk,
            routine.user_id,
            slot.isoformat(),
            state,
            f" ({detail})" if detail else "",
            extra={
                "tenant": routine.user_id,
                "routine_id": str(routine.pk),
                "slot": slot.isoformat(),
                "state": state,
            },
        )

    transaction.on_commit(observe)

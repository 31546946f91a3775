"""Schedulers racing on the same slots: each slot fires once, whoever gets there."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from django.db import connection

from conversations.models import Thread
from routines import services
from routines.models import FiringState, RoutineFiring
from tests.routines.helpers import T0, minutes, routine_make
from tests.support.concurrency import run_together_or_raise

pytestmark = pytest.mark.django_db(transaction=True)

SCHEDULERS = 4
ROUTINES = 6


def test_schedulers_racing_at_the_same_now_fire_each_slot_once(clock: Path) -> None:
    routines = [routine_make(f"tenant-{n % 3}", name=f"routine {n}") for n in range(ROUTINES)]
    now = T0 + minutes(3)

    results = run_together_or_raise(
        [lambda: services.routines_fire_due(now=now) for _ in range(SCHEDULERS)]
    )

    slots = Counter(RoutineFiring.objects.values_list("routine_id", "slot"))
    assert len(slots) == ROUTINES * 3
    assert set(slots.values()) == {1}
    assert sum(result.firings.get("fired", 0) for result in results) == ROUTINES * 3
    assert sum(result.failed for result in results) == 0
    fired = RoutineFiring.objects.filter(state=FiringState.FIRED)
    assert Thread.objects.filter(pk__in=fired.values("thread_id")).count() == ROUTINES * 3
    assert Thread.objects.count() == ROUTINES * 3
    assert {routine.pk for routine in routines} == {routine_id for routine_id, _ in slots}


def test_a_slot_with_a_firing_row_is_not_fired_again(clock: Path) -> None:
    routine = routine_make()
    # As if a scheduler had fired 09:01 and the routine's next slot had gone back (a clock
    # moved back, a hand edit): the unique index still holds the slot.
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO routines_routinefiring (user_id, routine_id, slot, state, fired_at,"
            " action, detail) VALUES ('alice', %s, %s, 'fired', %s, 'spawned', '')",
            [routine.pk, T0 + minutes(1), T0 + minutes(1)],
        )

    services.routines_fire_due(now=T0 + minutes(2))

    assert RoutineFiring.objects.filter(routine=routine).count() == 2
    assert Thread.objects.count() == 1

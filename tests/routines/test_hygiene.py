"""Bounded storage: firings older than ROUTINE_FIRING_RETENTION_DAYS are pruned, hourly."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from procrastinate.contrib.django import app
from pytest_django.fixtures import Settings as SettingsWrapper

from routines.models import FiringState, Routine, RoutineFiring
from routines.services import routine_firings_prune
from routines.tasks import routine_firings_prune_job
from tests.routines.helpers import routine_make

pytestmark = pytest.mark.django_db


def _firing(routine: Routine, *, days_ago: float) -> RoutineFiring:
    fired_at = timezone.now() - timedelta(days=days_ago)
    return RoutineFiring.objects.create(
        user_id=routine.user_id,
        routine=routine,
        slot=fired_at.replace(second=0, microsecond=0),
        state=FiringState.FIRED,
        fired_at=fired_at,
    )


def _remaining() -> set[int]:
    return set(RoutineFiring.objects.values_list("pk", flat=True))


def test_prune_deletes_firings_older_than_the_retention() -> None:
    routine = routine_make()
    _firing(routine, days_ago=91)
    _firing(routine, days_ago=400)
    recent = _firing(routine, days_ago=89)

    deleted = routine_firings_prune(older_than_days=90)

    assert deleted == 2
    assert _remaining() == {recent.pk}
    assert Routine.objects.filter(pk=routine.pk).exists()


def test_prune_with_zero_days_keeps_every_firing() -> None:
    routine = routine_make()
    kept = {_firing(routine, days_ago=3650).pk}

    deleted = routine_firings_prune(older_than_days=0)

    assert deleted == 0
    assert _remaining() == kept


def test_prune_works_through_every_batch_across_tenants() -> None:
    alice, bob = routine_make(), routine_make(user_id="bob")
    for routine, days_ago in ((alice, 100), (alice, 101), (bob, 102)):
        _firing(routine, days_ago=days_ago)
    recent = _firing(bob, days_ago=1)

    deleted = routine_firings_prune(older_than_days=90, batch=1)

    assert deleted == 3
    assert _remaining() == {recent.pk}


def test_the_prune_job_follows_the_retention_setting(settings: SettingsWrapper) -> None:
    routine = routine_make()
    old = _firing(routine, days_ago=10)

    settings.ROUTINE_FIRING_RETENTION_DAYS = 0
    routine_firings_prune_job(timestamp=0)
    kept_at_zero = _remaining()
    settings.ROUTINE_FIRING_RETENTION_DAYS = 9
    routine_firings_prune_job(timestamp=0)

    assert kept_at_zero == {old.pk}
    assert _remaining() == set()


def test_the_prune_task_is_periodic_on_the_default_queue() -> None:
    periodic = {
        task.task.name: (task.cron, task.task.queue, task.task.queueing_lock)
        for task in app.periodic_registry.periodic_tasks.values()
    }

    assert periodic["routines.prune_firings"] == (
        "53 * * * *",
        "default",
        "routines.prune_firings",
    )

"""The operators' pages of routines and firings, and the enable and disable actions."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.test import Client

from routines import services
from routines.models import Routine, RoutineFiring
from tests.routines.helpers import T0, minutes, routine_make

pytestmark = pytest.mark.django_db


def test_routine_and_firing_pages_show_the_thread_of_each_firing(
    admin_client: Client, clock: Path
) -> None:
    routine = routine_make(cron="* * * * *")
    services.routines_fire_due(now=T0 + minutes(1))
    firing = RoutineFiring.objects.get(routine=routine)

    routines = admin_client.get("/admin/routines/routine/")
    detail = admin_client.get(f"/admin/routines/routine/{routine.pk}/change/")
    firings = admin_client.get(
        "/admin/routines/routinefiring/",
        {"user_id": "alice", "routine__id__exact": str(routine.pk)},
    )
    firing_page = admin_client.get(f"/admin/routines/routinefiring/{firing.pk}/change/")

    assert routines.status_code == 200
    assert "summary" in routines.text
    assert detail.status_code == 200
    assert "goal (a new thread each firing)" in detail.text
    assert firings.status_code == 200
    assert f"/admin/conversations/thread/{firing.thread_id}/change/" in firings.text
    assert firing_page.status_code == 200


def test_disable_then_enable_actions_go_through_the_service(
    admin_client: Client, clock: Path
) -> None:
    routine = routine_make(cron="*/5 * * * *")
    url = "/admin/routines/routine/"

    admin_client.post(url, {"action": "disable", "_selected_action": [str(routine.pk)]})
    disabled = Routine.objects.get(pk=routine.pk)
    admin_client.post(url, {"action": "enable", "_selected_action": [str(routine.pk)]})
    enabled = Routine.objects.get(pk=routine.pk)

    assert (disabled.enabled, disabled.next_fire_at) == (False, None)
    assert (enabled.enabled, enabled.next_fire_at) == (True, T0 + minutes(5))

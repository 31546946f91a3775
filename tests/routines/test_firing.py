"""The scheduler's pass: each slot fires once, late slots within the catch-up window fire, older
ones are one skipped firing per run, and a firing's message follows its target."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from pytest_django.fixtures import Settings as SettingsWrapper

from conversations.models import BusyPolicy, Conversation, Thread
from conversations.services import conversation_get_or_create
from routines import services
from routines.models import FiringState, Routine, RoutineFiring
from tests.routines.helpers import T0, clock_set, minutes, routine_make
from webhooks.models import Webhook, WebhookDelivery

pytestmark = pytest.mark.django_db


def _firings(routine: Routine) -> list[tuple[str, str]]:
    return [
        (firing.slot.strftime("%H:%M"), firing.state)
        for firing in RoutineFiring.objects.filter(routine=routine).order_by("slot")
    ]


def _thread(firing: RoutineFiring) -> Thread:
    return Thread.objects.get(user_id=firing.user_id, pk=str(firing.thread_id))


def _conversation(firing: RoutineFiring) -> Conversation:
    return Conversation.objects.get(user_id=firing.user_id, pk=str(firing.conversation_id))


def test_a_created_routine_is_due_at_its_first_slot_after_the_clock(clock: Path) -> None:
    routine = routine_make(cron="*/5 * * * *")

    assert routine.next_fire_at == T0 + minutes(5)
    assert routine.last_fire_at is None


def test_each_slot_fires_once_however_many_passes_see_it(clock: Path) -> None:
    routine = routine_make()

    first = services.routines_fire_due(now=T0 + minutes(1))
    again = services.routines_fire_due(
        now=T0
        + minutes(
            1,
        )
    )

    routine.refresh_from_db()
    assert first.firings == {"fired": 1}
    assert again.firings == {}
    assert again.routines == 0
    assert _firings(routine) == [("09:01", "fired")]
    assert routine.next_fire_at == T0 + minutes(2)
    assert routine.last_fire_at == T0 + minutes(1)


def test_a_slot_not_yet_come_does_not_fire(clock: Path) -> None:
    routine = routine_make()

    result = services.routines_fire_due(now=T0 + minutes(0.99))

    assert result.routines == 0
    assert _firings(routine) == []


def test_late_slots_within_the_catch_up_window_fire_each_once(
    clock: Path, settings: SettingsWrapper
) -> None:
    settings.ROUTINE_CATCH_UP_MINUTES = 10
    routine = routine_make()

    services.routines_fire_due(now=T0 + minutes(3.5))

    routine.refresh_from_db()
    assert _firings(routine) == [("09:01", "fired"), ("09:02", "fired"), ("09:03", "fired")]
    assert routine.next_fire_at == T0 + minutes(4)


def test_slots_missed_beyond_the_window_are_one_skipped_firing_per_run(
    clock: Path, settings: SettingsWrapper
) -> None:
    settings.ROUTINE_CATCH_UP_MINUTES = 2
    routine = routine_make()

    # Down from 09:00 to 09:10: 09:01-09:07 are older than 2 minutes, 09:08-09:10 fire late.
    services.routines_fire_due(now=T0 + minutes(10))

    assert _firings(routine) == [
        ("09:01", "skipped"),
        ("09:08", "fired"),
        ("09:09", "fired"),
        ("09:10", "fired"),
    ]
    skipped = RoutineFiring.objects.get(routine=routine, state=FiringState.SKIPPED)
    assert skipped.detail.startswith("7 slots missed")
    assert "2026-06-01T09:07:00+00:00" in skipped.detail
    assert skipped.thread_id is None


def test_a_month_down_is_one_skipped_firing_and_the_walk_is_bounded(
    clock: Path, settings: SettingsWrapper, django_assert_max_num_queries: Any
) -> None:
    settings.ROUTINE_CATCH_UP_MINUTES = 0
    routine = routine_make()
    month_later = T0 + minutes(30 * 24 * 60) + minutes(0.5)

    # Not a statement per missed slot: the routine's lock, the skipped firing, the on-time
    # slot's firing, message and event, the advance, and the next (absent) routine.
    with django_assert_max_num_queries(30):
        services.routines_fire_due(now=month_later)

    routine.refresh_from_db()
    skipped = RoutineFiring.objects.get(routine=routine, state=FiringState.SKIPPED)
    assert skipped.detail.startswith("more than 1000 slots missed")
    # Even with no catch-up, a slot found within a minute of its time is on time and fires.
    assert "to 2026-07-01T08:59:00+00:00" in skipped.detail
    assert _firings(routine) == [("09:01", "skipped"), ("09:00", "fired")]


def test_a_goal_routine_starts_a_new_thread_at_each_firing(clock: Path) -> None:
    routine = routine_make(message="write the daily summary")

    services.routines_fire_due(now=T0 + minutes(1))
    services.routines_fire_due(now=T0 + minutes(2))

    firings = list(RoutineFiring.objects.filter(routine=routine).order_by("slot"))
    threads = [_thread(firing) for firing in firings]
    assert [firing.action for firing in firings] == ["spawned", "spawned"]
    assert threads[0].conversation_id != threads[1].conversation_id
    assert [thread.goal for thread in threads] == ["write the daily summary"] * 2
    assert threads[0].metadata["routine_id"] == str(routine.pk)
    assert threads[0].metadata["routine_slot"] == "2026-06-01T09:01:00+00:00"
    conversation = _conversation(firings[1])
    assert conversation.channel == f"routine:{routine.pk}"


def test_a_channel_routine_spawns_then_injects_under_the_inject_policy(clock: Path) -> None:
    routine = routine_make(channel="web", scope="daily", message="news?")

    services.routines_fire_due(now=T0 + minutes(1))
    services.routines_fire_due(now=T0 + minutes(2))

    first, second = RoutineFiring.objects.filter(routine=routine).order_by("slot")
    assert (first.action, second.action) == ("spawned", "injected")
    assert first.thread_id == second.thread_id
    conversation = _conversation(first)
    assert conversation.channel == "web:daily"
    assert _thread(first).metadata["routine_id"] == str(routine.pk)


def test_a_channel_routine_refused_by_the_reject_policy_is_a_rejected_firing(clock: Path) -> None:
    routine = routine_make(channel="web", message="news?")
    conversation = conversation_get_or_create(user_id="alice", channel="web")
    Conversation.objects.filter(pk=conversation.pk).update(busy_policy=BusyPolicy.REJECT)

    services.routines_fire_due(now=T0 + minutes(1))
    services.routines_fire_due(now=T0 + minutes(2))

    first, second = RoutineFiring.objects.filter(routine=routine).order_by("slot")
    assert (first.state, second.state) == (FiringState.FIRED, FiringState.REJECTED)
    assert second.detail.startswith("message_rejected:")
    assert second.thread_id is None
    routine.refresh_from_db()
    assert routine.next_fire_at == T0 + minutes(3)


def test_each_firing_emits_routine_fired_in_its_transaction(clock: Path) -> None:
    routine = routine_make(channel="web", message="news?")
    conversation = conversation_get_or_create(user_id="alice", channel="web")
    Conversation.objects.filter(pk=conversation.pk).update(busy_policy=BusyPolicy.REJECT)
    webhook = Webhook.objects.create(
        user_id="alice", url="http://127.0.0.1:9/hook", events=["routine.fired"], secret="whsec_x"
    )

    services.routines_fire_due(now=T0 + minutes(2))

    deliveries = WebhookDelivery.objects.filter(webhook=webhook).order_by("created_at")
    data = [delivery.payload["data"] for delivery in deliveries]
    fired, rejected = sorted(data, key=lambda item: item["slot"])
    first = RoutineFiring.objects.get(routine=routine, state=FiringState.FIRED)
    assert fired == {
        "routine_id": str(routine.pk),
        "routine_name": "summary",
        "firing_id": first.pk,
        "slot": "2026-06-01T09:01:00+00:00",
        "state": "fired",
        "action": "spawned",
        "conversation_id": str(first.conversation_id),
        "thread_id": str(first.thread_id),
    }
    assert rejected["state"] == "rejected"
    assert rejected["thread_id"] is None


def test_one_tenants_failing_routine_does_not_stop_the_others(clock: Path) -> None:
    broken = routine_make("alice")
    healthy = routine_make("bob")
    # An expression that slipped past validation (written by hand): croniter cannot read it.
    Routine.objects.filter(pk=broken.pk).update(cron="not a schedule")

    result = services.routines_fire_due(now=T0 + minutes(1))

    assert result.failed == 1
    assert _firings(healthy) == [("09:01", "fired")]
    # Its slot is given up, and so is the routine until its schedule is fixed: it is not tried
    # again at every tick, ahead of every other routine.
    assert _firings(broken) == [("09:01", "failed")]
    broken.refresh_from_db()
    assert (broken.enabled, broken.next_fire_at) == (False, None)
    firing = broken.firings.get()
    assert "disabled, its schedule cannot be read" in firing.detail
    assert services.routines_fire_due(now=T0 + minutes(2)).failed == 0


def test_a_disabled_routine_does_not_fire_and_re_enabling_skips_missed_slots(clock: Path) -> None:
    routine = routine_make()
    services.routine_update(user_id="alice", routine_id=routine.pk, enabled=False)
    services.routines_fire_due(now=T0 + minutes(5))
    clock_set(clock, T0 + minutes(5.5))
    enabled = services.routine_update(user_id="alice", routine_id=routine.pk, enabled=True)

    assert _firings(routine) == []
    assert enabled.next_fire_at == T0 + minutes(6)


def _firings_counted(state: str) -> float:
    return REGISTRY.get_sample_value("ironclaw_routine_firings_total", {"state": state}) or 0.0


def test_firings_are_counted_by_state_once_committed(
    clock: Path, settings: SettingsWrapper, django_capture_on_commit_callbacks: Any
) -> None:
    settings.ROUTINE_CATCH_UP_MINUTES = 1
    routine_make()
    fired, skipped = _firings_counted("fired"), _firings_counted("skipped")

    with django_capture_on_commit_callbacks(execute=False) as pending:
        services.routines_fire_due(now=T0 + minutes(5))
    uncommitted = _firings_counted("fired") - fired
    for callback in pending:
        callback()

    # 09:01-09:03 skipped (one firing), 09:04 and 09:05 fired.
    assert uncommitted == 0
    assert _firings_counted("fired") - fired == 2
    assert _firings_counted("skipped") - skipped == 1

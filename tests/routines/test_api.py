"""The routines API: create, list, read, change, delete, and a routine's firings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from pytest_django.fixtures import Settings as SettingsWrapper
from rest_framework.test import APIClient

from routines import services
from routines.models import Routine, RoutineFiring
from tests.routines.helpers import T0, clock_set, minutes, routine_make

pytestmark = pytest.mark.django_db

ROUTINES = "/api/v1/routines"


@pytest.fixture
def alice(tenant_client: Callable[[str], APIClient], clock: Path) -> APIClient:
    return tenant_client("alice")


def _create(client: APIClient, **fields: Any) -> Any:
    body = {"name": "daily", "cron": "0 9 * * *", "message": "summarise", **fields}
    return client.post(ROUTINES, body, format="json")


def test_create_answers_the_routine_with_its_next_slot(alice: APIClient) -> None:
    response = _create(alice, timezone="Europe/Berlin", channel="web", scope="news")

    assert response.status_code == 201
    body = response.json()
    assert set(body) == {
        "id", "name", "cron", "timezone", "target", "channel", "scope", "message", "enabled",
        "next_fire_at", "last_fire_at", "created_at", "updated_at",
    }  # fmt: skip
    assert body["target"] == "channel"
    # 09:00 in Berlin in June is 07:00Z; the clock says 09:00Z on 06-01, so the next is 06-02.
    assert body["next_fire_at"] == "2026-06-02T07:00:00Z"
    assert body["last_fire_at"] is None
    assert Routine.objects.get(pk=body["id"]).user_id == "alice"


def test_a_routine_without_a_channel_targets_a_goal(alice: APIClient) -> None:
    body = _create(alice, channel=None).json()

    assert (body["target"], body["channel"], body["scope"]) == ("goal", "", "")


def test_create_with_an_idempotency_key_creates_once(alice: APIClient) -> None:
    body = {"name": "daily", "cron": "@daily", "message": "m"}
    first = alice.post(ROUTINES, body, format="json", headers={"Idempotency-Key": "k-1"})
    again = alice.post(ROUTINES, body, format="json", headers={"Idempotency-Key": "k-1"})

    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert Routine.objects.count() == 1


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"cron": "* * * * * *"}, "cron"),
        ({"cron": "99 * * * *"}, "cron"),
        ({"cron": 5}, "cron"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"channel": "no spaces"}, "channel"),
        ({"scope": "tab"}, "scope"),
        ({"message": "   "}, "message"),
        ({"message": "x" * 70_000}, "message"),
        ({"name": ""}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"enabled": "yes"}, "enabled"),
    ],
)
def test_create_refuses_invalid_fields_naming_them(
    alice: APIClient, fields: dict[str, Any], field: str
) -> None:
    response = _create(alice, **fields)

    assert response.status_code == 400
    assert list(response.json()["error"]["details"]) == [field]
    assert Routine.objects.count() == 0


def test_sub_minute_cron_says_why(alice: APIClient) -> None:
    response = _create(alice, cron="*/10 * * * * *")

    assert "finer than a minute" in response.json()["error"]["details"]["cron"][0]


def test_a_taken_name_is_a_400_naming_name(alice: APIClient) -> None:
    _create(alice)

    response = _create(alice)

    assert response.status_code == 400
    assert "taken" in response.json()["error"]["details"]["name"][0]


def test_another_tenant_may_use_the_same_name(
    alice: APIClient, tenant_client: Callable[[str], APIClient]
) -> None:
    _create(alice)

    assert _create(tenant_client("bob")).status_code == 201


def test_the_tenant_limit_is_a_400_naming_cron(alice: APIClient, settings: SettingsWrapper) -> None:
    settings.ROUTINE_MAX_PER_TENANT = 2
    _create(alice, name="one")
    _create(alice, name="two")

    response = _create(alice, name="three")

    assert response.status_code == 400
    assert "ROUTINE_MAX_PER_TENANT" in response.json()["error"]["details"]["cron"][0]


def test_list_pages_newest_first_and_only_the_tenants(
    alice: APIClient, tenant_client: Callable[[str], APIClient]
) -> None:
    for n in range(3):
        _create(alice, name=f"r{n}")
    _create(tenant_client("bob"), name="bobs")

    first = alice.get(ROUTINES, {"limit": 2}).json()
    second = alice.get(first["next"]).json()

    assert [item["name"] for item in first["results"]] == ["r2", "r1"]
    assert [item["name"] for item in second["results"]] == ["r0"]
    assert second["next"] is None


def test_another_tenants_routine_is_a_404_for_every_operation(
    alice: APIClient, tenant_client: Callable[[str], APIClient]
) -> None:
    routine_id = _create(tenant_client("bob")).json()["id"]
    url = f"{ROUTINES}/{routine_id}"

    responses = [
        alice.get(url),
        alice.patch(url, {"enabled": False}, format="json"),
        alice.delete(url),
        alice.get(f"{url}/firings"),
    ]

    assert [response.status_code for response in responses] == [404] * 4
    assert Routine.objects.get(pk=routine_id).enabled


def test_patch_disables_and_re_enables_from_the_clock(alice: APIClient, clock: Path) -> None:
    url = f"{ROUTINES}/{_create(alice, cron='*/5 * * * *').json()['id']}"

    disabled = alice.patch(url, {"enabled": False}, format="json").json()
    clock_set(clock, T0 + minutes(12))
    enabled = alice.patch(url, {"enabled": True}, format="json").json()

    assert disabled["next_fire_at"] is None
    assert enabled["next_fire_at"] == "2026-06-01T09:15:00Z"


def test_patch_reschedules_when_the_cron_changes_and_validates(alice: APIClient) -> None:
    url = f"{ROUTINES}/{_create(alice).json()['id']}"

    changed = alice.patch(url, {"cron": "30 9 * * *", "channel": "web"}, format="json")
    refused = alice.patch(url, {"cron": "* * * * * *"}, format="json")
    goal = alice.patch(url, {"channel": None}, format="json")

    assert changed.json()["next_fire_at"] == "2026-06-01T09:30:00Z"
    assert changed.json()["target"] == "channel"
    assert refused.status_code == 400
    assert goal.json()["target"] == "goal"


def test_delete_removes_the_routine_and_its_firings(alice: APIClient) -> None:
    routine_id = _create(alice, cron="* * * * *").json()["id"]
    services.routines_fire_due(now=T0 + minutes(1))

    response = alice.delete(f"{ROUTINES}/{routine_id}")

    assert response.status_code == 204
    assert not Routine.objects.filter(pk=routine_id).exists()
    assert not RoutineFiring.objects.filter(routine_id=routine_id).exists()


def test_firings_list_newest_slot_first_with_their_threads(alice: APIClient) -> None:
    routine = routine_make(cron="* * * * *")
    services.routines_fire_due(now=T0 + minutes(3))
    url = f"{ROUTINES}/{routine.pk}/firings"

    page = alice.get(url, {"limit": 2}).json()
    rest = alice.get(page["next"]).json()

    assert [item["slot"] for item in page["results"] + rest["results"]] == [
        "2026-06-01T09:03:00Z",
        "2026-06-01T09:02:00Z",
        "2026-06-01T09:01:00Z",
    ]
    first = page["results"][0]
    assert set(first) == {
        "id", "slot", "state", "fired_at", "action", "conversation_id", "thread_id",
        "thread_state", "thread_outcome", "detail",
    }  # fmt: skip
    assert (first["state"], first["action"]) == ("fired", "spawned")
    assert first["thread_state"] == "created"
    assert first["thread_outcome"] is None


def test_the_firings_page_reads_its_threads_in_the_same_query(alice: APIClient) -> None:
    routine = routine_make(cron="* * * * *")
    services.routines_fire_due(now=T0 + minutes(5))
    url = f"{ROUTINES}/{routine.pk}/firings"
    alice.get(url)  # the key's last use is recorded once a minute: not in the counts below

    with CaptureQueriesContext(connection) as one:
        alice.get(url, {"limit": 1})
    with CaptureQueriesContext(connection) as five:
        page = alice.get(url, {"limit": 5}).json()

    assert len(page["results"]) == 5
    assert {item["thread_state"] for item in page["results"]} == {"created"}
    assert len(five) == len(one)

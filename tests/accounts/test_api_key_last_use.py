"""A key's last use: written by authentication at most once a minute, shown in the admin."""

from __future__ import annotations

import datetime
from collections.abc import Callable

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import ApiKey
from accounts.services import CreatedApiKey, api_key_mark_used

pytestmark = pytest.mark.django_db

MakeKey = Callable[..., CreatedApiKey]


def _client(created: CreatedApiKey) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {created.raw_key}")
    return client


def _use_writes(client: APIClient) -> list[str]:
    with CaptureQueriesContext(connection) as captured:
        response = client.get("/api/v1/me")
    assert response.status_code == 200
    return [query["sql"] for query in captured if query["sql"].lstrip().startswith("UPDATE")]


def _last_used_at(created: CreatedApiKey) -> datetime.datetime | None:
    return ApiKey.objects.get(pk=created.api_key.pk).last_used_at


@pytest.fixture
def another_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process forgets its own writes, as another web process has none of them."""
    monkeypatch.setattr("accounts.services._api_key_use_written", {})


def test_the_first_authenticated_request_records_the_keys_use(make_api_key: MakeKey) -> None:
    created = make_api_key("alice")
    before = timezone.now()

    writes = _use_writes(_client(created))

    assert len(writes) == 1
    assert "accounts_apikey" in writes[0]
    last_used_at = _last_used_at(created)
    assert last_used_at is not None
    assert last_used_at >= before - datetime.timedelta(seconds=1)


def test_requests_within_a_minute_do_not_rewrite_the_use(make_api_key: MakeKey) -> None:
    created = make_api_key("alice")
    client = _client(created)
    _use_writes(client)
    first = _last_used_at(created)

    with CaptureQueriesContext(connection) as captured:
        client.get("/api/v1/me")

    # The key's lookup and its rate limit buckets, as before the key kept its last use.
    assert len(captured) == 2
    assert _last_used_at(created) == first


def test_another_process_skips_a_use_the_row_shows_from_this_minute(
    make_api_key: MakeKey, another_process: None
) -> None:
    created = make_api_key("alice")
    recent = timezone.now() - datetime.timedelta(seconds=20)
    ApiKey.objects.filter(pk=created.api_key.pk).update(last_used_at=recent)

    writes = _use_writes(_client(created))

    assert writes == []
    assert _last_used_at(created) == recent


def test_a_use_older_than_a_minute_is_rewritten(
    make_api_key: MakeKey, another_process: None
) -> None:
    created = make_api_key("alice")
    old = timezone.now() - datetime.timedelta(minutes=5)
    ApiKey.objects.filter(pk=created.api_key.pk).update(last_used_at=old)

    writes = _use_writes(_client(created))

    assert len(writes) == 1
    last_used_at = _last_used_at(created)
    assert last_used_at is not None
    assert last_used_at > old + datetime.timedelta(minutes=4)


def test_a_write_racing_a_recent_one_keeps_it(make_api_key: MakeKey, another_process: None) -> None:
    created = make_api_key("alice")
    # Read before another process recorded a use this minute.
    stale = ApiKey.objects.get(pk=created.api_key.pk)
    recent = timezone.now() - datetime.timedelta(seconds=10)
    ApiKey.objects.filter(pk=created.api_key.pk).update(last_used_at=recent)

    issued = api_key_mark_used(api_key=stale)

    assert issued is True
    assert _last_used_at(created) == recent


def test_the_admin_shows_when_each_key_was_last_used(
    admin_client: Client, make_api_key: MakeKey
) -> None:
    used = make_api_key("alice", name="bridge")
    make_api_key("bob", name="idle")
    used_at = timezone.now() - datetime.timedelta(hours=2)
    ApiKey.objects.filter(pk=used.api_key.pk).update(last_used_at=used_at)
    shown = timezone.localtime(used_at).strftime("%Y-%m-%d %H:%M:%S")

    listing = admin_client.get("/admin/accounts/apikey/").content.decode()
    page = admin_client.get(f"/admin/accounts/apikey/{used.api_key.pk}/change/").content.decode()

    assert '<th scope="col" class="sortable column-last_used">' in listing
    assert f'<td class="field-last_used nowrap">{shown}</td>' in listing
    assert '<td class="field-last_used">never</td>' in listing
    assert shown in page

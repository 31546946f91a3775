"""POST threads/{id}/deltas: an external engine's token deltas, published under its lease."""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from conversations.models import Thread
from conversations.services import message_handle, thread_claim, thread_leases_sweep
from engine.deltas import MAX_PAYLOAD_BYTES
from tests.support.deltas import applied, deltas_listener

Tenant = Callable[[str], APIClient]
MIXED = 'é中😀 "q" \\ \n '


def _post(client: APIClient, thread_id: object, body: dict[str, object]) -> Any:
    return client.post(f"/api/v1/threads/{thread_id}/deltas", body, format="json")


def _claimed(client: APIClient, content: str = "go") -> tuple[Any, dict[str, object]]:
    sent = message_handle(user_id="alice", channel="web", content=content)
    claimed = client.post(
        f"/api/v1/threads/{sent.thread_id}/claim", {"worker_id": "e1"}, format="json"
    ).json()
    return sent, {"worker_id": "e1", "lease_epoch": claimed["claim_count"]}


@pytest.mark.django_db(transaction=True)
def test_a_delta_is_published_under_the_lease_and_lease_lost_after_a_takeover(
    tenant_client: Tenant,
) -> None:
    alice = tenant_client("alice")
    sent, mine = _claimed(alice)
    text = (MIXED * 6000)[:40_000]

    with deltas_listener() as listener:
        first = _post(alice, sent.thread_id, {**mine, "step": 1, "text": "Hel"})
        more = _post(alice, sent.thread_id, {**mine, "step": 1, "text": "lo!", "offset": 3})
        large = _post(alice, sent.thread_id, {**mine, "step": 2, "text": text})
        received = listener.wait_for(lambda got: len(got) == 2 + large.json()["published"])
        Thread.objects.filter(pk=sent.thread_id).update(
            lease_expires_at=timezone.now() - datetime.timedelta(seconds=1)
        )
        thread_leases_sweep()
        thread_claim(user_id="alice", thread_id=sent.thread_id, worker_id="e1")
        stale = _post(alice, sent.thread_id, {**mine, "step": 1, "text": "stale"})
        received = listener.settle()

    assert (first.status_code, first.json()) == (202, {"published": 1})
    assert (more.status_code, more.json()) == (202, {"published": 1})
    assert large.status_code == 202
    assert large.json()["published"] >= 40_000 * 1.5 // MAX_PAYLOAD_BYTES
    assert all(len(d.payload.encode()) <= MAX_PAYLOAD_BYTES for d in received)
    assert {(d.conversation_id, d.thread_id) for d in received} == {
        (str(sent.conversation_id), str(sent.thread_id))
    }
    assert applied(received) == {(str(sent.thread_id), 1): "Hello!", (str(sent.thread_id), 2): text}
    assert stale.status_code == 409
    assert stale.json()["error"]["code"] == "lease_lost"
    assert len(received) == 2 + large.json()["published"]


@pytest.mark.django_db
def test_another_tenants_thread_is_a_404_another_worker_lease_lost(tenant_client: Tenant) -> None:
    alice = tenant_client("alice")
    sent, mine = _claimed(alice)

    foreign = _post(tenant_client("bob"), sent.thread_id, {**mine, "step": 1, "text": "x"})
    not_mine = _post(alice, sent.thread_id, {**mine, "worker_id": "e2", "step": 1, "text": "x"})

    assert foreign.status_code == 404
    assert not_mine.status_code == 409
    assert not_mine.json()["error"]["code"] == "lease_lost"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("text", {"text": "é" * (32 * 1024 + 1)}),
        ("text", {"text": None}),
        ("offset", {"offset": -1}),
        ("step", {"step": -1}),
        ("step", {"step": None}),
        ("lease_epoch", {"lease_epoch": None}),
        ("worker_id", {"worker_id": None}),
    ],
)
def test_an_invalid_field_is_a_400_naming_it(
    tenant_client: Tenant, field: str, change: dict[str, object]
) -> None:
    alice = tenant_client("alice")
    sent, mine = _claimed(alice)
    body = {**mine, "step": 1, "text": "x", **change}

    response = _post(alice, sent.thread_id, {k: v for k, v in body.items() if v is not None})

    assert response.status_code == 400
    assert field in response.json()["error"]["details"]


@pytest.mark.django_db
def test_64_kib_of_text_is_accepted(tenant_client: Tenant) -> None:
    alice = tenant_client("alice")
    sent, mine = _claimed(alice)

    response = _post(alice, sent.thread_id, {**mine, "step": 0, "text": "é" * (32 * 1024)})

    assert response.status_code == 202
    assert response.json()["published"] == 9


@pytest.mark.django_db
def test_a_delta_is_two_statements_after_authentication(tenant_client: Tenant) -> None:
    alice = tenant_client("alice")
    sent, mine = _claimed(alice)
    _post(alice, sent.thread_id, {**mine, "step": 1, "text": "warm"})

    with CaptureQueriesContext(connection) as one:
        small = _post(alice, sent.thread_id, {**mine, "step": 1, "text": "small"})
    with CaptureQueriesContext(connection) as split:
        large = _post(alice, sent.thread_id, {**mine, "step": 1, "text": "z" * 60_000})

    assert (small.status_code, large.status_code) == (202, 202)
    assert large.json()["published"] == 8
    for statements in (one, split):
        sql = [query["sql"] for query in statements.captured_queries]
        # Every API request's own: the key's lookup and its rate limit buckets.
        authentication, delta = sql[:-2], sql[-2:]
        assert len(authentication) == 2, json.dumps(sql, indent=1)
        assert "accounts_apikey" in authentication[0]
        assert "accounts_ratelimitbucket" in authentication[1]
        assert "FROM conversations_thread" in delta[0]
        assert "pg_notify" in delta[1]


@pytest.mark.django_db(transaction=True)
@override_settings(ENGINE_DELTA_INTERVAL_MS=0)
def test_with_deltas_off_nothing_is_published_but_the_lease_is_checked(
    tenant_client: Tenant,
) -> None:
    alice = tenant_client("alice")
    sent, mine = _claimed(alice)

    with deltas_listener() as listener:
        published = _post(alice, sent.thread_id, {**mine, "step": 1, "text": "x"})
        refused = _post(alice, sent.thread_id, {**mine, "lease_epoch": 99, "step": 1, "text": "x"})
        received = listener.settle()

    assert (published.status_code, published.json()) == (202, {"published": 0})
    assert refused.status_code == 409
    assert received == []

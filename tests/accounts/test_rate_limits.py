"""API rate limits: token buckets in PostgreSQL, per key and per tenant."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db.models import F
from django.test import Client, override_settings
from rest_framework.test import APIClient

from accounts.models import RateLimitBucket
from accounts.services import CreatedApiKey, rate_limit_buckets_purge

pytestmark = pytest.mark.django_db


def _client(key: CreatedApiKey, user_id: str | None = None) -> APIClient:
    client = APIClient()
    tenant = {} if user_id is None else {"HTTP_X_USER_ID": user_id}
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key.raw_key}", **tenant)
    return client


def _statuses(client: APIClient, count: int) -> list[int]:
    return [client.get("/api/v1/me").status_code for _ in range(count)]


@override_settings(RATE_LIMIT_PER_MINUTE=3, RATE_LIMIT_TENANT_PER_MINUTE=0)
def test_a_key_over_its_limit_gets_429_rate_limited_with_retry_after(
    tenant_client: Callable[[str], APIClient],
) -> None:
    alice = tenant_client("alice")

    statuses = _statuses(alice, 3)
    refused = alice.get("/api/v1/me")

    assert statuses == [200, 200, 200]
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "rate_limited"
    assert error["details"]["scope"] == "key"
    assert error["details"]["per_minute"] == 3
    # An empty bucket of 3 a minute holds a whole token again within 20 s.
    assert 1 <= int(refused["Retry-After"]) <= 20
    assert refused["Retry-After"] == str(error["details"]["retry_after"])


@override_settings(RATE_LIMIT_PER_MINUTE=3, RATE_LIMIT_TENANT_PER_MINUTE=0)
def test_an_empty_bucket_refills_with_time(
    tenant_client: Callable[[str], APIClient],
) -> None:
    alice = tenant_client("alice")
    _statuses(alice, 5)
    # Twenty seconds pass (of the database's clock, which every process shares): one token back.
    RateLimitBucket.objects.update(refilled_at=F("refilled_at") - timedelta(seconds=20))

    statuses = _statuses(alice, 2)

    assert statuses == [200, 429]


@override_settings(RATE_LIMIT_PER_MINUTE=100, RATE_LIMIT_TENANT_PER_MINUTE=4)
def test_the_tenant_limit_spans_all_the_tenants_keys(
    make_api_key: Callable[..., CreatedApiKey],
) -> None:
    laptop, phone = _client(make_api_key("alice")), _client(make_api_key("alice"))
    service = make_api_key(service=True)
    bob = _client(make_api_key("bob"))

    statuses = _statuses(laptop, 2) + _statuses(phone, 2) + _statuses(_client(service, "alice"), 1)
    refused = phone.get("/api/v1/me")

    assert statuses == [200, 200, 200, 200, 429]
    assert refused.json()["error"]["details"]["scope"] == "tenant"
    assert _statuses(bob, 1) == [200]
    assert _statuses(_client(service, "carol"), 1) == [200]


@override_settings(RATE_LIMIT_PER_MINUTE=2, RATE_LIMIT_TENANT_PER_MINUTE=3)
def test_a_key_over_its_own_limit_does_not_spend_its_tenants_budget(
    make_api_key: Callable[..., CreatedApiKey],
) -> None:
    runaway, phone = _client(make_api_key("alice")), _client(make_api_key("alice"))

    from_runaway = _statuses(runaway, 6)
    from_phone = _statuses(phone, 2)

    assert from_runaway == [200, 200, 429, 429, 429, 429]
    assert from_phone == [200, 429]


@override_settings(RATE_LIMIT_PER_MINUTE=3, RATE_LIMIT_TENANT_PER_MINUTE=0)
def test_a_service_key_has_one_bucket_per_tenant_so_one_tenant_cannot_starve_another(
    make_api_key: Callable[..., CreatedApiKey],
) -> None:
    bridge = make_api_key(service=True)

    for_alice = _statuses(_client(bridge, "alice"), 4)
    for_bob = _statuses(_client(bridge, "bob"), 3)

    assert for_alice == [200, 200, 200, 429]
    assert for_bob == [200, 200, 200]
    assert set(RateLimitBucket.objects.values_list("bucket", flat=True)) == {
        f"key:{bridge.api_key.pk}:alice",
        f"key:{bridge.api_key.pk}:bob",
    }


@override_settings(RATE_LIMIT_PER_MINUTE=600, RATE_LIMIT_TENANT_PER_MINUTE=1200)
def test_the_rate_limit_costs_one_statement_per_request(
    tenant_client: Callable[[str], APIClient], django_assert_num_queries: Any
) -> None:
    alice = tenant_client("alice")
    alice.get("/api/v1/me")

    with django_assert_num_queries(2) as queries:  # the API key lookup + both buckets at once
        alice.get("/api/v1/me")

    assert "accounts_ratelimitbucket" in queries.captured_queries[1]["sql"]
    assert RateLimitBucket.objects.count() == 2


@override_settings(RATE_LIMIT_PER_MINUTE=0, RATE_LIMIT_TENANT_PER_MINUTE=0)
def test_zero_turns_the_limits_off_at_no_cost(
    tenant_client: Callable[[str], APIClient], django_assert_num_queries: Any
) -> None:
    alice = tenant_client("alice")
    alice.get("/api/v1/me")  # the key's first use is recorded; the next minute's are not

    with django_assert_num_queries(1):  # the API key lookup alone
        statuses = _statuses(alice, 1)

    assert statuses == [200]
    assert not RateLimitBucket.objects.exists()


@override_settings(RATE_LIMIT_PER_MINUTE=1, RATE_LIMIT_TENANT_PER_MINUTE=1)
def test_probes_docs_schema_and_admin_are_not_rate_limited(
    client: Client, tenant_client: Callable[[str], APIClient]
) -> None:
    alice = tenant_client("alice")
    urls = ["/healthz", "/readyz", "/api/docs/", "/api/schema/", "/admin/login/"]

    statuses = [alice.get(url).status_code for url in urls for _ in range(3)]
    statuses += [client.get(url).status_code for url in urls for _ in range(3)]

    assert set(statuses) == {200}
    assert not RateLimitBucket.objects.exists()


def test_purge_deletes_only_buckets_idle_long_enough_to_be_full_again(
    tenant_client: Callable[[str], APIClient],
) -> None:
    tenant_client("alice").get("/api/v1/me")
    tenant_client("bob").get("/api/v1/me")
    RateLimitBucket.objects.filter(bucket="tenant:alice").update(
        refilled_at=F("refilled_at") - timedelta(seconds=61)
    )

    deleted = rate_limit_buckets_purge()

    assert deleted == 1
    assert not RateLimitBucket.objects.filter(bucket="tenant:alice").exists()
    assert RateLimitBucket.objects.filter(bucket="tenant:bob").exists()


def test_the_purge_runs_every_few_minutes_on_the_default_queue() -> None:
    from procrastinate.contrib.django import app

    from accounts.tasks import purge_rate_limit_buckets

    periodic = [
        task
        for task in app.periodic_registry.periodic_tasks.values()
        if task.task.name == purge_rate_limit_buckets.name
    ]

    assert purge_rate_limit_buckets.queue == "default"
    assert [task.cron for task in periodic] == ["*/5 * * * *"]


def test_the_schema_documents_429_with_retry_after_on_every_keyed_operation(
    client: Client,
) -> None:
    schema = client.get("/api/schema/", {"format": "json"}).json()

    operations = [op for ops in schema["paths"].values() for op in ops.values()]
    assert operations
    for operation in operations:
        assert "Retry-After" in operation["responses"]["429"]["headers"]

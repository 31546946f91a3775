"""The webhooks API: validation that names the field, the secret shown once, tenant scoping,
deliveries with their attempts, redelivery, and the series /metrics shows."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.test import Client
from pytest_django.fixtures import Settings as SettingsWrapper
from rest_framework.test import APIClient

from tests.support.metrics import metric_sample
from tests.webhooks.factories import WebhookFactory
from tests.webhooks.helpers import delivery_emitted, delivery_jobs
from tests.webhooks.receiver import Answer, receiver_running
from webhooks.models import Webhook, WebhookAttempt, WebhookDelivery
from webhooks.services import webhook_delivery_attempt

pytestmark = pytest.mark.django_db

HOOK = {"url": "https://hooks.example.com/in", "events": ["thread.completed"]}


@pytest.fixture
def alice(tenant_client: Callable[[str], APIClient]) -> APIClient:
    return tenant_client("alice")


def test_create_returns_the_secret_once(alice: APIClient) -> None:
    created = alice.post("/api/v1/webhooks", {**HOOK, "description": "ci"}, format="json")

    assert created.status_code == 201
    body = created.json()
    assert body["secret"].startswith("whsec_")
    assert body["url"] == HOOK["url"]
    assert body["events"] == ["thread.completed"]
    assert body["enabled"] is True
    assert body["consecutive_failures"] == 0
    assert Webhook.objects.get(user_id="alice", pk=body["id"]).secret == body["secret"]
    shown = alice.get(f"/api/v1/webhooks/{body['id']}").json()
    listed = alice.get("/api/v1/webhooks").json()["results"]
    assert "secret" not in shown
    assert [("secret" in item, item["id"]) for item in listed] == [(False, body["id"])]


def test_create_with_an_idempotency_key_creates_one_webhook(alice: APIClient) -> None:
    first = alice.post("/api/v1/webhooks", HOOK, format="json", HTTP_IDEMPOTENCY_KEY="k1")
    again = alice.post("/api/v1/webhooks", HOOK, format="json", HTTP_IDEMPOTENCY_KEY="k1")

    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    assert Webhook.objects.filter(user_id="alice").count() == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**HOOK, "url": "ftp://hooks.example.com/"}, "url"),
        ({**HOOK, "url": "https:///path"}, "url"),
        ({**HOOK, "url": "https://user:pw@hooks.example.com/"}, "url"),
        ({**HOOK, "url": "https://hooks.example.com/" + "a" * 2048}, "url"),
        ({**HOOK, "url": "http://127.0.0.1:8080/"}, "url"),
        ({**HOOK, "url": "http://[::1]/"}, "url"),
        ({**HOOK, "url": "http://10.1.2.3/"}, "url"),
        ({**HOOK, "url": "http://localhost/"}, "url"),
        ({**HOOK, "url": "http://hooks.example.com:99999/"}, "url"),
        ({**HOOK, "url": "https://hooks.example.com/ü"}, "url"),
        ({**HOOK, "url": "https://bücher.example/hook"}, "url"),
        ({**HOOK, "url": "https://hooks.example.com/\x07"}, "url"),
        ({**HOOK, "url": 5}, "url"),
        ({"events": ["thread.completed"]}, "url"),
        ({**HOOK, "events": []}, "events"),
        ({**HOOK, "events": ["thread.exploded"]}, "events"),
        ({**HOOK, "events": ["entry.created", "entry.created"]}, "events"),
        ({**HOOK, "events": "thread.completed"}, "events"),
        ({**HOOK, "description": 7}, "description"),
    ],
)
def test_create_refuses_a_bad_field_naming_it(
    alice: APIClient, body: dict[str, object], field: str
) -> None:
    response = alice.post("/api/v1/webhooks", body, format="json")

    assert response.status_code == 400
    assert list(response.json()["error"]["details"]) == [field]
    assert not Webhook.objects.filter(user_id="alice").exists()


def test_private_urls_are_accepted_when_allowed(
    alice: APIClient, settings: SettingsWrapper
) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = True

    response = alice.post(
        "/api/v1/webhooks", {**HOOK, "url": "http://127.0.0.1:8080/"}, format="json"
    )

    assert response.status_code == 201


def test_one_webhook_past_the_tenant_limit_is_refused_naming_url(
    alice: APIClient, settings: SettingsWrapper
) -> None:
    settings.WEBHOOK_MAX_PER_TENANT = 2
    WebhookFactory.create_batch(2)
    WebhookFactory.create(user_id="bob")

    response = alice.post("/api/v1/webhooks", HOOK, format="json")

    assert response.status_code == 400
    assert "WEBHOOK_MAX_PER_TENANT" in response.json()["error"]["details"]["url"][0]


def test_another_tenants_webhook_and_deliveries_are_not_found(
    tenant_client: Callable[[str], APIClient],
) -> None:
    webhook = WebhookFactory.create(user_id="bob")
    delivery = delivery_emitted(user_id="bob")
    alice = tenant_client("alice")
    base = f"/api/v1/webhooks/{webhook.pk}"

    answers = [
        alice.get(base),
        alice.patch(base, {"enabled": False}, format="json"),
        alice.delete(base),
        alice.get(f"{base}/deliveries"),
        alice.get(f"{base}/deliveries/{delivery.pk}"),
        alice.post(f"{base}/deliveries/{delivery.pk}/redeliver"),
    ]

    assert [answer.status_code for answer in answers] == [404] * 6
    assert Webhook.objects.get(user_id="bob", pk=webhook.pk).enabled is True


def test_patch_changes_fields_and_enabling_resets_the_failures(alice: APIClient) -> None:
    webhook = WebhookFactory.create(
        enabled=False, consecutive_failures=10, disabled_reason="10 deliveries failed in a row"
    )

    changed = alice.patch(
        f"/api/v1/webhooks/{webhook.pk}",
        {"enabled": True, "events": ["entry.created", "routine.fired"], "description": "new"},
        format="json",
    )

    assert changed.status_code == 200
    body = changed.json()
    assert (body["enabled"], body["consecutive_failures"], body["disabled_reason"]) == (True, 0, "")
    assert body["events"] == ["entry.created", "routine.fired"]
    assert body["description"] == "new"
    refused = alice.patch(f"/api/v1/webhooks/{webhook.pk}", {"enabled": "yes"}, format="json")
    assert list(refused.json()["error"]["details"]) == ["enabled"]


def test_delete_removes_the_webhook_with_its_deliveries_and_attempts(alice: APIClient) -> None:
    webhook = WebhookFactory.create()
    delivery = delivery_emitted()
    WebhookAttempt.objects.create(
        user_id="alice",
        delivery=delivery,
        number=1,
        started_at=delivery.created_at,
        result="timeout",
    )

    response = alice.delete(f"/api/v1/webhooks/{webhook.pk}")

    assert response.status_code == 204
    assert not Webhook.objects.filter(user_id="alice").exists()
    assert not WebhookDelivery.objects.filter(user_id="alice").exists()
    assert not WebhookAttempt.objects.filter(user_id="alice").exists()
    assert alice.delete(f"/api/v1/webhooks/{webhook.pk}").status_code == 404


def test_deliveries_are_listed_newest_first_and_read_with_their_attempts(
    alice: APIClient, settings: SettingsWrapper
) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = True
    # The retry after the 502 is due at once, and the receiver's pause over.
    settings.WEBHOOK_RETRY_BASE_SECONDS = 0.0001
    with receiver_running([Answer(502)]) as receiver:
        webhook = WebhookFactory.create(url=receiver.url())
        older, newer = delivery_emitted(), delivery_emitted()
        webhook_delivery_attempt(delivery_id=older.pk)
        webhook_delivery_attempt(delivery_id=older.pk)
    base = f"/api/v1/webhooks/{webhook.pk}/deliveries"

    page = alice.get(base, {"limit": 1}).json()
    detail = alice.get(f"{base}/{older.pk}").json()

    assert [item["id"] for item in page["results"]] == [str(newer.pk)]
    assert page["next"] is not None
    assert [item["id"] for item in alice.get(page["next"]).json()["results"]] == [str(older.pk)]
    assert detail["state"] == "delivered"
    assert detail["attempt_count"] == 2
    assert detail["payload"]["type"] == "thread.completed"
    assert [
        (attempt["number"], attempt["result"], attempt["status_code"])
        for attempt in detail["attempts"]
    ] == [(1, "http_error", 502), (2, "success", 200)]


def test_redeliver_requeues_an_ended_delivery_and_refuses_a_pending_one(
    alice: APIClient,
) -> None:
    webhook = WebhookFactory.create()
    delivery = delivery_emitted()
    base = f"/api/v1/webhooks/{webhook.pk}/deliveries/{delivery.pk}"
    pending = alice.post(f"{base}/redeliver")
    WebhookDelivery.objects.filter(pk=delivery.pk).update(state="failed", attempts=4)

    redelivered = alice.post(f"{base}/redeliver")

    assert pending.status_code == 409
    assert pending.json()["error"]["code"] == "delivery_pending"
    assert "already pending, next attempt at" in pending.json()["error"]["message"]
    assert redelivered.status_code == 202
    assert (redelivered.json()["state"], redelivered.json()["attempts"]) == ("pending", 4)
    delivery.refresh_from_db()
    assert delivery.retries_from == delivery.next_attempt_at
    assert delivery.retries_from is not None
    jobs = delivery_jobs(delivery.pk)
    assert [job["queueing_lock"] for job in jobs] == [None, f"webhook-delivery-{delivery.pk}"]


def test_metrics_show_attempts_deliveries_and_latency(
    client: Client, settings: SettingsWrapper, django_capture_on_commit_callbacks: Callable
) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = True
    with receiver_running() as receiver:
        WebhookFactory.create(url=receiver.url())
        delivery = delivery_emitted()
        before = client.get("/metrics", REMOTE_ADDR="127.0.0.1").content.decode()
        with django_capture_on_commit_callbacks(execute=True):
            webhook_delivery_attempt(delivery_id=delivery.pk)

    text = client.get("/metrics", REMOTE_ADDR="127.0.0.1").content.decode()

    def grew(name: str, **labels: str) -> float:
        try:
            earlier = metric_sample(before, name, **labels)
        except AssertionError:
            # A labelled series appears with its first sample.
            earlier = 0
        return metric_sample(text, name, **labels) - earlier

    assert grew("ironclaw_webhook_attempts_total", result="success") == 1
    assert grew("ironclaw_webhook_deliveries_total", result="delivered") == 1
    assert grew("ironclaw_webhook_delivery_latency_seconds_count") == 1

"""The webhooks admin: lists without secrets, deliveries with their attempts, and the actions
that go through the services."""

from __future__ import annotations

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.test import Client

from tests.webhooks.factories import WebhookFactory
from tests.webhooks.helpers import delivery_emitted, delivery_jobs
from webhooks.models import Webhook, WebhookAttempt, WebhookDelivery

pytestmark = pytest.mark.django_db


def test_webhook_pages_never_show_the_secret(admin_client: Client) -> None:
    webhook = WebhookFactory.create(
        enabled=False, consecutive_failures=4, disabled_reason="4 deliveries failed in a row"
    )

    listing = admin_client.get("/admin/webhooks/webhook/").content.decode()
    page = admin_client.get(f"/admin/webhooks/webhook/{webhook.pk}/change/").content.decode()

    assert webhook.url in listing
    assert "4 deliveries failed in a row" in listing
    assert webhook.url in page
    assert webhook.secret not in listing
    assert webhook.secret not in page


def test_enable_action_resets_the_failures_and_is_logged(admin_client: Client) -> None:
    webhook = WebhookFactory.create(
        enabled=False, consecutive_failures=4, disabled_reason="4 deliveries failed in a row"
    )

    response = admin_client.post(
        "/admin/webhooks/webhook/", {"action": "enable", "_selected_action": [webhook.pk]}
    )

    assert response.status_code == 302
    webhook.refresh_from_db()
    assert (webhook.enabled, webhook.consecutive_failures, webhook.disabled_reason) == (True, 0, "")
    assert LogEntry.objects.get(object_id=str(webhook.pk), action_flag=CHANGE).change_message == (
        "Enabled"
    )


def test_delivery_page_lists_its_attempts_and_redeliver_requeues_it(admin_client: Client) -> None:
    WebhookFactory.create()
    delivery = delivery_emitted()
    WebhookAttempt.objects.create(
        user_id="alice",
        delivery=delivery,
        number=1,
        started_at=delivery.created_at,
        result="http_error",
        status_code=418,
        error="the receiver answered 418",
    )
    WebhookDelivery.objects.filter(pk=delivery.pk).update(state="failed", attempts=1)

    listing = admin_client.get("/admin/webhooks/webhookdelivery/").content.decode()
    page = admin_client.get(f"/admin/webhooks/webhookdelivery/{delivery.pk}/change/")
    redelivered = admin_client.post(
        "/admin/webhooks/webhookdelivery/",
        {"action": "redeliver", "_selected_action": [delivery.pk]},
        follow=True,
    )

    assert str(delivery.pk)[:8] in listing
    assert "the receiver answered 418" in page.content.decode()
    assert "Redelivering 1 delivery(ies) now." in redelivered.content.decode()
    assert WebhookDelivery.objects.get(pk=delivery.pk).state == "pending"
    assert len(delivery_jobs(delivery.pk)) == 2
    assert Webhook.objects.filter(user_id="alice").count() == 1

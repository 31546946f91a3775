"""A failing receiver is paused, not hammered: after an attempt that failed for the receiver's
own reasons (5xx, timeouts, connection errors), every delivery of its webhook waits for the same
backoff, so a backlog costs one probe per wait instead of one attempt per event."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from pytest_django.fixtures import Settings as SettingsWrapper

from tests.webhooks.factories import WebhookFactory
from tests.webhooks.helpers import delivery_emitted, delivery_jobs
from tests.webhooks.receiver import Answer, receiver_running
from webhooks.models import Webhook, WebhookAttempt, WebhookDelivery
from webhooks.services import DeliveryOutcome, webhook_delivery_attempt, webhook_update

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _loopback_allowed(settings: SettingsWrapper) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = True
    settings.WEBHOOK_RETRY_BASE_SECONDS = 60
    settings.WEBHOOK_TIMEOUT_SECONDS = 5


def test_a_backlog_for_a_failing_receiver_waits_for_one_probe() -> None:
    with receiver_running(default=Answer(503)) as receiver:
        webhook = WebhookFactory.create(url=receiver.url())
        deliveries = [delivery_emitted() for _ in range(5)]

        outcomes = [webhook_delivery_attempt(delivery_id=item.pk) for item in deliveries]

    assert outcomes == [DeliveryOutcome.RETRYING] * 5
    assert len(receiver.requests) == 1
    webhook.refresh_from_db()
    assert webhook.failing_attempts == 1
    assert webhook.paused_until is not None
    assert timezone.now() + timedelta(seconds=29) < webhook.paused_until
    waiting = WebhookDelivery.objects.filter(user_id="alice", pk__in=[d.pk for d in deliveries[1:]])
    for delivery in waiting:
        assert delivery.attempts == 0
        assert delivery.next_attempt_at is not None
        assert delivery.next_attempt_at >= webhook.paused_until
        # Each waits with a job of its own, scheduled for the end of the pause.
        assert [job["status"] for job in delivery_jobs(delivery.pk)] == ["todo", "todo"]
    assert WebhookAttempt.objects.filter(user_id="alice").count() == 1


def test_the_first_attempt_after_the_pause_probes_and_a_success_ends_it() -> None:
    with receiver_running([Answer(500)]) as receiver:
        webhook = WebhookFactory.create(url=receiver.url())
        first, second = delivery_emitted(), delivery_emitted()
        webhook_delivery_attempt(delivery_id=first.pk)
        # The pause is over.
        Webhook.objects.filter(pk=webhook.pk).update(paused_until=timezone.now())

        outcome = webhook_delivery_attempt(delivery_id=second.pk)

    assert outcome == DeliveryOutcome.DELIVERED
    assert len(receiver.requests) == 2
    webhook.refresh_from_db()
    assert (webhook.failing_attempts, webhook.paused_until) == (0, None)


def test_failures_in_a_row_double_the_pause() -> None:
    with receiver_running(default=Answer(500)) as receiver:
        webhook = WebhookFactory.create(url=receiver.url())
        pauses = []
        for _ in range(3):
            webhook_delivery_attempt(delivery_id=delivery_emitted().pk)
            webhook.refresh_from_db()
            assert webhook.paused_until is not None
            pauses.append((webhook.paused_until - timezone.now()).total_seconds())
            Webhook.objects.filter(pk=webhook.pk).update(paused_until=timezone.now())

    assert webhook.failing_attempts == 3
    # 60, 120, 240 s, each 50-100 % of it.
    assert 29 < pauses[0] <= 60
    assert 59 < pauses[1] <= 120
    assert 119 < pauses[2] <= 240


def test_a_delivery_whose_window_ends_during_the_pause_fails_unsent(
    settings: SettingsWrapper,
) -> None:
    with receiver_running(default=Answer(500)) as receiver:
        webhook = WebhookFactory.create(url=receiver.url())
        first, second = delivery_emitted(), delivery_emitted()
        webhook_delivery_attempt(delivery_id=first.pk)
        settings.WEBHOOK_RETRY_HOURS = 0.001  # 3.6 s, shorter than the pause

        outcome = webhook_delivery_attempt(delivery_id=second.pk)

    assert outcome == DeliveryOutcome.FAILED
    assert len(receiver.requests) == 1
    second.refresh_from_db()
    assert second.state == "failed"
    assert "the receiver has failed since before the 0.001 h retry window ended" in (
        second.last_error
    )
    webhook.refresh_from_db()
    assert webhook.consecutive_failures == 1


def test_enabling_or_a_new_url_ends_the_pause() -> None:
    with receiver_running(default=Answer(500)) as receiver:
        webhook = WebhookFactory.create(url=receiver.url())
        webhook_delivery_attempt(delivery_id=delivery_emitted().pk)

        enabled = webhook_update(user_id="alice", webhook_id=webhook.pk, enabled=True)
        Webhook.objects.filter(pk=webhook.pk).update(
            failing_attempts=4, paused_until=timezone.now() + timedelta(hours=1)
        )
        moved = webhook_update(user_id="alice", webhook_id=webhook.pk, url=receiver.url("/new"))

    assert (enabled.failing_attempts, enabled.paused_until) == (0, None)
    assert (moved.failing_attempts, moved.paused_until) == (0, None)

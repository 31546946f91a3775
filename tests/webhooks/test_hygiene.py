"""Bounded storage and stranded deliveries: ended deliveries go after
WEBHOOK_DELIVERY_RETENTION_DAYS with their attempts, pending ones stay, and a pending delivery
whose job is gone gets exactly one new job."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from procrastinate.contrib.django import app
from pytest_django.fixtures import Settings as SettingsWrapper

from tests.webhooks.factories import WebhookFactory
from tests.webhooks.helpers import delivery_emitted, delivery_jobs
from webhooks.models import (
    AttemptResult,
    DeliveryState,
    Webhook,
    WebhookAttempt,
    WebhookDelivery,
)
from webhooks.services import (
    STRANDED_AFTER,
    webhook_deliveries_prune,
    webhook_deliveries_requeue_stranded,
)
from webhooks.tasks import webhook_deliveries_prune_job, webhook_deliveries_requeue_stranded_job

pytestmark = pytest.mark.django_db


def _delivery(webhook: Webhook, *, state: str, ended_days_ago: float | None) -> WebhookDelivery:
    """A delivery with one attempt, ended (finished_at) that many days ago, or still pending."""
    now = timezone.now()
    finished_at = None if ended_days_ago is None else now - timedelta(days=ended_days_ago)
    delivery = WebhookDelivery.objects.create(
        user_id=webhook.user_id,
        webhook=webhook,
        event_type="thread.completed",
        payload={"type": "thread.completed", "timestamp": now.isoformat(), "data": {}},
        state=state,
        attempts=1,
        created_at=finished_at or now,
        finished_at=finished_at,
    )
    WebhookAttempt.objects.create(
        user_id=webhook.user_id,
        delivery=delivery,
        number=1,
        started_at=finished_at or now,
        result=AttemptResult.HTTP_ERROR,
        status_code=500,
    )
    return delivery


def _remaining() -> set[object]:
    return set(WebhookDelivery.objects.values_list("pk", flat=True))


def _attempts_of(*deliveries: WebhookDelivery) -> int:
    return WebhookAttempt.objects.filter(delivery__in=[d.pk for d in deliveries]).count()


def test_prune_deletes_old_ended_deliveries_with_their_attempts() -> None:
    webhook = WebhookFactory.create()
    old_delivered = _delivery(webhook, state=DeliveryState.DELIVERED, ended_days_ago=31)
    old_failed = _delivery(webhook, state=DeliveryState.FAILED, ended_days_ago=40)
    recent = _delivery(webhook, state=DeliveryState.DELIVERED, ended_days_ago=29)
    pending = _delivery(webhook, state=DeliveryState.PENDING, ended_days_ago=None)
    WebhookDelivery.objects.filter(pk=pending.pk).update(
        created_at=timezone.now() - timedelta(days=400)
    )

    deleted = webhook_deliveries_prune(older_than_days=30)

    assert deleted == 2
    assert _remaining() == {recent.pk, pending.pk}
    assert _attempts_of(old_delivered, old_failed) == 0
    assert _attempts_of(recent, pending) == 2


def test_prune_with_zero_days_keeps_every_delivery() -> None:
    webhook = WebhookFactory.create()
    kept = {_delivery(webhook, state=DeliveryState.FAILED, ended_days_ago=3650).pk}

    deleted = webhook_deliveries_prune(older_than_days=0)

    assert deleted == 0
    assert _remaining() == kept


def test_prune_works_through_every_batch() -> None:
    webhook = WebhookFactory.create()
    other = WebhookFactory.create(user_id="bob")
    for hook in (webhook, webhook, other):
        _delivery(hook, state=DeliveryState.DELIVERED, ended_days_ago=60)
    recent = _delivery(other, state=DeliveryState.DELIVERED, ended_days_ago=1)

    deleted = webhook_deliveries_prune(older_than_days=30, batch=1)

    assert deleted == 3
    assert _remaining() == {recent.pk}
    assert WebhookAttempt.objects.count() == 1


def _stranded(user_id: str = "alice") -> WebhookDelivery:
    """A pending delivery due before STRANDED_AFTER, its first job (from the SQL function)
    deleted as an operator would."""
    delivery = delivery_emitted(user_id=user_id)
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        created_at=timezone.now() - STRANDED_AFTER - timedelta(minutes=1)
    )
    with connection.cursor() as cursor:
        cursor.execute(
            "DELETE FROM procrastinate_jobs WHERE lock = %s", [f"webhook-delivery-{delivery.pk}"]
        )
    return delivery


def test_a_stranded_delivery_gets_one_new_job_and_a_second_sweep_adds_none() -> None:
    WebhookFactory.create()
    delivery = _stranded()

    first = webhook_deliveries_requeue_stranded(older_than=STRANDED_AFTER)
    second = webhook_deliveries_requeue_stranded(older_than=STRANDED_AFTER)

    assert (first, second) == (1, 0)
    jobs = delivery_jobs(delivery.pk)
    assert [(job["status"], job["queue_name"], job["task_name"]) for job in jobs] == [
        ("todo", "webhooks", "webhooks.deliver")
    ]
    assert jobs[0]["lock"] == jobs[0]["queueing_lock"] == f"webhook-delivery-{delivery.pk}"


def test_a_stranded_delivery_past_its_retry_window_fails_instead_of_coming_back(
    settings: SettingsWrapper,
) -> None:
    settings.WEBHOOK_RETRY_HOURS = 0.1  # 6 minutes: shorter than STRANDED_AFTER
    WebhookFactory.create()
    delivery = _stranded()

    requeued = webhook_deliveries_requeue_stranded(older_than=STRANDED_AFTER)

    assert requeued == 0
    assert delivery_jobs(delivery.pk) == []
    delivery.refresh_from_db()
    assert delivery.state == "failed"
    assert delivery.finished_at is not None
    assert "no attempt ran before its retry window ended" in delivery.last_error


def test_a_retry_due_recently_is_not_stranded_however_old_the_delivery() -> None:
    WebhookFactory.create()
    delivery = _stranded()
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        attempts=2, next_attempt_at=timezone.now() - timedelta(minutes=1)
    )

    requeued = webhook_deliveries_requeue_stranded(older_than=STRANDED_AFTER)

    assert requeued == 0
    assert delivery_jobs(delivery.pk) == []


@pytest.mark.parametrize("status", ["todo", "doing"])
def test_a_delivery_with_a_live_job_gets_no_other(status: str) -> None:
    WebhookFactory.create()
    delivery = delivery_emitted()
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        created_at=timezone.now() - timedelta(hours=2)
    )
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE procrastinate_jobs SET status = %s WHERE lock = %s",
            [status, f"webhook-delivery-{delivery.pk}"],
        )

    requeued = webhook_deliveries_requeue_stranded(older_than=STRANDED_AFTER)

    assert requeued == 0
    assert [job["status"] for job in delivery_jobs(delivery.pk)] == [status]


def test_recent_and_ended_deliveries_without_a_job_are_not_stranded() -> None:
    webhook = WebhookFactory.create()
    recent = delivery_emitted()
    with connection.cursor() as cursor:
        cursor.execute(
            "DELETE FROM procrastinate_jobs WHERE lock = %s", [f"webhook-delivery-{recent.pk}"]
        )
    ended = _delivery(webhook, state=DeliveryState.FAILED, ended_days_ago=1)

    requeued = webhook_deliveries_requeue_stranded(older_than=STRANDED_AFTER)

    assert requeued == 0
    assert delivery_jobs(recent.pk) == delivery_jobs(ended.pk) == []


def test_the_jobs_follow_the_retention_setting_and_requeue(settings: SettingsWrapper) -> None:
    webhook = WebhookFactory.create()
    old = _delivery(webhook, state=DeliveryState.DELIVERED, ended_days_ago=8)
    stranded = _stranded()

    settings.WEBHOOK_DELIVERY_RETENTION_DAYS = 0
    webhook_deliveries_prune_job(timestamp=0)
    kept_at_zero = _remaining()
    settings.WEBHOOK_DELIVERY_RETENTION_DAYS = 7
    webhook_deliveries_prune_job(timestamp=0)
    webhook_deliveries_requeue_stranded_job(timestamp=0)

    assert kept_at_zero == {old.pk, stranded.pk}
    assert _remaining() == {stranded.pk}
    assert [job["status"] for job in delivery_jobs(stranded.pk)] == ["todo"]


def test_the_hygiene_tasks_are_periodic_on_the_default_queue() -> None:
    periodic = {
        task.task.name: (task.cron, task.task.queue, task.task.queueing_lock)
        for task in app.periodic_registry.periodic_tasks.values()
    }

    assert periodic["webhooks.prune_deliveries"] == (
        "11 * * * *",
        "default",
        "webhooks.prune_deliveries",
    )
    assert periodic["webhooks.requeue_stranded_deliveries"] == (
        "2-59/5 * * * *",
        "default",
        "webhooks.requeue_stranded_deliveries",
    )

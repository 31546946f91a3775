"""A delivery's attempts in this process: signatures, retries, final failures and what they do
to the webhook, against real receivers on loopback."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.db import transaction
from pytest_django.fixtures import Settings as SettingsWrapper
from standardwebhooks.webhooks import Webhook as Verifier

from tests.webhooks.factories import WebhookFactory
from tests.webhooks.helpers import deliver_jobs_count, delivery_emitted, delivery_jobs
from tests.webhooks.receiver import Answer, receiver_running
from webhooks.models import Webhook, WebhookAttempt, WebhookDelivery
from webhooks.services import (
    DeliveryOutcome,
    webhook_delivery_attempt,
    webhook_event_emit,
)

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _loopback_allowed(settings: SettingsWrapper) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = True
    # Waits of well under a millisecond: the next call finds the receiver's pause over.
    settings.WEBHOOK_RETRY_BASE_SECONDS = 0.0001
    settings.WEBHOOK_TIMEOUT_SECONDS = 5


def _attempts(delivery: WebhookDelivery) -> list[tuple[int, str, int | None]]:
    return list(
        WebhookAttempt.objects.filter(user_id=delivery.user_id, delivery=delivery)
        .order_by("number")
        .values_list("number", "result", "status_code")
    )


def test_a_receiver_failing_twice_gets_one_accepted_delivery_signed_the_same_way() -> None:
    with receiver_running([Answer(500), Answer(500)]) as receiver:
        webhook = WebhookFactory.create(url=receiver.url())
        delivery = delivery_emitted()

        outcomes = [webhook_delivery_attempt(delivery_id=delivery.pk) for _ in range(4)]

    assert outcomes == [
        DeliveryOutcome.RETRYING,
        DeliveryOutcome.RETRYING,
        DeliveryOutcome.DELIVERED,
        DeliveryOutcome.SKIPPED,
    ]
    assert len(receiver.requests) == 3
    assert {request.headers["webhook-id"] for request in receiver.requests} == {str(delivery.pk)}
    verifier = Verifier(webhook.secret)
    for request in receiver.requests:
        assert request.headers["content-type"] == "application/json"
        assert "IronClaw" in request.headers["user-agent"]
        assert verifier.verify(request.body, request.headers) == delivery.payload
    assert json.loads(receiver.requests[0].body)["type"] == "thread.completed"
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts, delivery.last_status_code) == ("delivered", 3, 200)
    assert delivery.delivered_at is not None
    assert delivery.next_attempt_at is None
    assert _attempts(delivery) == [
        (1, "http_error", 500),
        (2, "http_error", 500),
        (3, "success", 200),
    ]
    # The emit's job, then one retry job (the second retry found it still queued: one at most).
    jobs = delivery_jobs(delivery.pk)
    assert [job["lock"] for job in jobs] == [f"webhook-delivery-{delivery.pk}"] * 2
    assert jobs[1]["queueing_lock"] == f"webhook-delivery-{delivery.pk}"
    assert {job["task_name"] for job in jobs} == {"webhooks.deliver"}
    assert {job["queue_name"] for job in jobs} == {"webhooks"}


def test_a_retry_is_scheduled_after_a_jittered_doubling_wait(settings: SettingsWrapper) -> None:
    settings.WEBHOOK_RETRY_BASE_SECONDS = 100
    with receiver_running(default=Answer(503)) as receiver:
        WebhookFactory.create(url=receiver.url())
        delivery = delivery_emitted()

        webhook_delivery_attempt(delivery_id=delivery.pk)

    delivery.refresh_from_db()
    (retry,) = [job for job in delivery_jobs(delivery.pk) if job["queueing_lock"]]
    assert retry["scheduled_at"] == delivery.next_attempt_at
    wait = delivery.next_attempt_at - delivery.created_at
    assert timedelta(seconds=50) <= wait <= timedelta(seconds=101)


def test_an_event_rolled_back_creates_no_delivery_and_no_job() -> None:
    WebhookFactory.create()
    jobs_before = deliver_jobs_count()

    with transaction.atomic():
        webhook_event_emit(user_id="alice", event_type="thread.completed", data={})
        transaction.set_rollback(True)

    assert not WebhookDelivery.objects.filter(user_id="alice").exists()
    assert deliver_jobs_count() == jobs_before


def test_a_private_address_is_refused_without_connecting(settings: SettingsWrapper) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = False
    with receiver_running() as receiver:
        WebhookFactory.create(url=receiver.url())
        delivery = delivery_emitted()

        outcome = webhook_delivery_attempt(delivery_id=delivery.pk)

    assert outcome == DeliveryOutcome.FAILED
    assert receiver.requests == []
    delivery.refresh_from_db()
    assert delivery.state == "failed"
    assert "127.0.0.1" in delivery.last_error
    assert "non-public" in delivery.last_error
    assert _attempts(delivery) == [(1, "refused", None)]


def test_a_name_resolving_to_loopback_is_refused(settings: SettingsWrapper) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = False
    with receiver_running() as receiver:
        WebhookFactory.create(url=f"http://localhost:{receiver.port}/hook")
        delivery = delivery_emitted()

        webhook_delivery_attempt(delivery_id=delivery.pk)

    assert receiver.requests == []
    delivery.refresh_from_db()
    assert delivery.state == "failed"
    assert "localhost resolves to" in delivery.last_error


def test_a_redirect_to_another_host_is_not_followed() -> None:
    with receiver_running() as elsewhere:
        moved = Answer(307, headers={"location": elsewhere.url("/stolen")})
        with receiver_running([moved]) as receiver:
            WebhookFactory.create(url=receiver.url())
            delivery = delivery_emitted()

            outcome = webhook_delivery_attempt(delivery_id=delivery.pk)

    assert outcome == DeliveryOutcome.FAILED
    assert elsewhere.requests == []
    delivery.refresh_from_db()
    assert delivery.last_error == f"redirect to {elsewhere.url('/stolen')} not followed"
    assert _attempts(delivery) == [(1, "refused", 307)]


def test_a_redirect_to_a_url_that_cannot_be_sent_fails_the_delivery_with_the_reason() -> None:
    with receiver_running([Answer(307, headers={"location": "/caf\xe9"})]) as receiver:
        WebhookFactory.create(url=receiver.url())
        delivery = delivery_emitted()

        outcome = webhook_delivery_attempt(delivery_id=delivery.pk)

    assert outcome == DeliveryOutcome.FAILED
    assert len(receiver.requests) == 1
    delivery.refresh_from_db()
    assert delivery.last_error.startswith("the URL cannot be sent: ")
    assert _attempts(delivery) == [(1, "refused", None)]


def test_a_307_to_the_same_host_is_followed_with_the_same_signed_body() -> None:
    with receiver_running([Answer(307, headers={"location": "/moved"})]) as receiver:
        webhook = WebhookFactory.create(url=receiver.url())
        delivery = delivery_emitted()

        outcome = webhook_delivery_attempt(delivery_id=delivery.pk)

    assert outcome == DeliveryOutcome.DELIVERED
    assert [request.path for request in receiver.requests] == ["/hook", "/moved"]
    Verifier(webhook.secret).verify(receiver.requests[1].body, receiver.requests[1].headers)


def test_a_slow_receiver_times_out_and_is_retried(settings: SettingsWrapper) -> None:
    settings.WEBHOOK_TIMEOUT_SECONDS = 0.3
    with receiver_running([Answer(200, delay=3)]) as receiver:
        WebhookFactory.create(url=receiver.url())
        delivery = delivery_emitted()

        first = webhook_delivery_attempt(delivery_id=delivery.pk)
        second = webhook_delivery_attempt(delivery_id=delivery.pk)

    assert (first, second) == (DeliveryOutcome.RETRYING, DeliveryOutcome.DELIVERED)
    assert _attempts(delivery) == [(1, "timeout", None), (2, "success", 200)]
    attempt = WebhookAttempt.objects.get(user_id="alice", delivery=delivery, number=1)
    assert attempt.duration_ms < 3000
    assert "no answer within 0.3 s" in attempt.error


def test_a_4xx_fails_the_delivery_at_once() -> None:
    with receiver_running(default=Answer(422, body=b'{"error": "bad shape"}')) as receiver:
        webhook = WebhookFactory.create(url=receiver.url())
        delivery = delivery_emitted()

        outcome = webhook_delivery_attempt(delivery_id=delivery.pk)

    assert outcome == DeliveryOutcome.FAILED
    assert len(receiver.requests) == 1
    attempt = WebhookAttempt.objects.get(user_id="alice", delivery=delivery)
    assert attempt.response_excerpt == '{"error": "bad shape"}'
    webhook.refresh_from_db()
    assert (webhook.enabled, webhook.consecutive_failures) == (True, 1)
    assert [job["queueing_lock"] for job in delivery_jobs(delivery.pk)] == [None]


def test_a_410_disables_the_webhook_at_once() -> None:
    with receiver_running(default=Answer(410)) as receiver:
        webhook = WebhookFactory.create(url=receiver.url())
        delivery = delivery_emitted()

        webhook_delivery_attempt(delivery_id=delivery.pk)

    webhook.refresh_from_db()
    assert webhook.enabled is False
    assert "410 Gone" in webhook.disabled_reason


def test_retries_stop_after_the_retry_window(settings: SettingsWrapper) -> None:
    settings.WEBHOOK_RETRY_HOURS = 0.0001  # 0.36 s
    settings.WEBHOOK_RETRY_BASE_SECONDS = 1
    with receiver_running(default=Answer(500)) as receiver:
        WebhookFactory.create(url=receiver.url())
        delivery = delivery_emitted()

        outcome = webhook_delivery_attempt(delivery_id=delivery.pk)

    assert outcome == DeliveryOutcome.FAILED
    delivery.refresh_from_db()
    assert delivery.state == "failed"
    assert delivery.last_error.startswith("gave up after 1 attempts over 0.0001 h")


def test_consecutive_failed_deliveries_disable_the_webhook_with_the_reason(
    settings: SettingsWrapper,
) -> None:
    settings.WEBHOOK_DISABLE_AFTER_FAILURES = 2
    with receiver_running(default=Answer(400)) as receiver:
        webhook = WebhookFactory.create(url=receiver.url())
        first, second = delivery_emitted(), delivery_emitted()

        webhook_delivery_attempt(delivery_id=first.pk)
        webhook.refresh_from_db()
        enabled_after_one = webhook.enabled
        webhook_delivery_attempt(delivery_id=second.pk)

    assert enabled_after_one is True
    webhook.refresh_from_db()
    assert (webhook.enabled, webhook.consecutive_failures) == (False, 2)
    assert "2 deliveries failed in a row" in webhook.disabled_reason
    assert "the receiver answered 400" in webhook.disabled_reason
    # A disabled webhook gets no new delivery, and a pending one fails unsent.
    assert webhook_event_emit(user_id="alice", event_type="thread.completed", data={}) == 0


def test_a_pending_delivery_of_a_disabled_webhook_fails_unsent() -> None:
    with receiver_running() as receiver:
        webhook = WebhookFactory.create(url=receiver.url())
        delivery = delivery_emitted()
        Webhook.objects.filter(pk=webhook.pk).update(enabled=False)

        outcome = webhook_delivery_attempt(delivery_id=delivery.pk)

    assert outcome == DeliveryOutcome.FAILED
    assert receiver.requests == []
    delivery.refresh_from_db()
    assert delivery.state == "failed"
    assert "disabled" in delivery.last_error


def test_a_success_resets_the_failure_count() -> None:
    with receiver_running() as receiver:
        webhook = WebhookFactory.create(url=receiver.url(), consecutive_failures=3)
        delivery = delivery_emitted()

        webhook_delivery_attempt(delivery_id=delivery.pk)

    webhook.refresh_from_db()
    assert webhook.consecutive_failures == 0

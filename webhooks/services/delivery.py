"""Deliveries: one attempt of a delivery (the ``webhooks.deliver`` job), its retries, and a
redelivery asked by the tenant or an operator.

Delivery is at least once. An attempt POSTs with no transaction open, then records its outcome;
once a 2xx is recorded the delivery is never posted again (the state check below, under the
job's lock). A crash between the receiver's 2xx and that commit leaves the delivery pending, and
its job (retried by Procrastinate, or redelivered) sends it again with the same ``webhook-id``:
receivers deduplicate on that header, as the Standard Webhooks specification asks.
"""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta
from enum import StrEnum
from functools import partial

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from procrastinate.contrib.django import app
from procrastinate.exceptions import AlreadyEnqueued

from core.db import update_returning
from core.log_context import job_args
from webhooks.errors import DeliveryNotFound, DeliveryPending
from webhooks.metrics import attempt_observe, delivery_failed_observe
from webhooks.models import (
    AttemptResult,
    DeliveryState,
    Webhook,
    WebhookAttempt,
    WebhookDelivery,
)
from webhooks.sender import SendResult, post_signed
from webhooks.signing import payload_body, signed_headers

# Registered by webhooks.tasks (queue ``webhooks``), and deferred by name here and by the SQL
# function webhooks_event_emit, so tasks.py can import these services without a cycle.
DELIVER_TASK = "webhooks.deliver"
# The longest wait between two attempts, however many came before.
MAX_RETRY_DELAY_SECONDS = 3600.0


class DeliveryOutcome(StrEnum):
    DELIVERED = "delivered"
    RETRYING = "retrying"
    FAILED = "failed"
    # Nothing to do: the delivery is gone (its webhook was deleted) or ended already (a stray
    # duplicate job).
    SKIPPED = "skipped"


def delivery_lock(delivery_id: uuid.UUID | str) -> str:
    """The Procrastinate lock (and queueing lock) of a delivery's jobs: the same name the SQL
    function webhooks_event_emit gives the first job."""
    return f"webhook-delivery-{delivery_id}"


def retry_delay(attempt: int) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (from 1): the base doubled per
    attempt, at most an hour, then a uniform 50-100 % of that, so receivers that failed together
    are not all retried at the same instant."""
    step = min(
        settings.WEBHOOK_RETRY_BASE_SECONDS * 2 ** min(attempt - 1, 40), MAX_RETRY_DELAY_SECONDS
    )
    return step * random.uniform(0.5, 1.0)


def _delivery_defer(delivery_id: uuid.UUID, *, schedule_at: datetime | None = None) -> None:
    """Defer the delivery's next job in the caller's transaction (visible when it commits)."""
    lock = delivery_lock(delivery_id)
    try:
        # Its own savepoint: "already queued" must not abort the caller's transaction.
        with transaction.atomic():
            app.configure_task(
                name=DELIVER_TASK,
                # An unknown name would otherwise defer to the default queue with no retries.
                allow_unknown=False,
                lock=lock,
                queueing_lock=lock,
                schedule_at=schedule_at,
            ).defer(delivery_id=str(delivery_id), **job_args())
    except AlreadyEnqueued:
        # A job of this delivery waits already; it finds the delivery pending and attempts it.
        pass


def webhook_delivery_attempt(*, delivery_id: uuid.UUID | str) -> DeliveryOutcome:
    """Attempt a pending delivery once, then record the attempt and the delivery's new state in
    one transaction, with the next job when it is retried. A delivery that ended already is left
    alone, so a duplicate job does nothing; one whose webhook is disabled fails unsent."""
    # The job names only the delivery: this read finds the tenant, which every later one names.
    delivery = WebhookDelivery.objects.filter(pk=delivery_id).first()
    if delivery is None or delivery.state != DeliveryState.PENDING:
        return DeliveryOutcome.SKIPPED
    webhook = Webhook.objects.filter(user_id=delivery.user_id, pk=delivery.webhook_id).first()
    if webhook is None:
        return DeliveryOutcome.SKIPPED
    if not webhook.enabled:
        return _fail_unsent(delivery, webhook)
    started_at = timezone.now()
    if webhook.paused_until is not None and webhook.paused_until > started_at:
        return _postpone(delivery, until=webhook.paused_until, now=started_at)
    number = delivery.attempts + 1
    body = payload_body(delivery.payload)
    sent = post_signed(
        url=webhook.url,
        body=body,
        headers=signed_headers(
            secret=webhook.secret,
            message_id=str(delivery.id),
            timestamp=int(started_at.timestamp()),
            body=body,
        ),
        timeout=settings.WEBHOOK_TIMEOUT_SECONDS,
        allow_private=settings.WEBHOOK_ALLOW_PRIVATE,
    )
    return _attempt_record(delivery, number=number, started_at=started_at, sent=sent)


def _locked(delivery: WebhookDelivery) -> tuple[Webhook, WebhookDelivery] | None:
    """The webhook, then the delivery, row-locked (parents before children: a webhook's delete
    locks it and then cascades to the deliveries); None when either is gone or the delivery is
    no longer pending."""
    webhook = (
        Webhook.objects.select_for_update(no_key=True, of=("self",))
        .filter(user_id=delivery.user_id, pk=delivery.webhook_id)
        .first()
    )
    locked = (
        WebhookDelivery.objects.select_for_update(no_key=True, of=("self",))
        .filter(user_id=delivery.user_id, pk=delivery.pk, state=DeliveryState.PENDING)
        .first()
    )
    if webhook is None or locked is None:
        return None
    return webhook, locked


def _fail_unsent(delivery: WebhookDelivery, webhook: Webhook) -> DeliveryOutcome:
    with transaction.atomic():
        found = _locked(delivery)
        if found is None:
            return DeliveryOutcome.SKIPPED
        _webhook, locked = found
        now = timezone.now()
        reason = webhook.disabled_reason or "disabled by its owner"
        locked.state = DeliveryState.FAILED
        locked.last_error = f"not sent: the webhook is disabled ({reason})"
        locked.finished_at = now
        locked.next_attempt_at = None
        locked.save(update_fields=["state", "last_error", "finished_at", "next_attempt_at"])
        transaction.on_commit(delivery_failed_observe)
    return DeliveryOutcome.FAILED


def _postpone(delivery: WebhookDelivery, *, until: datetime, now: datetime) -> DeliveryOutcome:
    """The receiver is paused (its last attempts failed): move this delivery's next attempt to
    the end of the pause, unsent, or fail it when that is past its retry window. A little
    jitter spreads a backlog's attempts; whichever comes first probes the receiver, and the
    others find the pause extended if it failed again."""
    with transaction.atomic():
        found = _locked(delivery)
        if found is None:
            return DeliveryOutcome.SKIPPED
        webhook, locked = found
        window_start = locked.retries_from or locked.created_at
        next_attempt_at = until + timedelta(
            seconds=random.uniform(0, 0.1) * (until - now).total_seconds()
        )
        if next_attempt_at > window_start + timedelta(hours=settings.WEBHOOK_RETRY_HOURS):
            gave_up = (
                f"gave up after {locked.attempts} attempts: the receiver has failed since before "
                f"the {settings.WEBHOOK_RETRY_HOURS:g} h retry window ended"
            )
            outcome = _failed(
                locked, webhook, now, SendResult(result=AttemptResult.REFUSED), error=gave_up
            )
            update_fields = ["state", "finished_at", "next_attempt_at", "last_error"]
        else:
            locked.next_attempt_at = next_attempt_at
            _delivery_defer(locked.pk, schedule_at=next_attempt_at)
            outcome = DeliveryOutcome.RETRYING
            update_fields = ["next_attempt_at"]
        locked.save(update_fields=update_fields)
        if outcome == DeliveryOutcome.FAILED:
            transaction.on_commit(delivery_failed_observe)
    return outcome


def _attempt_record(
    delivery: WebhookDelivery, *, number: int, started_at: datetime, sent: SendResult
) -> DeliveryOutcome:
    with transaction.atomic():
        found = _locked(delivery)
        if found is None:
            # Deleted while the request was out (the webhook with it), or ended by another job
            # that ran despite the lock (an operator's retry of a stalled job): keep theirs.
            return DeliveryOutcome.SKIPPED
        webhook, locked = found
        now = timezone.now()
        WebhookAttempt.objects.create(
            user_id=locked.user_id,
            delivery=locked,
            number=number,
            started_at=started_at,
            duration_ms=sent.duration_ms,
            result=sent.result,
            status_code=sent.status_code,
            error=sent.error,
            response_excerpt=sent.response_excerpt,
        )
        locked.attempts = number
        locked.last_status_code = sent.status_code
        locked.last_error = sent.error
        if sent.result == AttemptResult.SUCCESS:
            outcome = _delivered(locked, webhook, now)
        elif sent.retryable and not sent.gone:
            outcome = _retry_or_give_up(locked, webhook, now, sent)
        else:
            outcome = _failed(locked, webhook, now, sent)
        locked.save(
            update_fields=[
                "attempts",
                "last_status_code",
                "last_error",
                "state",
                "next_attempt_at",
                "delivered_at",
                "finished_at",
            ]
        )
        latency = (
            (now - locked.created_at).total_seconds()
            if outcome == DeliveryOutcome.DELIVERED
            else None
        )
        ended = None if outcome == DeliveryOutcome.RETRYING else str(outcome)
        transaction.on_commit(
            partial(attempt_observe, result=str(sent.result), delivery_ended=ended, latency=latency)
        )
    return outcome


def _delivered(locked: WebhookDelivery, webhook: Webhook, now: datetime) -> DeliveryOutcome:
    locked.state = DeliveryState.DELIVERED
    locked.delivered_at = locked.finished_at = now
    locked.next_attempt_at = None
    if webhook.consecutive_failures or webhook.failing_attempts or webhook.paused_until:
        # Under the webhook's row lock (_locked): a failure counted by another delivery of it
        # commits before or after this, never in between.
        Webhook.objects.filter(user_id=webhook.user_id, pk=webhook.pk).update(
            consecutive_failures=0, failing_attempts=0, paused_until=None
        )
    return DeliveryOutcome.DELIVERED


def _retry_or_give_up(
    locked: WebhookDelivery, webhook: Webhook, now: datetime, sent: SendResult
) -> DeliveryOutcome:
    window_start = locked.retries_from or locked.created_at
    # The receiver is paused for as long as a delivery failing this many times in a row would
    # wait (under the webhook's row lock, taken by _locked).
    failing = webhook.failing_attempts + 1
    paused_until = now + timedelta(seconds=retry_delay(failing))
    Webhook.objects.filter(user_id=webhook.user_id, pk=webhook.pk).update(
        failing_attempts=failing, paused_until=paused_until
    )
    next_attempt_at = max(now + timedelta(seconds=retry_delay(locked.attempts)), paused_until)
    if next_attempt_at > window_start + timedelta(hours=settings.WEBHOOK_RETRY_HOURS):
        hours = settings.WEBHOOK_RETRY_HOURS
        gave_up = f"gave up after {locked.attempts} attempts over {hours:g} h; last: {sent.error}"
        return _failed(locked, webhook, now, sent, error=gave_up)
    locked.next_attempt_at = next_attempt_at
    _delivery_defer(locked.pk, schedule_at=next_attempt_at)
    return DeliveryOutcome.RETRYING


def _failed(
    locked: WebhookDelivery,
    webhook: Webhook,
    now: datetime,
    sent: SendResult,
    *,
    error: str | None = None,
) -> DeliveryOutcome:
    locked.state = DeliveryState.FAILED
    locked.finished_at = now
    locked.next_attempt_at = None
    locked.last_error = error or sent.error
    # F(): the count is read and written by the UPDATE itself. The webhook's row lock (taken in
    # _locked) already serialises two deliveries of it failing at once; F() keeps it right even
    # for a writer that did not take that lock first.
    (counted,) = update_returning(
        Webhook.objects.filter(user_id=webhook.user_id, pk=webhook.pk),
        consecutive_failures=F("consecutive_failures") + 1,
    )
    limit = settings.WEBHOOK_DISABLE_AFTER_FAILURES
    reason = ""
    if sent.gone:
        reason = f"the receiver answered 410 Gone at {now.isoformat()}"
    elif counted.consecutive_failures >= limit:
        reason = (
            f"{counted.consecutive_failures} deliveries failed in a row "
            f"(WEBHOOK_DISABLE_AFTER_FAILURES is {limit}); last error: {locked.last_error}"
        )
    if reason:
        # Compare-and-set on enabled: a webhook the tenant disabled meanwhile keeps its state,
        # and the first reason given stays.
        Webhook.objects.filter(user_id=webhook.user_id, pk=webhook.pk, enabled=True).update(
            enabled=False, disabled_reason=reason[:2000]
        )
    return DeliveryOutcome.FAILED


def webhook_delivery_redeliver(
    *, user_id: str, delivery_id: uuid.UUID, webhook_id: uuid.UUID | None = None
) -> WebhookDelivery:
    """Send a delivered or failed delivery again: it is pending once more, its retry window
    starts now, and its job is deferred to run at once (when this commits). Its attempts keep
    their numbers. A pending one is a 409: it has a job already."""
    with transaction.atomic():
        deliveries = WebhookDelivery.objects.select_for_update(no_key=True, of=("self",)).filter(
            user_id=user_id, pk=delivery_id
        )
        if webhook_id is not None:
            deliveries = deliveries.filter(webhook_id=webhook_id)
        delivery = deliveries.first()
        if delivery is None:
            raise DeliveryNotFound()
        if delivery.state == DeliveryState.PENDING:
            when = delivery.next_attempt_at.isoformat() if delivery.next_attempt_at else "now"
            raise DeliveryPending(
                f"The delivery is already pending, next attempt at {when}.",
                details={"next_attempt_at": when},
            )
        now = timezone.now()
        delivery.state = DeliveryState.PENDING
        delivery.delivered_at = delivery.finished_at = None
        delivery.next_attempt_at = delivery.retries_from = now
        delivery.save(
            update_fields=[
                "state",
                "delivered_at",
                "finished_at",
                "next_attempt_at",
                "retries_from",
            ]
        )
        _delivery_defer(delivery.pk)
    return delivery

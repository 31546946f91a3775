"""Webhooks: a tenant's receivers, the deliveries of events to them, and each delivery's attempts.

Deliveries are created by the database, not by code paths: ``webhooks_event_emit`` (a SQL
function, migration 0001) inserts one delivery per enabled webhook of the tenant that wants the
event and defers its Procrastinate job, in the transaction of the event itself, so an event is
never lost and never sent for a change that rolled back. Triggers call it when a thread ends
(``thread.completed``, ``thread.failed``, ``thread.stopped``) and when an agent entry is written
(``entry.created``); the routines scheduler calls it for ``routine.fired``.

Every table's primary key and foreign keys start with ``user_id`` (set by migration 0001), so
Citus can distribute them by tenant; Django sees ``id`` as the key, which stays unique.
"""

from __future__ import annotations

import uuid

from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Q
from django.db.models.functions import Coalesce

from core.db import TenantRow


class WebhookEvent(models.TextChoices):
    THREAD_COMPLETED = "thread.completed"
    THREAD_FAILED = "thread.failed"
    THREAD_STOPPED = "thread.stopped"
    ENTRY_CREATED = "entry.created"
    ROUTINE_FIRED = "routine.fired"


class Webhook(TenantRow):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user_id = models.CharField(max_length=255)
    url = models.URLField(max_length=2048)
    events = ArrayField(models.CharField(max_length=32, choices=WebhookEvent.choices))
    description = models.CharField(max_length=255, blank=True, default="")
    # The signing key, "whsec_" + base64 of 32 random bytes. Stored as is: signing needs it.
    secret = models.CharField(max_length=100, editable=False)
    enabled = models.BooleanField(default=True)
    # Why the service disabled it (empty when enabled, or disabled by the tenant).
    disabled_reason = models.TextField(blank=True, default="")
    # Deliveries failed in a row; WEBHOOK_DISABLE_AFTER_FAILURES of them disable the webhook.
    consecutive_failures = models.PositiveIntegerField(default=0)
    # The receiver itself is failing (timeouts, connection errors, 408, 429, 5xx): attempts in a
    # row that failed so, whatever their delivery, and until when every delivery of it waits.
    # One probe per wait instead of one attempt per event: a dead receiver holds a background
    # worker for one timeout per backoff step, not for one per event its tenant produces.
    failing_attempts = models.PositiveIntegerField(default=0)
    paused_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                name="webhook_events_known",
                condition=Q(events__contained_by=WebhookEvent.values) & ~Q(events=[]),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.url} ({self.user_id})"


class DeliveryState(models.TextChoices):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class WebhookDelivery(TenantRow):
    """One event for one webhook. Its id is the ``webhook-id`` header of every attempt, so a
    receiver that saw it already can tell a retry from a new event."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user_id = models.CharField(max_length=255)
    # The key (user_id, webhook_id) is declared in migration 0001, with ON DELETE CASCADE.
    webhook = models.ForeignKey(
        Webhook, on_delete=models.DO_NOTHING, db_constraint=False, related_name="deliveries"
    )
    event_type = models.CharField(max_length=32, choices=WebhookEvent.choices)
    # The body sent, fixed when the event happened: {"type", "timestamp", "data"}.
    payload = models.JSONField()
    state = models.CharField(
        max_length=16, choices=DeliveryState.choices, default=DeliveryState.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField()
    # Where the retry window (WEBHOOK_RETRY_HOURS) starts: the last redelivery, or the event
    # (created_at) when null.
    retries_from = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "webhook deliveries"
        indexes = [
            # A webhook's deliveries, newest first (the API's list).
            models.Index(
                fields=["user_id", "webhook", "-created_at"], name="delivery_webhook_newest_idx"
            ),
            # The admin's list and the operations console: the latest deliveries.
            models.Index(fields=["-created_at"], name="delivery_newest_idx"),
            # The hourly prune, across tenants: ended deliveries, oldest first.
            models.Index(
                fields=["finished_at"],
                name="delivery_ended_idx",
                condition=~Q(state=DeliveryState.PENDING),
            ),
            # The stranded-delivery sweep, across tenants: pending deliveries by when their
            # next attempt is due (the first one's, created_at, when null).
            models.Index(
                Coalesce("next_attempt_at", "created_at"),
                name="delivery_pending_due_idx",
                condition=Q(state=DeliveryState.PENDING),
            ),
        ]
        constraints = [
            models.CheckConstraint(
                name="delivery_state_valid", condition=Q(state__in=DeliveryState.values)
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.id} ({self.state})"


class AttemptResult(models.TextChoices):
    SUCCESS = "success"
    HTTP_ERROR = "http_error"
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"
    # Not sent: the address is private, the URL redirects elsewhere, the webhook is disabled.
    REFUSED = "refused"


class WebhookAttempt(TenantRow):
    id = models.BigAutoField(primary_key=True)
    user_id = models.CharField(max_length=255)
    # The key (user_id, delivery_id) is declared in migration 0001, with ON DELETE CASCADE.
    delivery = models.ForeignKey(
        WebhookDelivery, on_delete=models.DO_NOTHING, db_constraint=False, related_name="tries"
    )
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField(default=0)
    result = models.CharField(max_length=16, choices=AttemptResult.choices)
    status_code = models.PositiveIntegerField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    # The first bytes of the receiver's answer, for the operator reading why it failed.
    response_excerpt = models.TextField(blank=True, default="")

    class Meta:
        indexes = [
            models.Index(fields=["user_id", "delivery", "number"], name="attempt_delivery_idx")
        ]
        constraints = [
            models.CheckConstraint(
                name="attempt_result_valid", condition=Q(result__in=AttemptResult.values)
            ),
        ]

    def __str__(self) -> str:
        return f"attempt {self.number} of {self.delivery_id}: {self.result}"

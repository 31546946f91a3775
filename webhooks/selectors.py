"""Reads of the webhooks app, each scoped to one tenant."""

from __future__ import annotations

import uuid

from django.db.models import Prefetch, QuerySet

from webhooks.errors import DeliveryNotFound, WebhookNotFound
from webhooks.models import Webhook, WebhookAttempt, WebhookDelivery


def webhook_list(*, user_id: str) -> QuerySet[Webhook]:
    """The tenant's webhooks, newest first."""
    return Webhook.objects.filter(user_id=user_id).order_by("-created_at", "-id")


def webhook_get(*, user_id: str, webhook_id: uuid.UUID) -> Webhook:
    webhook = Webhook.objects.filter(user_id=user_id, pk=webhook_id).first()
    if webhook is None:
        raise WebhookNotFound()
    return webhook


def delivery_list(*, user_id: str, webhook_id: uuid.UUID) -> QuerySet[WebhookDelivery]:
    """A webhook's deliveries, newest first (the index delivery_webhook_newest_idx); unknown or
    another tenant's webhook: WebhookNotFound."""
    if not Webhook.objects.filter(user_id=user_id, pk=webhook_id).exists():
        raise WebhookNotFound()
    return WebhookDelivery.objects.filter(user_id=user_id, webhook_id=webhook_id).order_by(
        "-created_at", "-id"
    )


def delivery_get(*, user_id: str, webhook_id: uuid.UUID, delivery_id: uuid.UUID) -> WebhookDelivery:
    """One delivery of the webhook, with its attempts in order (``attempt_list``)."""
    attempts = Prefetch(
        "tries",
        queryset=WebhookAttempt.objects.filter(user_id=user_id).order_by("number", "id"),
        to_attr="attempt_list",
    )
    delivery = (
        WebhookDelivery.objects.filter(user_id=user_id, webhook_id=webhook_id, pk=delivery_id)
        .prefetch_related(attempts)
        .first()
    )
    if delivery is None:
        raise DeliveryNotFound()
    return delivery

"""Errors of the webhooks app; the API's exception handler maps each to its status."""

from __future__ import annotations

from core.errors import Conflict, NotFound


class WebhookNotFound(NotFound):
    code = "webhook_not_found"
    default_message = "No such webhook."


class DeliveryNotFound(NotFound):
    code = "delivery_not_found"
    default_message = "No such delivery."


class DeliveryPending(Conflict):
    code = "delivery_pending"
    default_message = "The delivery is already pending."

"""Procrastinate entry point of the webhooks app: one attempt of one delivery (queue
``webhooks``, run by the background worker).

The first job of a delivery is deferred by the SQL function ``webhooks_event_emit`` in the
event's transaction; the next ones (retries, redeliveries) by the services, in the transaction
that records why. All carry the lock ``webhook-delivery-<id>``, so a delivery's attempts never
overlap.
"""

from __future__ import annotations

from django.db import DatabaseError
from procrastinate import RetryStrategy
from procrastinate.contrib.django import app

from webhooks import services

# Retried when the database fails under the job (a restart, a connection cut) before the outcome
# is recorded: the delivery would otherwise stay pending with no job. Such a retry may post again
# what the receiver already accepted, with the same webhook-id (see services.delivery).
DELIVER_RETRY = RetryStrategy(max_attempts=5, exponential_wait=5, retry_exceptions={DatabaseError})


@app.task(name=services.DELIVER_TASK, queue="webhooks", retry=DELIVER_RETRY, pass_context=False)
def webhook_delivery_attempt_job(delivery_id: str) -> str:
    return str(services.webhook_delivery_attempt(delivery_id=delivery_id))

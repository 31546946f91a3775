"""Procrastinate entry points of the webhooks app: one attempt of one delivery (queue
``webhooks``, run by the background worker), and the hygiene of deliveries (queue ``default``):
the hourly prune of ended ones and the sweep that gives stranded pending ones a new job.

The first job of a delivery is deferred by the SQL function ``webhooks_event_emit`` in the
event's transaction; the next ones (retries, redeliveries) by the services, in the transaction
that records why. All carry the lock ``webhook-delivery-<id>``, so a delivery's attempts never
overlap.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import DatabaseError
from procrastinate import RetryStrategy
from procrastinate.contrib.django import app

from webhooks import services

logger = logging.getLogger(__name__)

# Retried when the database fails under the job (a restart, a connection cut) before the outcome
# is recorded: the delivery would otherwise stay pending with no job. Such a retry may post again
# what the receiver already accepted, with the same webhook-id (see services.delivery).
DELIVER_RETRY = RetryStrategy(max_attempts=5, exponential_wait=5, retry_exceptions={DatabaseError})


@app.task(name=services.DELIVER_TASK, queue="webhooks", retry=DELIVER_RETRY, pass_context=False)
def webhook_delivery_attempt_job(delivery_id: str) -> str:
    return str(services.webhook_delivery_attempt(delivery_id=delivery_id))


# At minute 11: away from the other hourly prunes (minutes 23 and 41) and the routines' (53).
@app.periodic(cron="11 * * * *", periodic_id="webhooks.prune_deliveries")
@app.task(
    name="webhooks.prune_deliveries",
    queue="default",
    queueing_lock="webhooks.prune_deliveries",
)
def webhook_deliveries_prune_job(timestamp: int) -> None:
    days = settings.WEBHOOK_DELIVERY_RETENTION_DAYS
    deleted = services.webhook_deliveries_prune(older_than_days=days)
    if deleted:
        logger.info("webhooks: deleted %d deliveries ended over %d days ago", deleted, days)


# Retries end, and jobs get deleted: without this sweep their deliveries would stay pending for
# ever. Two minutes past the five-minute marks, away from the rate-limit purge.
@app.periodic(cron="2-59/5 * * * *", periodic_id="webhooks.requeue_stranded_deliveries")
@app.task(
    name="webhooks.requeue_stranded_deliveries",
    queue="default",
    queueing_lock="webhooks.requeue_stranded_deliveries",
)
def webhook_deliveries_requeue_stranded_job(timestamp: int) -> None:
    requeued = services.webhook_deliveries_requeue_stranded(older_than=services.STRANDED_AFTER)
    if requeued:
        logger.warning(
            "webhooks: queued %d pending deliveries again, due over %d s ago with no job",
            requeued,
            services.STRANDED_AFTER.total_seconds(),
        )

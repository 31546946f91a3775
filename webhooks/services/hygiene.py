"""Bounded storage and stranded deliveries: ended deliveries are pruned after
``WEBHOOK_DELIVERY_RETENTION_DAYS``, and a pending delivery whose job is gone gets a new one.

Both run across tenants from the background worker's periodic jobs (``webhooks.tasks``), never
in an API request.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from webhooks.metrics import delivery_failed_observe
from webhooks.models import WebhookDelivery
from webhooks.services.delivery import _delivery_defer

# Deliveries deleted per transaction (their attempts go with them, by the database's cascade).
PRUNE_BATCH = 1000
# A pending delivery whose attempt is this late with no job waiting or running is stranded:
# well past any worker's pickup delay, so a live job is never taken for a lost one.
STRANDED_AFTER = timedelta(minutes=10)
# Deliveries given a new job per sweep; the rest wait for the next one, minutes later.
REQUEUE_LIMIT = 500

_TABLE = WebhookDelivery._meta.db_table

# Served by delivery_ended_idx (finished_at, where the state is not pending). Rows a
# redelivery holds (it locks the delivery to make it pending again) are skipped, not waited for;
# the next run finds them if they ended again. Plain FOR UPDATE: these rows are deleted.
_PRUNE_SQL = f"""
DELETE FROM {_TABLE} WHERE (user_id, id) IN (
    SELECT user_id, id FROM {_TABLE}
    WHERE state <> 'pending' AND finished_at < %s
    ORDER BY finished_at LIMIT %s FOR UPDATE SKIP LOCKED
)
"""

# The candidates come from delivery_pending_due_idx; the NOT EXISTS reads the unfinished jobs
# only (procrastinate_jobs_id_lock_idx_v1 covers (id, lock) of todo and doing jobs), so its cost
# follows the queue's backlog, not its history. It names the lock (delivery.delivery_lock), not
# the queueing lock: the first job, deferred by the SQL function webhooks_event_emit, has none.
_STRANDED_SQL = f"""
SELECT delivery.id FROM {_TABLE} delivery
WHERE delivery.state = 'pending'
  AND COALESCE(delivery.next_attempt_at, delivery.created_at) < %s
  AND NOT EXISTS (
      SELECT 1 FROM procrastinate_jobs job
      WHERE job.status IN ('todo', 'doing') AND job.lock = 'webhook-delivery-' || delivery.id
  )
ORDER BY COALESCE(delivery.next_attempt_at, delivery.created_at)
LIMIT %s
"""


# Stranded deliveries whose retry window has ended fail instead of getting a job: a job lost
# again and again (or one that crashes on its delivery) must not come back every sweep for ever.
_STRANDED_EXPIRED_SQL = f"""
UPDATE {_TABLE} delivery
SET state = 'failed', finished_at = %(now)s, next_attempt_at = NULL,
    last_error = 'gave up: no attempt ran before its retry window ended (its job was lost)'
WHERE delivery.state = 'pending'
  AND COALESCE(delivery.next_attempt_at, delivery.created_at) < %(stranded_before)s
  AND COALESCE(delivery.retries_from, delivery.created_at) < %(window_started_before)s
  AND NOT EXISTS (
      SELECT 1 FROM procrastinate_jobs job
      WHERE job.status IN ('todo', 'doing') AND job.lock = 'webhook-delivery-' || delivery.id
  )
"""


def webhook_deliveries_prune(*, older_than_days: int, batch: int = PRUNE_BATCH) -> int:
    """Delete delivered and failed deliveries that ended more than ``older_than_days`` ago, with
    their attempts, ``batch`` per transaction until none is left; pending ones stay. ``0``
    deletes nothing. The number of deliveries deleted."""
    if older_than_days == 0:
        return 0
    cutoff = timezone.now() - timedelta(days=older_than_days)
    deleted = 0
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(_PRUNE_SQL, [cutoff, batch])
            count = cursor.rowcount
        deleted += count
        if count < batch:
            return deleted


def webhook_deliveries_requeue_stranded(
    *, older_than: timedelta, limit: int = REQUEUE_LIMIT
) -> int:
    """Defer a new job for up to ``limit`` pending deliveries due more than ``older_than`` ago
    with no job waiting or running: theirs failed for good (the database down past its retries)
    or was deleted. Those whose retry window has ended fail instead. The number of deliveries
    requeued.

    One statement reads both sides, so a job that records a retry (and defers the next job)
    shows either still running or its successor waiting. A job deferred meanwhile by another
    path hits the same queueing lock and this deferral is dropped; a duplicate that slips past it
    finds the delivery ended, under the delivery lock, and does nothing."""
    now = timezone.now()
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                _STRANDED_EXPIRED_SQL,
                {
                    "now": now,
                    "stranded_before": now - older_than,
                    "window_started_before": now - timedelta(hours=settings.WEBHOOK_RETRY_HOURS),
                },
            )
            for _ in range(cursor.rowcount):
                transaction.on_commit(delivery_failed_observe)
            cursor.execute(_STRANDED_SQL, [now - older_than, limit])
            stranded: list[uuid.UUID] = [row[0] for row in cursor.fetchall()]
        for delivery_id in stranded:
            _delivery_defer(delivery_id)
    return len(stranded)

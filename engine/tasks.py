"""Procrastinate entry points of the engine: the hourly retention of checkpoints (queue
``default``, run by the background worker), through the service ``prune_checkpoints`` calls.

Each job function is named after the service it runs with ``_job``; the registered task name
must not change, because periodic ids in the database carry it.
"""

from __future__ import annotations

import logging

from django.conf import settings
from procrastinate.contrib.django import app

from engine.retention import checkpoints_prune

logger = logging.getLogger(__name__)


# At minute 41: away from the hourly job and idempotency-key prunes (minute 23).
@app.periodic(cron="41 * * * *", periodic_id="engine.prune_checkpoints")
@app.task(
    name="engine.tasks.prune_checkpoints",
    queue="default",
    queueing_lock="engine.prune_checkpoints",
)
def checkpoints_prune_job(timestamp: int) -> None:
    if settings.RUNTIME_RETENTION_DAYS == 0:
        return
    result = checkpoints_prune(older_than_days=settings.RUNTIME_RETENTION_DAYS)
    if result.checkpoints:
        logger.info(
            "checkpoints: deleted %d thread and %d conversation checkpoints (%d bytes stored) "
            "past the %d-day retention, in %d batches",
            result.thread_checkpoints,
            result.conversation_checkpoints,
            result.stored_bytes,
            settings.RUNTIME_RETENTION_DAYS,
            result.batches,
        )

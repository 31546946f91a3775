"""Procrastinate entry points of the routines app: the hourly prune of old firings (queue
``default``, run by the background worker). The scheduler itself is no job: each background
worker runs its pass (``operations.routine_scheduler``)."""

from __future__ import annotations

import logging

from django.conf import settings
from procrastinate.contrib.django import app

from routines.services import routine_firings_prune

logger = logging.getLogger(__name__)


# At minute 53: away from the other hourly prunes (minutes 11, 23 and 41).
@app.periodic(cron="53 * * * *", periodic_id="routines.prune_firings")
@app.task(
    name="routines.prune_firings",
    queue="default",
    queueing_lock="routines.prune_firings",
)
def routine_firings_prune_job(timestamp: int) -> None:
    days = settings.ROUTINE_FIRING_RETENTION_DAYS
    deleted = routine_firings_prune(older_than_days=days)
    if deleted:
        logger.info("routines: deleted %d firings over %d days old", deleted, days)

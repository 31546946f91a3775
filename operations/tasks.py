"""Periodic maintenance of the job queue (queue ``default``, run by the background worker).

Each job function is named after the service it runs with ``_job``; the registered task names
(``ironclaw_site.tasks...``) stay as they were, because periodic ids in the database carry them.
"""

from __future__ import annotations

import logging

from django.conf import settings
from procrastinate.contrib.django import app

from operations.jobs import finished_jobs_prune, stalled_jobs_retry, stalled_workers_prune

logger = logging.getLogger(__name__)


@app.periodic(cron="* * * * *", periodic_id="ironclaw_site.retry_stalled_jobs")
@app.task(
    name="ironclaw_site.tasks.retry_stalled_jobs",
    queue="default",
    queueing_lock="ironclaw_site.retry_stalled_jobs",
)
def stalled_jobs_retry_job(timestamp: int) -> None:
    stalled_jobs_retry()
    stalled_workers_prune()


@app.periodic(cron="23 * * * *", periodic_id="ironclaw_site.prune_finished_jobs")
@app.task(
    name="ironclaw_site.tasks.prune_finished_jobs",
    queue="default",
    queueing_lock="ironclaw_site.prune_finished_jobs",
)
def finished_jobs_prune_job(timestamp: int) -> None:
    if settings.JOBS_RETENTION_DAYS == 0:
        return
    result = finished_jobs_prune(older_than_days=settings.JOBS_RETENTION_DAYS)
    if result.jobs_deleted:
        logger.info(
            "job queue: deleted %d finished jobs older than %d days (%d events)",
            result.jobs_deleted,
            settings.JOBS_RETENTION_DAYS,
            result.events_deleted,
        )

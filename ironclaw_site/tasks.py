"""Periodic maintenance of the job queue (queue ``default``, run by the background worker)."""

from __future__ import annotations

from procrastinate.contrib.django import app

from ironclaw_site.jobs import stalled_jobs_retry


@app.periodic(cron="* * * * *", periodic_id="ironclaw_site.retry_stalled_jobs")
@app.task(
    name="ironclaw_site.tasks.retry_stalled_jobs",
    queue="default",
    queueing_lock="ironclaw_site.retry_stalled_jobs",
)
def retry_stalled_jobs(timestamp: int) -> None:
    stalled_jobs_retry()

"""Procrastinate jobs left ``doing`` by a worker that died, put back to ``todo``.

A worker records a heartbeat every ``WORKER_HEARTBEAT_SECONDS``; one silent for
``WORKER_STALLED_SECONDS`` (SIGKILLed, its host gone, cut off by an outage) is dead, and its
running jobs would stay ``doing`` forever. Running a job again is harmless because every task is
idempotent:

- ``run_thread``: the claim is a compare-and-set that refuses a thread that is finished or whose
  lease another worker holds; the runner resumes from the thread's checkpoint, so answered steps
  are never repeated and the conversation gets one reply.
- ``index_document``: hash-checked; it replaces the chunks only if the document still has the
  content it read, and skips a document already indexed at that hash.
- ``sweep_expired_leases`` and ``retry_stalled_jobs``: compare-and-set updates of rows still in
  the state they select (an expired lease, a job still ``doing``).
"""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from django.conf import settings
from django.utils import timezone
from procrastinate import exceptions
from procrastinate.contrib.django import app

logger = logging.getLogger(__name__)

# Every queue but the turns': indexing, and "default" where periodic maintenance (the lease
# sweeper, the stalled-job retry) runs. A new queue must be added here or no worker serves it.
BACKGROUND_QUEUES = ("indexing", "default")


def stalled_jobs_retry() -> list[int]:
    """Put the jobs of dead workers back to ``todo``; return their ids. Each retry is
    Procrastinate's compare-and-set on ``status = 'doing'``: a job that finished meanwhile is
    left alone."""
    stalled = async_to_sync(app.job_manager.get_stalled_jobs)(
        seconds_since_heartbeat=settings.WORKER_STALLED_SECONDS
    )
    retried = []
    for job in stalled:
        assert job.id is not None
        try:
            app.job_manager.retry_job_by_id(job_id=job.id, retry_at=timezone.now())
        except exceptions.ConnectorException:
            # Finished (or retried by a racing sweep) since we listed it.
            continue
        retried.append(job.id)
    if retried:
        logger.warning("retried %d stalled jobs of dead workers: %s", len(retried), retried)
    return retried

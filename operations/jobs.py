"""Job-queue hygiene: jobs left ``doing`` by a worker that died are put back to ``todo``, and
finished jobs older than ``JOBS_RETENTION_DAYS`` are deleted.

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
  the state they select (an expired lease, a job still ``doing``); the latter then deletes the
  rows of workers dead for minutes, which a second run finds gone.
- ``requeue_pending_indexing``: defers a job only for a document with none waiting or running,
  under the document's row lock; a second run finds the job the first deferred.
- ``prune_finished_jobs``, ``prune_versions``, ``workspace_hygiene`` and ``prune_checkpoints``:
  deletes of rows that still match when the batch runs; a second run finds nothing left to delete.
  So are ``webhooks.prune_deliveries`` and ``routines.prune_firings``.
- ``webhooks.requeue_stranded_deliveries``: defers a job only for a pending delivery with none
  waiting or running, under the delivery's queueing lock; a second run finds the job the first
  deferred, and a duplicate job finds the delivery ended and does nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from procrastinate import exceptions
from procrastinate.contrib.django import app

from operations.workers import WORKER_NAME_PRUNE_SQL

logger = logging.getLogger(__name__)


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


# A dead worker's row stays this long past its last heartbeat (the admin lists it in red, so an
# operator sees that a worker died), then ``stalled_workers_prune`` removes it.
DEAD_WORKER_KEPT = timedelta(minutes=5)


def stalled_workers_prune() -> int:
    """Remove the rows of workers silent for ``WORKER_STALLED_SECONDS`` plus ``DEAD_WORKER_KEPT``
    and their kind names; return how many. Without this, only a starting background worker
    prunes them, and a worker that crashed once would be listed (and the dashboard degraded)
    until the next restart. Run after ``stalled_jobs_retry``: a job whose worker row is gone is
    stalled by definition (Procrastinate sets its ``worker_id`` to NULL), and a turn whose
    worker row is gone loses its lease to the lease sweep, so nothing depends on the row."""
    silent = settings.WORKER_STALLED_SECONDS + DEAD_WORKER_KEPT.total_seconds()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM procrastinate_prune_stalled_workers_v1(%s)", [silent])
        (pruned,) = cursor.fetchone()
        cursor.execute(WORKER_NAME_PRUNE_SQL)
    if pruned:
        logger.warning("removed %d dead workers (silent for over %.0f s)", pruned, silent)
    return int(pruned)


# Statuses a job never leaves by itself ("aborting" is legacy, unused since Procrastinate 3.0).
FINISHED_STATUSES = ("succeeded", "failed", "cancelled", "aborted")
JOBS_PRUNE_BATCH_SIZE = 5_000

# A job's finished time is its last event; one without events (never expected: events go only
# with their job) counts as finished long ago. NOT EXISTS walks procrastinate_events by its job_id
# index. Rows are locked FOR UPDATE (not NO KEY) because they are deleted; SKIP LOCKED leaves a
# job some worker or a concurrent prune holds to the next run instead of waiting on it.
_FINISHED_BEFORE = """
    SELECT job.id FROM procrastinate_jobs job
    WHERE job.status = ANY(%(statuses)s::procrastinate_job_status[])
      AND NOT EXISTS (
          SELECT 1 FROM procrastinate_events event
          WHERE event.job_id = job.id AND event.at >= %(cutoff)s
      )
"""


@dataclass
class JobsPruneResult:
    jobs_deleted: int = 0
    events_deleted: int = 0
    periodic_defers_deleted: int = 0
    batches: int = 0


def finished_jobs_prune(
    *,
    older_than_days: int,
    batch_size: int = JOBS_PRUNE_BATCH_SIZE,
    dry_run: bool = False,
) -> JobsPruneResult:
    """Delete finished jobs (succeeded, failed, cancelled, aborted) whose last event is older
    than ``older_than_days``, with their events and periodic-defer rows: one short transaction per
    batch of ``batch_size`` jobs, looping until none is left, so a large backlog never holds
    locks for long and an interrupted run resumes where it stopped. ``dry_run`` counts only."""
    if older_than_days < 1:
        raise ValueError("older_than_days must be at least 1")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    parameters: dict[str, Any] = {
        "statuses": list(FINISHED_STATUSES),
        "cutoff": timezone.now() - timedelta(days=older_than_days),
    }
    result = JobsPruneResult()
    if dry_run:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM ({_FINISHED_BEFORE}) finished", parameters)
            result.jobs_deleted = cursor.fetchone()[0]
        return result
    # Each batch starts after the last id of the previous one, so the primary key's index walks
    # the table once in all instead of rescanning the jobs kept (recent or running) every batch.
    after_id = 0
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                f"{_FINISHED_BEFORE} AND job.id > %(after_id)s "
                "ORDER BY job.id LIMIT %(limit)s FOR UPDATE SKIP LOCKED",
                {**parameters, "after_id": after_id, "limit": batch_size},
            )
            ids = [row[0] for row in cursor.fetchall()]
            if not ids:
                return result
            after_id = ids[-1]
            # procrastinate_periodic_defers references jobs without ON DELETE: its rows go first.
            cursor.execute(
                "DELETE FROM procrastinate_periodic_defers WHERE job_id = ANY(%s)", [ids]
            )
            result.periodic_defers_deleted += cursor.rowcount
            cursor.execute("DELETE FROM procrastinate_events WHERE job_id = ANY(%s)", [ids])
            result.events_deleted += cursor.rowcount
            cursor.execute("DELETE FROM procrastinate_jobs WHERE id = ANY(%s)", [ids])
            result.jobs_deleted += cursor.rowcount
        result.batches += 1
        if len(ids) < batch_size:
            return result

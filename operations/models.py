from __future__ import annotations

from django.db import models


class WorkerName(models.Model):
    """Which kind of worker (``run_worker --name``: turns, background) a Procrastinate worker is.

    Procrastinate's ``procrastinate_workers`` rows carry only an id and a heartbeat; ``/readyz``
    joins them with this to say which kind is alive. Rows of workers Procrastinate has deleted
    (stopped, or pruned as stalled) are removed when the next worker registers.
    """

    worker_id = models.BigIntegerField(primary_key=True)
    name = models.CharField(max_length=100)
    registered_at = models.DateTimeField(auto_now_add=True)
    # Where the worker runs, for the dashboard's workers table. Database defaults: rows written
    # before these columns existed, or by a worker of the previous release, still insert.
    host = models.CharField(max_length=255, blank=True, db_default="")
    pid = models.IntegerField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} (worker {self.worker_id})"

"""Procrastinate entry points of the conversations app: the lease sweeper.

Turns are not Procrastinate jobs: the turn worker takes them from the thread rows
(``operations.turn_worker``). Each job function is named after the service it runs with ``_job``;
the registered names stay as they were, because periodic ids in the database carry them.
"""

from __future__ import annotations

import logging

from procrastinate.contrib.django import app

from conversations.services import thread_leases_sweep

logger = logging.getLogger(__name__)


@app.periodic(cron="* * * * *", periodic_id="conversations.sweep_expired_leases")
@app.task(
    name="conversations.tasks.sweep_expired_leases",
    queueing_lock="conversations.sweep_expired_leases",
)
def thread_leases_sweep_job(timestamp: int) -> None:
    result = thread_leases_sweep()
    if result.requeued or result.stopped:
        logger.info(
            "lease sweep: %d threads back to created, %d stopped",
            len(result.requeued),
            len(result.stopped),
        )

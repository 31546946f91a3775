"""Procrastinate entry points of the conversations app.

``conversations.tasks.run_thread`` is the stable task name spawning enqueues (the services defer
it by that name); what it runs is the ``THREAD_RUNNER`` setting, so this app never imports the
engine. Each job function is named after the service it runs with ``_job``; the registered names
stay as they were, because queued jobs and periodic ids in the database carry them.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError
from django.utils.module_loading import import_string
from procrastinate import RetryStrategy
from procrastinate.contrib.django import app
from procrastinate.exceptions import ConnectorException

from conversations.errors import ThreadBusy
from conversations.services import RUN_THREAD_QUEUE, RUN_THREAD_TASK, thread_leases_sweep

logger = logging.getLogger(__name__)


# A run that fails on the database (an outage, a restart) or on a thread row that stays locked
# is run again with backoff (2, 4, 8 ... 256 s): without it, a thread spawned just before an
# outage would stay `created` with no job to run it (the lease sweeper only sees running threads).
# Running it again is harmless: the claim is a compare-and-set and the runner resumes from its
# checkpoint.
RUN_THREAD_RETRY = RetryStrategy(
    max_attempts=8,
    exponential_wait=2,
    # ConnectorException: a database error met while deferring a follow-up run.
    retry_exceptions=[DatabaseError, ConnectorException, ThreadBusy],
)


@app.task(name=RUN_THREAD_TASK, queue=RUN_THREAD_QUEUE, retry=RUN_THREAD_RETRY)
def thread_run_job(thread_id: str) -> None:
    try:
        runner = import_string(settings.THREAD_RUNNER)
    except ImportError as error:
        raise ImproperlyConfigured(
            f"THREAD_RUNNER {settings.THREAD_RUNNER!r} cannot be imported: {error}"
        ) from error
    runner(thread_id=thread_id)


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

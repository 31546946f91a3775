"""A thread's run job, deferred in the caller's transaction so it exists iff the caller commits;
at most one waits per thread (its queueing lock)."""

from __future__ import annotations

import uuid

from django.db import transaction
from procrastinate.contrib.django import app as procrastinate_app
from procrastinate.exceptions import AlreadyEnqueued

from core.log_context import job_args

# The task conversations.tasks registers to run a thread; THREAD_RUNNER says what it runs.
RUN_THREAD_TASK = "conversations.tasks.run_thread"
RUN_THREAD_QUEUE = "threads"


def thread_run_enqueue(thread_id: uuid.UUID, *, new_thread: bool = False) -> bool:
    """Enqueue the thread's run in the surrounding transaction (so it exists iff we commit);
    False when a run of it was already waiting for a worker.

    ``new_thread``: the thread was inserted by this transaction, so no run of it can be waiting.
    """
    # By name: conversations.tasks imports the services, so the services cannot import it.
    run = procrastinate_app.configure_task(
        name=RUN_THREAD_TASK,
        queue=RUN_THREAD_QUEUE,
        queueing_lock=thread_run_queueing_lock(thread_id),
    )
    if new_thread:
        # No savepoint: the queueing lock names a thread nobody else can see before we commit,
        # so the queueing-lock index cannot refuse it.
        run.defer(thread_id=str(thread_id), **job_args())
        return True
    try:
        # Own savepoint: a duplicate queueing lock is a unique violation that must not abort
        # the caller's transaction.
        with transaction.atomic():
            run.defer(thread_id=str(thread_id), **job_args())
    except AlreadyEnqueued:
        # A run of this thread is already waiting for a worker; one is enough.
        return False
    return True


def thread_run_queueing_lock(thread_id: uuid.UUID) -> str:
    """The queueing lock of the thread's run jobs (at most one waiting per thread)."""
    return f"thread-run:{thread_id}"

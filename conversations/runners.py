"""Thread runners that ``THREAD_RUNNER`` can name. The reference runner lives in ``engine``.

A runner is called by the turn worker as ``runner(thread=..., worker_id=...)`` for a thread the
worker has just claimed from the threads queue (its lease is held by ``worker_id``); it runs one
turn and records its outcome.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.db.models.functions import Now

from conversations.models import Thread, ThreadState
from conversations.services.lifecycle import lease_released_fields

logger = logging.getLogger(__name__)


def wait_for_external_engine(*, thread: Thread, worker_id: str) -> None:
    """Leave threads to external engines (``POST /api/v1/threads/next``): a turn worker whose
    ``THREAD_RUNNER`` is this claims nothing, so threads stay ``created`` until an engine claims
    them over the REST API. Called anyway, it hands the thread back to the queue."""
    Thread.objects.filter(pk=thread.pk, state=ThreadState.RUNNING, lease_owner=worker_id).update(
        **lease_released_fields(ThreadState.CREATED), updated_at=Now()
    )
    logger.info("thread %s is waiting for an external engine to claim it", thread.pk)


def runner_claims_threads(runner: Callable[..., Any]) -> bool:
    """Whether a turn worker with this runner takes threads from the queue."""
    return runner is not wait_for_external_engine

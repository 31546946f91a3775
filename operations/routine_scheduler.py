"""The routines scheduler, run by every background worker beside its Procrastinate worker: every
``ROUTINE_TICK_SECONDS`` it fires the routines whose slots have come.

Any number of workers may run it at once: each routine is fired under its row lock (``SKIP
LOCKED``) and each slot's firing is unique (``routines.firing``), so they share the work
instead of repeating it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection

from routines.clock import scheduler_now
from routines.services import routines_fire_due

logger = logging.getLogger(__name__)

# The queue whose workers run the scheduler: the background workers' (operations.workers).
SCHEDULER_QUEUE = "default"
# While passes keep failing, a warning this often at most.
FAILURE_WARNING_INTERVAL_S = 60.0


async def routines_fired_until(running: asyncio.Future[Any]) -> None:
    """Fire due routines now, then every ``ROUTINE_TICK_SECONDS``, until ``running`` (the
    worker) ends. A pass that fails (the database is away) is logged and tried next tick."""
    # A thread of its own: on the jobs' executor, a slow job would delay every routine.
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="routines")
    fire_due = sync_to_async(_routines_fire_due_once, thread_sensitive=False, executor=executor)
    failing_since: float | None = None
    last_warned = 0.0
    try:
        while not running.done():
            try:
                await fire_due()
                if failing_since is not None:
                    logger.info(
                        "routines fired again after %.0f s", time.monotonic() - failing_since
                    )
                    failing_since = None
            except Exception as error:
                # Once when it starts failing, then once a minute: not once a tick per worker
                # for as long as the database is away.
                now = time.monotonic()
                if failing_since is None:
                    failing_since = now
                if now - last_warned >= FAILURE_WARNING_INTERVAL_S or last_warned < failing_since:
                    logger.warning("routines not fired: %s", error)
                    last_warned = now
            await asyncio.wait({running}, timeout=settings.ROUTINE_TICK_SECONDS)
    finally:
        executor.shutdown(wait=False)


def _routines_fire_due_once() -> None:
    try:
        result = routines_fire_due(now=scheduler_now())
        if result.routines or result.failed:
            logger.debug("scheduler pass: %s", result)
    finally:
        # Between passes the thread holds no connection (nor a pooled one out of the pool), and
        # one broken by an outage is not reused by the next pass.
        connection.close()

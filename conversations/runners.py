"""Thread runners that ``THREAD_RUNNER`` can name. The reference runner lives in ``engine``.

A runner is called by the turn worker as ``runner(thread=..., worker_id=...)`` for a thread the
worker has just claimed from the threads queue (its lease is held by ``worker_id``); it runs one
turn and records its outcome.

When the worker stops, it asks its turns to end early through ``current_turn_stop()``: a runner
that honours it (the reference runner does) checkpoints, writes nothing more and returns without
an outcome, and the worker then gives the thread's lease back (``thread_lease_give_up``), so the
next claim resumes the turn from that checkpoint at once. A runner that ignores it runs to its
end, as before.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
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


class TurnStop:
    """A turn worker's request that the turns it runs end now, unfinished: set once, when the
    worker stops. Runners read it through ``current_turn_stop()``."""

    def __init__(self) -> None:
        self._requested = threading.Event()
        self._lock = threading.Lock()
        self._wakers: set[threading.Event] = set()

    @property
    def requested(self) -> bool:
        return self._requested.is_set()

    def request(self) -> None:
        with self._lock:
            self._requested.set()
            wakers = list(self._wakers)
        for waker in wakers:
            waker.set()

    @contextmanager
    def waking(self, event: threading.Event) -> Iterator[None]:
        """Set ``event`` when the stop is requested (at once if it was already), while inside:
        a runner waiting on it for other reasons (a model call's end) sees the stop without
        polling."""
        with self._lock:
            self._wakers.add(event)
            requested = self._requested.is_set()
        if requested:
            event.set()
        try:
            yield
        finally:
            with self._lock:
                self._wakers.discard(event)


_turn_stop: ContextVar[TurnStop | None] = ContextVar("turn_stop", default=None)


@contextmanager
def turn_stop_scope(stop: TurnStop) -> Iterator[None]:
    """Run the runner called inside under ``stop`` (the turn worker's, around each turn)."""
    token = _turn_stop.set(stop)
    try:
        yield
    finally:
        _turn_stop.reset(token)


def current_turn_stop() -> TurnStop | None:
    """The stop request of the turn worker running this turn; None outside a turn worker."""
    return _turn_stop.get()

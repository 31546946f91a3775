"""The connection pool's side of healing from a database outage: quick to notice, quick to
recover.

- **Recover.** psycopg_pool retries a failed connection with exponential backoff (1, 2, 4, 8 s
  ...), so after an outage of 20 s its next attempt could be 15 s after the database is back,
  and every request waits for it. ``HealingConnectionPool`` caps the wait between attempts at
  ``RECONNECT_MAX_DELAY``: the pool is serving again within about a second of the database.
- **Notice.** A request that finds no connection in the pool within ``REQUEST_WAIT_SLICE``
  asks whether the database is reachable (one direct connection attempt per ``PROBE_INTERVAL``
  for the process): if not, it fails at once and the breaker opens for the others; if so (the
  pool is only busy, or still reconnecting), it keeps waiting up to the pool's timeout. Workers
  wait the whole timeout as before, so a turn rides out a short restart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from psycopg_pool import ConnectionPool, PoolTimeout
from psycopg_pool.base import AttemptWithBackoff

from core.database_breaker import DatabaseKnownDown, request_fails_fast

RECONNECT_MAX_DELAY = 0.5
REQUEST_WAIT_SLICE = 0.05
REQUEST_WAIT_LONG_SLICE = 1.0
PROBE_INTERVAL = 0.5


class _CappedBackoff(AttemptWithBackoff):
    def update_delay(self, now: float) -> None:
        super().update_delay(now)
        self.delay = min(self.delay, RECONNECT_MAX_DELAY)


class HealingConnectionPool(ConnectionPool):
    """psycopg_pool's pool, retrying a lost database every ``RECONNECT_MAX_DELAY`` seconds, and
    failing a request's wait at once when the database is unreachable.

    ``reachable``: a direct connection attempt (True when the database answered).
    """

    def __init__(self, *args: Any, reachable: Callable[[], bool], **kwargs: Any):
        self._reachable = reachable
        self._probe_lock = threading.Lock()
        self._probed_at = 0.0
        self._probed_reachable = True
        super().__init__(*args, **kwargs)

    # psycopg_pool's own reconnection step (private, stable since psycopg_pool 3.1): it makes
    # the attempt object on a first failure and reuses it for the retries, so ours caps them all.
    def _add_connection(self, attempt: AttemptWithBackoff | None, growing: bool = False) -> None:
        if attempt is None:
            attempt = _CappedBackoff(timeout=self.reconnect_timeout)
        super()._add_connection(attempt, growing=growing)

    def getconn(self, timeout: float | None = None) -> Any:
        """As psycopg_pool's, but a request (``request_fails_fast``) that finds no connection
        within ``REQUEST_WAIT_SLICE`` learns whether the database is reachable: if not, it raises
        ``DatabaseKnownDown`` at once; if so (the pool is busy or reconnecting), it waits on, in
        slices of ``REQUEST_WAIT_LONG_SLICE`` so that an outage meanwhile is noticed too."""
        if timeout is not None or not request_fails_fast():
            return super().getconn(timeout)
        deadline = time.monotonic() + self.timeout
        wait = REQUEST_WAIT_SLICE
        while True:
            remaining = deadline - time.monotonic()
            try:
                return super().getconn(max(0.001, min(wait, remaining)))
            except PoolTimeout:
                if remaining <= wait:
                    raise
                if not self._recently_reachable():
                    raise DatabaseKnownDown(
                        "the database is unreachable; not waiting for the pool"
                    ) from None
            wait = REQUEST_WAIT_LONG_SLICE

    def _recently_reachable(self) -> bool:
        """The latest direct probe's answer: one probe per ``PROBE_INTERVAL`` for all the
        requests waiting, so a busy pool does not become a connection attempt per request."""
        with self._probe_lock:
            now = time.monotonic()
            if now - self._probed_at < PROBE_INTERVAL:
                return self._probed_reachable
            self._probed_at = now
        reachable = self._reachable()
        with self._probe_lock:
            self._probed_reachable = reachable
        return reachable

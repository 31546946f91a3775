"""Fail fast while the database is known to be down (a circuit breaker for requests).

Without it, every request during an outage waits ``DATABASE_POOL_TIMEOUT`` for a pooled
connection before its 503. Once a request has found the database unreachable (the pool gave up
and a direct connection failed too, so an exhausted pool does not count), the process is "down
until" now + ``DATABASE_FAIL_FAST_SECONDS``: requests that need a connection meanwhile get their
503 at once. After that, one request probes with a direct connection (``DATABASE_CONNECT_TIMEOUT``
at most) while the others keep failing fast; its success closes the breaker for everyone.

Only requests fail fast (``DatabaseUnavailableMiddleware`` marks them): workers keep waiting out
the pool timeout, so a turn in flight rides out a short database restart instead of failing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import psycopg
from django.conf import settings

logger = logging.getLogger(__name__)

_in_request: ContextVar[bool] = ContextVar("database_breaker_in_request", default=False)


class DatabaseKnownDown(psycopg.OperationalError):
    """Raised instead of waiting for a connection while the database is known to be down."""


class DatabaseBreaker:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open = False
        self._down_until = 0.0

    @property
    def is_open(self) -> bool:
        return self._open

    def before_connect(self, probe: Any) -> None:
        """Raise ``DatabaseKnownDown`` while the breaker is open, except for the one caller per
        interval that probes the database with ``probe()`` (which raises if it is still down)."""
        if not self._open or not _in_request.get():
            return
        with self._lock:
            now = time.monotonic()
            if now < self._down_until:
                raise DatabaseKnownDown("the database is unreachable; not waiting for it")
            # This caller probes; the others fail fast until it has an answer.
            self._down_until = now + settings.DATABASE_FAIL_FAST_SECONDS
        try:
            probe()
        except psycopg.Error as error:
            self.record_failure()
            raise DatabaseKnownDown(f"the database is still unreachable: {error}") from error
        self.record_success()

    def record_failure(self) -> None:
        if settings.DATABASE_FAIL_FAST_SECONDS <= 0:
            return
        with self._lock:
            if not self._open:
                logger.warning(
                    "database unreachable: requests answer 503 at once, probing every %.1f s",
                    settings.DATABASE_FAIL_FAST_SECONDS,
                )
            self._open = True
            self._down_until = time.monotonic() + settings.DATABASE_FAIL_FAST_SECONDS

    def record_success(self) -> None:
        if self._open:
            with self._lock:
                if self._open:
                    logger.warning("database reachable again: requests use it as usual")
                self._open = False


breaker = DatabaseBreaker()


@contextmanager
def failing_fast() -> Iterator[None]:
    """Mark the current request: its connection attempts fail fast while the breaker is open."""
    token = _in_request.set(True)
    try:
        yield
    finally:
        _in_request.reset(token)


def request_fails_fast() -> bool:
    return _in_request.get()

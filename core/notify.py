"""Wake long-polling requests when the database says something changed, without holding a pooled
connection while they wait.

One daemon thread per process LISTENs on a dedicated connection (outside Django's pool) and
wakes the request threads waiting for a key on a channel. Triggers send the notifications
(``pg_notify`` runs at commit, so a woken request always sees the committed row). Waiting is
also bounded by a short poll interval, so a lost notification (listener reconnecting after a
database restart) costs at most that interval, never a missed reply.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

import psycopg
from django.conf import settings
from django.db import connection, connections

logger = logging.getLogger(__name__)

ENTRIES_CHANNEL = "ironclaw_entries"
THREADS_CHANNEL = "ironclaw_threads"
CHANNELS = (ENTRIES_CHANNEL, THREADS_CHANNEL)
# The model's text as it is produced (engine.deltas), never stored: each payload is
# "<conversation_id or -> <thread_id> <json>". Not among CHANNELS: no long-poll waits on it.
DELTAS_CHANNEL = "ironclaw_deltas"
# How often the listener looks up from its connection to see whether it should stop.
STOP_CHECK_S = 1.0
# Any key on a channel: a waiter for every tenant's threads.
ANY = "*"

T = TypeVar("T")


class _Listener:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[tuple[str, str], set[threading.Event]] = defaultdict(set)
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def stop(self) -> None:
        """Close the listening connection and end its thread (the next waiter starts another)."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._stopping.set()
            thread.join(timeout=2 * STOP_CHECK_S + 1)
            self._stopping.clear()

    def _ensure_started(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="notify", daemon=True)
                self._thread.start()

    @contextmanager
    def waiting(self, channel: str, key: str) -> Iterator[threading.Event]:
        event = threading.Event()
        self._ensure_started()
        with self._lock:
            self._waiters[(channel, key)].add(event)
        try:
            yield event
        finally:
            with self._lock:
                waiters = self._waiters[(channel, key)]
                waiters.discard(event)
                if not waiters:
                    del self._waiters[(channel, key)]

    def _wake(self, channel: str, key: str) -> None:
        with self._lock:
            events = [
                *self._waiters.get((channel, key), ()),
                *self._waiters.get((channel, ANY), ()),
            ]
        for event in events:
            event.set()

    def _wake_all(self) -> None:
        with self._lock:
            events = [event for waiters in self._waiters.values() for event in waiters]
        for event in events:
            event.set()

    def _connect(self) -> psycopg.Connection:
        params = connections["default"].get_connection_params()
        params.pop("pool", None)
        params.pop("cursor_factory", None)
        params.pop("context", None)
        params.pop("prepare_threshold", None)
        return psycopg.connect(**params, autocommit=True)

    def _run(self) -> None:
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                with self._connect() as listen:
                    for channel in CHANNELS:
                        listen.execute(f"LISTEN {channel}")
                    backoff = 0.5
                    # Anything committed while we were not listening: let waiters look again.
                    self._wake_all()
                    while not self._stopping.is_set():
                        for notice in listen.notifies(timeout=STOP_CHECK_S):
                            self._wake(notice.channel, notification_key(notice))
            except Exception as error:
                logger.warning(
                    "notification listener lost its connection (%s); reconnecting", error
                )
                self._wake_all()
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 10.0)


def notification_key(notice: psycopg.Notify) -> str:
    """Whom a notification is for. An entry's payload is "<conversation id> <entry as JSON>";
    a claimable thread's is the tenant's user id, whole (it may contain spaces)."""
    if notice.channel == ENTRIES_CHANNEL:
        return notice.payload.split(" ", 1)[0]
    return notice.payload


_listener = _Listener()


def listening(channel: str, key: str) -> AbstractContextManager[threading.Event]:
    """An event set by every notification for ``key`` on ``channel`` (every key with ``ANY``),
    and whenever the listener (re)connects; the caller clears it before it looks again."""
    return _listener.waiting(channel, key)


def listener_stop() -> None:
    """Stop this process's listener (tests that must drop their database call it)."""
    _listener.stop()


def client_gone(request: Any) -> Callable[[], bool]:
    """Whether the client of ``request`` has hung up, as the web server sees it.

    waitress (with ``channel_request_lookahead``) puts ``waitress.client_disconnected`` in the
    WSGI environ; elsewhere (the test client, another server) the answer is always "no".
    """
    disconnected = request.META.get("waitress.client_disconnected")
    return disconnected if callable(disconnected) else _never


def _never() -> bool:
    return False


def wait_for(
    channel: str,
    key: str,
    *,
    timeout: float,
    check: Callable[[], T | None],
    abandoned: Callable[[], bool] = _never,
) -> T | None:
    """Call ``check`` until it returns something or ``timeout`` seconds pass, waking on
    notifications for ``key`` (or any key) on ``channel``. The calling thread's database
    connection is returned to the pool between checks.

    ``abandoned`` is asked before every check: once it says the client has gone,
    the wait ends with None, so a check with effects (a claim) is never made for nobody and the
    thread serves someone else."""
    if timeout <= 0:
        return check()
    deadline = time.monotonic() + timeout
    with _listener.waiting(channel, key) as woken:
        # Registered before the first check: a notification sent after it is not missed.
        while True:
            if abandoned():
                return None
            found = check()
            remaining = deadline - time.monotonic()
            if found is not None or remaining <= 0:
                return found
            connection.close()
            # Re-checked at least this often, whatever the listener's health.
            woken.wait(min(remaining, settings.NOTIFY_FALLBACK_POLL_SECONDS))
            woken.clear()

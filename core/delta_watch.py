"""Token deltas and step events' notifications only for the tenants someone follows.

A token delta is a ``NOTIFY``, and so is each event a turn records; PostgreSQL wakes every
listening session of the database for every notification, whoever listens to its channel. Most
turns have nobody watching them live, so a turn worker publishes a tenant's deltas, and notifies
its step events (``engine.checkpoint``; the events are recorded all the same), only while one of
its streams is open somewhere.

The web processes that serve streams say so: a stream that follows deltas announces its tenant
on ``ironclaw_watch`` when it opens, and its process announces the tenants of all its open
streams every ``ANNOUNCE_S`` while they stay open (one statement for all of them). A turn worker
(``watch_start``) hears the announcements on its process's listening connection and keeps, for
each tenant, when it last heard of it: a tenant is followed for ``EXPIRES_S`` after that (one lost
announcement is forgiven). Whenever it cannot know, it publishes: the watch is not started (a
test, a one-off ``drain``), its listener is reconnecting, or it has listened for less than
``SETTLED_S`` (an announcement of a stream opened earlier may not have come round yet).

Deltas are a courtesy, never the record: a stream that opens mid-step gets the step's text from
the worker's next delta on (offset 0, the whole text so far), and every reply is in the
conversation's entries anyway. Deltas that external engines send through the API
(``POST threads/{id}/deltas``) always go out: the engine asked for them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from django.db import connection

from core import notify
from core.db import server_bound_cursor

logger = logging.getLogger(__name__)

# How often a web process announces the tenants of its open streams (one statement, one
# notification, however many they are).
ANNOUNCE_S = 4.0
# A listener this long on the channel has heard an announcement of every stream open meanwhile.
SETTLED_S = ANNOUNCE_S + 1.0
# How long a tenant counts as followed after its last announcement (one may be lost or late).
EXPIRES_S = 2 * ANNOUNCE_S + 2.0

_ANNOUNCE_SQL = (
    "SELECT pg_notify(%s, 'watch ' || json_build_object('user_id', tenant)::text)"
    " FROM unnest(%s::text[]) AS tenant"
)


def announce(user_ids: Iterable[str]) -> None:
    """Tell the turn workers that ``user_ids``' deltas are followed (one statement, on this
    thread's connection; sent when it commits)."""
    tenants = sorted(set(user_ids))
    if tenants:
        with server_bound_cursor() as cursor:
            cursor.execute(_ANNOUNCE_SQL, [notify.WATCH_CHANNEL, tenants])


class _Announcer:
    """A web process's daemon thread announcing, every ``ANNOUNCE_S``, the tenants that
    ``followed()`` names (its open streams'), started by the first stream."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._followed: Callable[[], Iterable[str]] | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self, followed: Callable[[], Iterable[str]]) -> None:
        with self._lock:
            self._followed = followed
            if self._thread is None or not self._thread.is_alive():
                self._stopping.clear()
                self._thread = threading.Thread(target=self._run, name="delta-watch", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        self._stopping.set()
        if thread is not None:
            thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stopping.wait(ANNOUNCE_S):
            followed = self._followed
            try:
                if followed is not None:
                    announce(followed())
            except Exception as error:
                # The database is down: the next round tries again (deltas are a courtesy).
                logger.warning("could not announce the tenants followed live: %s", error)
            finally:
                connection.close()


class _Watch:
    """A turn worker's view of the announcements: who is followed, as far as it can tell."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._heard: dict[str, float] = {}
        self._started = False

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        notify.subscribe(notify.WATCH_CHANNEL, notify.ANY, self._announced)

    def _announced(self, channel: str, key: str, data: dict[str, Any] | None) -> None:
        user_id = data.get("user_id") if data else None
        if not isinstance(user_id, str):
            return
        now = time.monotonic()
        with self._lock:
            self._heard[user_id] = now
            if len(self._heard) > 1000:
                self._heard = {u: t for u, t in self._heard.items() if now - t < EXPIRES_S}

    def followed(self, user_id: str) -> bool:
        if not self._started:
            return True
        since = notify.listening_since(notify.WATCH_CHANNEL)
        now = time.monotonic()
        if since is None or now - since < SETTLED_S:
            return True
        with self._lock:
            heard = self._heard.get(user_id)
        return heard is not None and now - heard < EXPIRES_S


_announcer = _Announcer()
_watch = _Watch()


def announcer_start(followed: Callable[[], Iterable[str]]) -> None:
    """Announce ``followed()`` every ``ANNOUNCE_S`` from now on, on a thread of this process's
    own (idempotent; the latest ``followed`` is the one asked)."""
    _announcer.start(followed)


def announcer_stop() -> None:
    """Stop announcing (the process is stopping, or a test is done)."""
    _announcer.stop()


def watch_start() -> None:
    """Hear the announcements in this process from now on (a turn worker calls it once)."""
    _watch.start()


def tenant_followed(user_id: str) -> bool:
    """Whether ``user_id``'s deltas and step events should be notified: someone follows the
    tenant live, or this process cannot tell that nobody does."""
    return _watch.followed(user_id)

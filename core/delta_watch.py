"""Token deltas and step events' notifications only for the tenants someone follows.

A token delta is a ``NOTIFY``, and so is each event a turn records; PostgreSQL wakes every
listening session of the database for every notification, whoever listens to its channel. Most
turns have nobody watching them live, so a turn worker publishes a tenant's deltas, and notifies
its step events (``engine.checkpoint``; the events are recorded all the same), only while one of
its streams is open somewhere.

The web processes that serve streams say so: a stream announces its tenant on
``ironclaw_watch`` when it opens, and its process announces the tenants of all its open streams
every ``ANNOUNCE_S`` while they stay open (one statement, as few notifications as the tenant
ids fit in, on a connection made for the round). A turn worker (``watch_start``) hears the
announcements on its process's listening connection and keeps, for each tenant, when it last
heard of it: a tenant is followed for ``EXPIRES_S`` after that (late or lost announcements are
forgiven).

Whenever the worker cannot know, it publishes: the watch is not started (a test, a one-off
``drain``), its listener has listened for less than ``SETTLED_S`` (an announcement of a stream
opened earlier may not have come round yet) or is reconnecting, or it has not heard its own
``ping`` lately. The turn worker pings on every heartbeat (``ping``, from another connection):
a listener that does not hear it (a half-open connection, a LISTEN through a transaction pooler)
cannot be trusted to hear announcements either.

Deltas are a courtesy, never the record: a stream that opens mid-step gets the step's text so far
with the worker's next delta, and every reply is in the conversation's entries anyway. Deltas
that external engines send through the API (``POST threads/{id}/deltas``) always go out: the
engine asked for them.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings

from core import notify

logger = logging.getLogger(__name__)

# How often a web process announces the tenants of its open streams.
ANNOUNCE_S = 4.0
# A listener this long on the channel has heard an announcement of every stream open meanwhile.
SETTLED_S = ANNOUNCE_S + 2.0
# How long a tenant counts as followed after its last announcement (two may be late or lost).
EXPIRES_S = 3 * ANNOUNCE_S

# Tenants announced together, in as few notifications as fit: each 'watch {"user_ids": [...]}'
# stays under PostgreSQL's 8,000-byte payload limit (a tenant id takes at most about 1,000).
PAYLOAD_MAX_BYTES = 7800


def announcements(user_ids: Iterable[str]) -> list[str]:
    """The payloads that announce ``user_ids``, as few as fit (none for none)."""
    payloads: list[str] = []
    batch: list[str] = []
    size = 0
    for user_id in sorted(set(user_ids)):
        encoded = len(json.dumps(user_id, ensure_ascii=False).encode()) + 2  # and ", "
        if batch and size + encoded > PAYLOAD_MAX_BYTES:
            payloads.append(_payload(batch))
            batch, size = [], 0
        batch.append(user_id)
        size += encoded
    if batch:
        payloads.append(_payload(batch))
    return payloads


def _payload(user_ids: list[str]) -> str:
    return "watch " + json.dumps({"user_ids": user_ids}, ensure_ascii=False)


def announce(user_ids: Iterable[str]) -> None:
    """Tell the turn workers that ``user_ids``' deltas are followed: one statement on this
    thread's connection, delivered when it commits (at once in autocommit)."""
    notify.notify_many(notify.WATCH_CHANNEL, announcements(user_ids))


class _Announcer:
    """A web process's daemon thread announcing, every ``ANNOUNCE_S`` on the clock (not after
    each round), the tenants that ``followed()`` names (its open streams'), on a connection
    made for the round: no wait for a busy pool, and no connection held between rounds.
    Started by the first stream."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._followed: Callable[[], Iterable[str]] | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self, followed: Callable[[], Iterable[str]]) -> None:
        with self._lock:
            self._followed = followed
            if self._thread is None or not self._thread.is_alive():
                self._stopping = threading.Event()
                self._thread = threading.Thread(
                    target=self._run, args=(self._stopping,), name="delta-watch", daemon=True
                )
                self._thread.start()

    def stop(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            self._stopping.set()
        if thread is not None:
            thread.join(timeout=5)

    def _run(self, stopping: threading.Event) -> None:
        due = time.monotonic() + ANNOUNCE_S
        while not stopping.wait(max(0.0, due - time.monotonic())):
            due = max(due + ANNOUNCE_S, time.monotonic())
            try:
                followed = self._followed
                payloads = announcements(followed()) if followed is not None else []
                if payloads:
                    # Connected for the round only: an open stream holds no connection.
                    with notify.dedicated_connection() as own:
                        own.execute(notify.NOTIFY_MANY_ASYNC_SQL, [notify.WATCH_CHANNEL, payloads])
            except Exception as error:
                # The database is down: the next round tries again (deltas are a courtesy).
                logger.warning("could not announce the tenants followed live: %s", error)


class _Watch:
    """A turn worker's view of the announcements: who is followed, as far as it can tell."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._heard: dict[str, float] = {}
        self._next_prune = 0.0
        self._token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._pinged: float | None = None
        self._unsubscribe: Callable[[], None] | None = None

    @property
    def started(self) -> bool:
        return self._unsubscribe is not None

    def start(self) -> None:
        with self._lock:
            if self._unsubscribe is not None:
                return
            self._pinged = None
            self._unsubscribe = notify.subscribe(notify.WATCH_CHANNEL, notify.ANY, self._heard_of)

    def stop(self) -> None:
        with self._lock:
            unsubscribe, self._unsubscribe = self._unsubscribe, None
            self._heard.clear()
        if unsubscribe is not None:
            unsubscribe()

    def ping(self) -> None:
        """Notify this watch's own token from this thread's connection (autocommit): hearing it
        shows that the listener hears what other connections send."""
        if self.started:
            ping = "ping " + json.dumps({"ping": self._token})
            notify.notify_many(notify.WATCH_CHANNEL, [ping])

    def _heard_of(self, channel: str, key: str, data: dict[str, Any] | None) -> None:
        if not data:
            return
        now = time.monotonic()
        user_ids = data.get("user_ids")
        with self._lock:
            if data.get("ping") == self._token:
                self._pinged = now
            elif isinstance(user_ids, list):
                self._heard.update((u, now) for u in user_ids if isinstance(u, str))
                if now >= self._next_prune:
                    self._heard = {u: t for u, t in self._heard.items() if now - t < EXPIRES_S}
                    self._next_prune = now + EXPIRES_S

    def followed(self, user_id: str) -> bool:
        if not self.started:
            return True
        since = notify.listening_since(notify.WATCH_CHANNEL)
        now = time.monotonic()
        if since is None or now - since < SETTLED_S:
            return True
        with self._lock:
            pinged, heard = self._pinged, self._heard.get(user_id)
        if pinged is None or now - pinged > _ping_fresh_s():
            return True
        return heard is not None and now - heard < EXPIRES_S


def _ping_fresh_s() -> float:
    """How recent the worker's last ping heard must be: three heartbeats and a settling, but
    never more than a minute (with slower heartbeats the worker simply always publishes)."""
    return min(3 * settings.WORKER_HEARTBEAT_SECONDS + SETTLED_S, 60.0)


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
    """Hear the announcements in this process from now on (a turn worker, as it starts)."""
    _watch.start()


def watch_stop() -> None:
    """Stop hearing them (the turn worker has stopped): deltas go out again unconditionally."""
    _watch.stop()


def watch_ping() -> None:
    """The started watch's ping (the turn worker's heartbeat sends it); nothing otherwise."""
    _watch.ping()


def tenant_followed(user_id: str) -> bool:
    """Whether ``user_id``'s deltas and step events should be notified: someone follows the
    tenant live, or this process cannot tell that nobody does."""
    return _watch.followed(user_id)

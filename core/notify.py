"""Wake long-polling requests when the database says something changed, without holding a pooled
connection while they wait.

One daemon thread per process LISTENs on a dedicated connection (outside Django's pool) and
wakes the request threads waiting for a key on a channel. Triggers send the notifications
(``pg_notify`` runs at commit, so a woken request always sees the committed row). Waiting is
also bounded by a short poll interval, so a lost notification (listener reconnecting after a
database restart) costs at most that interval, never a missed reply.

A payload is ``"<key>"`` or ``"<key1> <key2> ... <json>"``: leading keys separated by spaces, then
optionally one JSON object (keys contain neither spaces nor ``{``). Each key wakes its waiters,
and so does the whole payload, so an older payload that is one user id with a space in it still
wakes the waiters for that id. Subscribers (``subscribe``: the event streams' hub) are called
with the key and the JSON object, parsed once per notification; ``on_reconnect`` callbacks learn
that notifications may have been lost.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

import psycopg
from django.conf import settings
from django.db import connection, connections

from core.db import server_bound_cursor

logger = logging.getLogger(__name__)

ENTRIES_CHANNEL = "ironclaw_entries"
THREADS_CHANNEL = "ironclaw_threads"
# A thread's events (conversations.event_sql): "<conversation_id or -> <thread_id> <json>".
EVENTS_CHANNEL = "ironclaw_events"
# The model's text as it is produced (engine.deltas), never stored: each payload is
# "<conversation_id or -> <thread_id> <json>".
DELTAS_CHANNEL = "ironclaw_deltas"
# libpq's TCP keepalives on the listening connection: a dead peer is noticed within about a
# minute (30 s idle, then 3 probes 10 s apart), and the listener reconnects.
LISTENER_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}
# A transaction that only notifies writes nothing that lasts, so its commit need not wait for the
# log to reach the disk, as every other commit does (3x the statement's own cost: a
# notification-only commit still flushes). The setting is the transaction's own (set_config's
# is_local), taken once before the first row; the notifications are delivered at commit all the
# same. A WHERE clause for a statement in autocommit, never inside a caller's transaction.
ASYNC_COMMIT_SQL = "(SELECT set_config('synchronous_commit', 'off', true)) IS NOT NULL"
# Several notifications on one channel in one statement, in the array's order.
NOTIFY_MANY_SQL = "SELECT pg_notify(%s, payload) FROM unnest(%s::text[]) AS payload"
NOTIFY_MANY_ASYNC_SQL = f"{NOTIFY_MANY_SQL} WHERE {ASYNC_COMMIT_SQL}"
# An API key revoked or deleted: "key:<id>" (its open streams end).
KEYS_CHANNEL = "ironclaw_keys"
# The tenants whose token deltas an open stream follows, announced by the web processes that
# serve the streams (core.delta_watch): 'watch {"user_ids": ["<tenant>", ...]}', and the turn
# workers' own pings, 'ping {"ping": "<token>"}'.
WATCH_CHANNEL = "ironclaw_watch"
# What every listener listens to; the others only once something in the process subscribes to
# them. Every notification on a channel wakes every process listening to it: a worker, which
# never streams, need not wake for each thread event and token delta of every tenant.
ALWAYS = (ENTRIES_CHANNEL, THREADS_CHANNEL)
# How often the listener looks up from its connection to see whether it should stop, or listen
# to a channel it was asked to (the first subscriber to it waits for that, once per process).
STOP_CHECK_S = 0.25
# How long a first subscriber waits for its channel to be listened to; past it (the listener is
# down), the reconnection's callbacks stand for whatever was missed.
LISTEN_WAIT_S = 5.0
# Any key on a channel: a waiter for every tenant's threads.
ANY = "*"
# Each time it connects, the listener checks that it hears a notification sent from another
# connection (where the pool's go) within this long. Through a transaction pooler it does not:
# its LISTEN ran on a server session the pooler has since handed to others.
HEARING_CHECK_S = 5.0
NOT_HEARING = (
    "the notification listener did not hear a notification sent %.0f s ago: its LISTEN does "
    "not reach a PostgreSQL session of its own. Is DATABASE_URL a transaction pooler "
    "(PgBouncer)? Then set DATABASE_DIRECT_URL to PostgreSQL itself. Until then every wait "
    "falls back to polling (NOTIFY_FALLBACK_POLL_SECONDS)."
)

T = TypeVar("T")
# Called on the listener thread with (channel, key, the payload's JSON object or None): it must
# be quick (hand the work to another thread), must not block, and must not change the object
# (every subscriber of the notification is given the same one).
Subscriber = Callable[[str, str, "dict[str, Any] | None"], None]


def payload_keys(payload: str) -> list[str]:
    """The keys a payload names, each once: its leading words, and the whole payload too (an
    older payload is one key, and a user id may hold a space or a brace)."""
    brace = payload.find("{")
    keys = list(dict.fromkeys((payload if brace < 0 else payload[:brace]).split()))
    if payload not in keys:
        keys.append(payload)
    return keys


def payload_data(payload: str) -> dict[str, Any] | None:
    """The JSON object after a payload's keys; None without one (or with one that is not)."""
    brace = payload.find("{")
    if brace < 0:
        return None
    try:
        data = json.loads(payload[brace:])
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


class _Listener:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[tuple[str, str], set[threading.Event]] = defaultdict(set)
        self._subscribers: dict[tuple[str, str], dict[object, Subscriber]] = defaultdict(dict)
        self._reconnect_callbacks: dict[object, Callable[[], None]] = {}
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        # The channels wanted, and those the current connection listens to (signalled when it
        # listens to more).
        self._wanted: set[str] = set(ALWAYS)
        self._listening: set[str] = set()
        # When the current connection began listening to each of them (time.monotonic()).
        self._since: dict[str, float] = {}
        self._listened = threading.Condition(self._lock)

    def stop(self) -> None:
        """Close the listening connection and end its thread (the next waiter starts another)."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._stopping.set()
            thread.join(timeout=2 * STOP_CHECK_S + 1)
            self._stopping.clear()
        with self._lock:
            self._listening, self._since = set(), {}

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

    def subscribe(self, channel: str, key: str, callback: Subscriber) -> Callable[[], None]:
        token = object()
        self._ensure_started()
        with self._lock:
            self._subscribers[(channel, key)][token] = callback
            if channel not in self._listening:
                self._wanted.add(channel)
                self._listened.wait_for(
                    lambda: channel in self._listening or self._stopping.is_set(),
                    timeout=LISTEN_WAIT_S,
                )

        def unsubscribe() -> None:
            with self._lock:
                subscribers = self._subscribers.get((channel, key))
                if subscribers is not None:
                    subscribers.pop(token, None)
                    if not subscribers:
                        del self._subscribers[(channel, key)]

        return unsubscribe

    def on_reconnect(self, callback: Callable[[], None]) -> Callable[[], None]:
        token = object()
        with self._lock:
            self._reconnect_callbacks[token] = callback

        def forget() -> None:
            with self._lock:
                self._reconnect_callbacks.pop(token, None)

        return forget

    def _notified(self, channel: str, payload: str) -> None:
        keys = payload_keys(payload)
        with self._lock:
            events = [
                event for key in (*keys, ANY) for event in self._waiters.get((channel, key), ())
            ]
            calls = [
                (callback, key)
                for key in keys
                for callback in self._subscribers.get((channel, key), {}).values()
            ]
            # A subscriber for every key hears each notification once, with its first key.
            calls += [
                (callback, keys[0])
                for callback in self._subscribers.get((channel, ANY), {}).values()
            ]
        for event in events:
            event.set()
        # Parsed once, and only for a subscriber: a process that only waits never parses.
        data = payload_data(payload) if calls else None
        for callback, key in calls:
            try:
                callback(channel, key, data)
            except Exception:
                # A subscriber's bug must not pass for a lost connection (or stop the others).
                logger.exception("a notification subscriber failed on %s", channel)

    def _wake_all(self) -> None:
        with self._lock:
            events = [event for waiters in self._waiters.values() for event in waiters]
        for event in events:
            event.set()

    def _reconnected(self) -> None:
        self._wake_all()
        with self._lock:
            callbacks = list(self._reconnect_callbacks.values())
        for callback in callbacks:
            try:
                callback()
            except Exception:
                logger.exception("a notification reconnect callback failed")

    def _listen(self, listen: psycopg.Connection) -> None:
        """LISTEN to the channels wanted that ``listen`` does not listen to yet."""
        with self._lock:
            new = self._wanted - self._listening
        if not new:
            return
        for channel in sorted(new):
            listen.execute(f"LISTEN {channel}")
        now = time.monotonic()
        with self._lock:
            self._listening |= new
            self._since.update(dict.fromkeys(new, now))
            self._listened.notify_all()

    def listening_since(self, channel: str) -> float | None:
        with self._lock:
            return self._since.get(channel) if channel in self._listening else None

    def _connect(self) -> psycopg.Connection:
        return dedicated_connection()

    def _hearing_check_send(self, listen: psycopg.Connection) -> str | None:
        """LISTEN on a channel of this connection's own and notify it from another connection;
        the channel, or None if the notification could not be sent (checked next time)."""
        channel = f"ironclaw_hearing_{os.getpid()}"
        listen.execute(f"LISTEN {channel}")
        try:
            params = connections["default"].own_params()  # type: ignore[attr-defined]
            with psycopg.connect(**params, autocommit=True) as sender:
                sender.execute("SELECT pg_notify(%s, '')", [channel])
        except psycopg.Error:
            return None
        return channel

    def _run(self) -> None:
        try:
            self._run_until_stopped()
        finally:
            # Nothing listens any more: listening_since must not say otherwise.
            with self._lock:
                self._listening, self._since = set(), {}

    def _run_until_stopped(self) -> None:
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                with self._connect() as listen:
                    with self._lock:
                        self._listening, self._since = set(), {}
                    self._listen(listen)
                    backoff = 0.5
                    # Anything committed while we were not listening: let waiters look again
                    # and subscribers read what they may have missed.
                    self._reconnected()
                    hearing = self._hearing_check_send(listen)
                    sent_at = time.monotonic()
                    while not self._stopping.is_set():
                        for notice in listen.notifies(timeout=STOP_CHECK_S):
                            if notice.channel == hearing:
                                hearing = None
                            else:
                                self._notified(notice.channel, notice.payload)
                        if hearing and time.monotonic() - sent_at > HEARING_CHECK_S:
                            logger.warning(NOT_HEARING, HEARING_CHECK_S)
                            hearing = None
                        self._listen(listen)
            except Exception as error:
                with self._lock:
                    self._listening, self._since = set(), {}
                logger.warning(
                    "notification listener lost its connection (%s); reconnecting", error
                )
                self._wake_all()
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 10.0)


def notify_many(channel: str, payloads: list[str]) -> None:
    """Send ``payloads`` on ``channel`` in one statement on this thread's connection, delivered
    when it commits: at once, without waiting for the disk, in autocommit; with the caller's
    transaction (whose commit stays synchronous) inside one. Nothing for no payloads."""
    if payloads:
        sql = NOTIFY_MANY_SQL if connection.in_atomic_block else NOTIFY_MANY_ASYNC_SQL
        # Bound server-side: a delta's payloads are up to 8 KB each, and the statement is hot.
        with server_bound_cursor() as cursor:
            cursor.execute(sql, [channel, payloads])


def dedicated_connection() -> psycopg.Connection:
    """A connection of its own (outside Django's pool), in autocommit, with TCP keepalives: for
    a thread that keeps one for the life of the process (this listener, the delta sender).

    Without keepalives a connection whose server vanished (a host gone, a half-open connection)
    would look idle for ever, and a listener would wait for notifications that never come."""
    params = connections["default"].direct_params()  # type: ignore[attr-defined]
    for name, value in LISTENER_KEEPALIVES.items():
        params.setdefault(name, value)
    return psycopg.connect(**params, autocommit=True)


_listener = _Listener()


def listening(channel: str, key: str) -> AbstractContextManager[threading.Event]:
    """An event set by every notification for ``key`` on ``channel`` (every key with ``ANY``),
    and whenever the listener (re)connects; the caller clears it before it looks again."""
    return _listener.waiting(channel, key)


def subscribe(channel: str, key: str, callback: Subscriber) -> Callable[[], None]:
    """Call ``callback(channel, key, data)`` on the listener thread for every notification naming
    ``key`` on ``channel`` (every notification with ``ANY``, then with its first key); ``data`` is
    the payload's JSON object, or None. Returns the function that unsubscribes (idempotent).

    Registered when this returns: a notification committed afterwards reaches the callback,
    unless the listener is (re)connecting, which ``on_reconnect`` callbacks then hear of."""
    return _listener.subscribe(channel, key, callback)


def listening_since(channel: str) -> float | None:
    """When (``time.monotonic()``) this process's listener began hearing ``channel`` on its
    current connection; None while it does not (not asked to, or reconnecting): whatever was
    sent on it before that time was not heard."""
    return _listener.listening_since(channel)


def on_reconnect(callback: Callable[[], None]) -> Callable[[], None]:
    """Call ``callback()`` on the listener thread each time it has (re)connected and listens
    again: notifications sent while it was not listening are lost, so whoever relies on them
    reads afresh. Returns the function that forgets the callback."""
    return _listener.on_reconnect(callback)


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

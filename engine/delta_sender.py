"""The built-in engine's deltas leave through one thread per process, on a connection of its own.

A model call runs on a thread of its own, started for the call: publishing from it took a pooled
connection into a fresh thread's Django connection for every delta and gave it back, about
0.5 ms of the worker's CPU a delta, the largest single cost of a streamed turn in the turns
benchmark's profile (a fifth of the turn worker's CPU). Here the model's thread only queues the
payloads; the sender sends whatever has queued in one statement on a connection it keeps, and
keeps their order (a thread's deltas are queued in order by its one model call at a time).

Deltas are ephemeral: when the database is down the sender drops what it cannot send (logged
at most once a minute) and connects again for the next ones; a full queue drops new deltas. A
turn never waits for it and never fails because of it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence

import psycopg

from core.notify import DELTAS_CHANNEL, NOTIFY_MANY_ASYNC_SQL, dedicated_connection

logger = logging.getLogger(__name__)

# Payloads waiting at most (a database that does not answer must not grow the process).
QUEUE_MAX = 10_000
# Payloads sent in one statement at most.
BATCH_MAX = 100
FAILURE_LOG_INTERVAL_S = 60.0


class DeltaSender:
    def __init__(self) -> None:
        self._queue: queue.Queue[str] = queue.Queue(maxsize=QUEUE_MAX)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._connection: psycopg.Connection | None = None
        self._failure_logged_at = -FAILURE_LOG_INTERVAL_S
        self.sent = 0
        self.dropped = 0

    def send(self, payloads: Sequence[str]) -> None:
        """Queue ``payloads`` for the sender thread (started on first use); never blocks."""
        self._ensure_started()
        for payload in payloads:
            try:
                self._queue.put_nowait(payload)
            except queue.Full:
                self.dropped += 1

    def idle(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far has been sent or dropped (tests)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)
        return not self._queue.unfinished_tasks

    def disconnect(self) -> None:
        """Close the sender's connection once what is queued has gone (the next delta connects
        again): tests that drop their database call it."""
        self.idle()
        with self._lock:
            connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def _ensure_started(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="deltas", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < BATCH_MAX:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._send(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    def _send(self, batch: list[str]) -> None:
        try:
            with self._lock:
                if self._connection is None or self._connection.closed:
                    self._connection = dedicated_connection()
                connection = self._connection
            # One statement, in the array's order: they arrive in the order they were sent.
            connection.execute(NOTIFY_MANY_ASYNC_SQL, [DELTAS_CHANNEL, batch])
            self.sent += len(batch)
        except Exception:
            self.dropped += len(batch)
            with self._lock:
                broken, self._connection = self._connection, None
            if broken is not None:
                broken.close()
            now = time.monotonic()
            if now - self._failure_logged_at >= FAILURE_LOG_INTERVAL_S:
                self._failure_logged_at = now
                logger.warning(
                    "token deltas not published (%d dropped so far; logged once a minute)",
                    self.dropped,
                    exc_info=True,
                )


_sender = DeltaSender()


def delta_sender() -> DeltaSender:
    """This process's sender."""
    return _sender

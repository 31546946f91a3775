"""Wait, from a separate connection, until some backend is blocked on a lock the test holds."""

from __future__ import annotations

import time

import psycopg


def wait_for_lock_waiter(monitor: psycopg.Connection, timeout: float = 10) -> None:
    """Return once a session of the current database waits on a lock; fail after ``timeout``.

    ``monitor`` must be in autocommit mode: inside a transaction, ``pg_stat_activity`` is a
    snapshot taken by its first read and would never show the waiter arrive.
    """
    assert monitor.autocommit, "the monitor connection must be in autocommit mode"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        waiting = monitor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND datname = current_database()"
        ).fetchone()
        if waiting and waiting[0] > 0:
            return
        time.sleep(0.05)
    raise AssertionError("no request started waiting on the held lock")

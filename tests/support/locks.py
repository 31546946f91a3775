"""Locks held from a connection of the test's own, outside Django: to block the code under test
on them, and to wait until something is blocked."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from django.db import connection


def psycopg_params() -> dict[str, Any]:
    """Connection parameters of the test database, for a psycopg connection of the test's own."""
    settings_dict = connection.settings_dict
    return {
        "host": settings_dict["HOST"] or None,
        "port": settings_dict["PORT"] or None,
        "user": settings_dict["USER"],
        "password": settings_dict["PASSWORD"] or None,
        "dbname": settings_dict["NAME"],
    }


@contextmanager
def table_locked(table: str) -> Iterator[psycopg.Connection]:
    """Hold ACCESS EXCLUSIVE on ``table`` (no reads either) until the block ends."""
    with psycopg.connect(**psycopg_params()) as holder:
        holder.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        try:
            yield holder
        finally:
            holder.rollback()


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

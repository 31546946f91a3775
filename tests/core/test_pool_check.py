"""The pool's check on checkout: no round trip on a quiet connection, a refusal of a dead one,
and through Django a terminated pooled connection is replaced, never handed to a request."""

from __future__ import annotations

import time

import psycopg
import pytest
from django.db import connection

from core.postgresql.pool_check import pool_connection_check
from tests.support.locks import psycopg_params

pytestmark = pytest.mark.django_db(transaction=True)


def _last_query(observer: psycopg.Connection, pid: int) -> str:
    row = observer.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()
    assert row is not None
    return str(row[0])


def test_a_quiet_connection_passes_without_a_round_trip() -> None:
    with (
        psycopg.connect(**psycopg_params(), autocommit=True) as checked,
        psycopg.connect(**psycopg_params(), autocommit=True) as observer,
    ):
        checked.execute("SELECT 'the last statement'")

        pool_connection_check(checked)

        # The server saw nothing after that statement (the stock check sends an empty query).
        assert _last_query(observer, checked.info.backend_pid) == "SELECT 'the last statement'"


def test_a_connection_the_server_ended_is_refused() -> None:
    with (
        psycopg.connect(**psycopg_params(), autocommit=True) as checked,
        psycopg.connect(**psycopg_params(), autocommit=True) as observer,
    ):
        observer.execute("SELECT pg_terminate_backend(%s)", [checked.info.backend_pid])
        deadline = time.monotonic() + 5
        with pytest.raises(psycopg.OperationalError):  # noqa: PT012
            while time.monotonic() < deadline:  # until the server's goodbye reaches the socket
                pool_connection_check(checked)
                time.sleep(0.01)


def test_a_connection_left_in_a_transaction_is_refused() -> None:
    with psycopg.connect(**psycopg_params()) as checked:
        checked.execute("SELECT 1")  # opens a transaction (not autocommit)

        with pytest.raises(psycopg.ProgrammingError):
            pool_connection_check(checked)


def test_django_replaces_a_pooled_connection_the_server_ended() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    connection.close()  # back to the pool
    with psycopg.connect(**psycopg_params(), autocommit=True) as observer:
        observer.execute("SELECT pg_terminate_backend(%s)", [pid])
    time.sleep(0.2)

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (new_pid,) = cursor.fetchone()

    assert new_pid != pid

"""The pool's check of a connection on checkout, without a round trip while the socket is quiet.

psycopg_pool's stock check sends an empty query on every checkout: a round trip for every
request and every turn step, about a fifth of all statements a turn makes. An idle connection's
socket has nothing to read unless the server spoke: it closed the connection (a restart, a
terminated backend, an idle timeout) or sent a notice. So the check asks the socket first (one
non-blocking ``poll``, no round trip) and sends the empty query only when there is something to
read, which consumes the notice or raises on the dead connection so the pool replaces it.
"""

from __future__ import annotations

import select

import psycopg
from psycopg import pq
from psycopg_pool import ConnectionPool


def pool_connection_check(conn: psycopg.Connection) -> None:
    """Raise if ``conn`` is unusable; the pool then discards it and hands out another."""
    if conn.closed or conn.broken:
        raise psycopg.OperationalError("the connection is closed")
    pgconn = conn.pgconn
    if pgconn.transaction_status != pq.TransactionStatus.IDLE or _readable(pgconn.socket):
        ConnectionPool.check_connection(conn)


def _readable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(0))

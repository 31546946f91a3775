"""Django's PostgreSQL backend with the database breaker in front of its connection pool.

With no ``DATABASE_URL`` it also starts (or joins) the embedded server the first time the process
needs a connection, never at settings import.
"""

from __future__ import annotations

from typing import Any

import psycopg
from django.core.exceptions import ImproperlyConfigured
from django.db.backends.base.base import NO_DB_ALIAS
from django.db.backends.postgresql import base
from django.db.backends.postgresql.psycopg_any import register_tzloader
from django.db.backends.utils import CursorWrapper
from psycopg import adapters
from psycopg.pq import Format
from psycopg_pool import ConnectionPool

from core.database_breaker import DatabaseKnownDown, breaker, request_fails_fast
from core.embedded import embedded_database_settings_resolve
from core.postgresql.creation import DatabaseCreation
from core.postgresql.healing_pool import HealingConnectionPool
from core.postgresql.pool_check import pool_connection_check

_TIMESTAMPTZ_OID = adapters.types["timestamptz"].oid


class DatabaseWrapper(base.DatabaseWrapper):
    creation_class = DatabaseCreation

    def get_connection_params(self) -> dict[str, Any]:
        # Every connection, the pool's included, is made from these parameters. Starting or
        # joining the embedded server connects to it: a failure there is Django's error, as any
        # connection's (a 503, not a 500, while the server restarts).
        with self.wrap_database_errors:
            embedded_database_settings_resolve(self.settings_dict)
        return super().get_connection_params()

    @property
    def pool(self) -> ConnectionPool | None:
        """Django's pool (``OPTIONS["pool"]``), made as Django makes it, except that its check on
        checkout (``CONN_HEALTH_CHECKS``) is ``pool_connection_check`` (no round trip while the
        connection's socket is quiet) and it heals from an outage quickly
        (``HealingConnectionPool``)."""
        pool_options = self.settings_dict["OPTIONS"].get("pool")
        if self.alias == NO_DB_ALIAS or not pool_options:
            return None
        # Django's class-wide pools by alias and its connection set-up (private, stable since
        # Django 5.1 brought the pool).
        pools: dict[str, ConnectionPool] = self._connection_pools  # type: ignore[attr-defined]
        if self.alias not in pools:
            if self.settings_dict.get("CONN_MAX_AGE", 0) != 0:
                raise ImproperlyConfigured("Pooling doesn't support persistent connections.")
            connect_kwargs = self.get_connection_params()
            # Autocommit, as Django's: it sets the mode it wants when it takes a connection.
            connect_kwargs["autocommit"] = True
            pool = HealingConnectionPool(
                reachable=self._reachable,
                kwargs=connect_kwargs,
                open=False,
                configure=self._configure_connection,  # type: ignore[attr-defined]
                check=pool_connection_check if self.settings_dict["CONN_HEALTH_CHECKS"] else None,
                **({} if pool_options is True else pool_options),
            )
            # As Django's: of threads racing to make the pool, the first to set it wins.
            pools.setdefault(self.alias, pool)
        return pools[self.alias]

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        breaker.before_connect(self._probe)
        try:
            return super().get_new_connection(conn_params)
        except DatabaseKnownDown:
            # The pool found the database unreachable while a request waited (it probed).
            breaker.record_failure()
            raise
        except psycopg.OperationalError:
            # The pool gave up: an outage, or only a pool exhausted by slow requests. A direct
            # connection tells them apart, and only an outage opens the breaker.
            if request_fails_fast() and not self._reachable():
                breaker.record_failure()
            raise

    def server_bound_cursor(self) -> CursorWrapper:
        """A cursor that sends its parameters apart from the SQL text (server-side binding).

        Django's cursors bind client-side: Python escapes every value into the SQL text and
        PostgreSQL parses it back out, which for a 50 KB checkpoint is most of the write's cost.
        This one is made and wrapped as Django makes its own (query counts, execute wrappers,
        error translation, the connection's time zone). Its statements are prepared after the
        connection's ``prepare_threshold`` executions (``DATABASE_PREPARED_STATEMENTS``).
        """
        self.close_if_health_check_failed()
        self.ensure_connection()
        with self.wrap_database_errors:
            cursor = psycopg.Cursor(self.connection)
            tzloader = self.connection.adapters.get_loader(_TIMESTAMPTZ_OID, Format.TEXT)
            if self.timezone != tzloader.timezone:
                register_tzloader(self.timezone, cursor)
            # Django's own wrapping of a new cursor (private, stable since Django 1.x).
            return self._prepare_cursor(cursor)  # type: ignore[attr-defined]

    def own_params(self) -> dict[str, Any]:
        """The parameters of a connection of its own, outside the pool, where the pool's go."""
        params = dict(self.get_connection_params())
        for pool_only in ("pool", "cursor_factory", "context", "prepare_threshold"):
            params.pop(pool_only, None)
        return params

    def direct_params(self) -> dict[str, Any]:
        """The parameters of a connection of its own that keeps a session (a listener's LISTEN):
        PostgreSQL itself (``DATABASE_DIRECT_URL``) when the pool's go through a pooler."""
        return {**self.own_params(), **self.settings_dict.get("DIRECT", {})}

    def _probe(self) -> None:
        with psycopg.connect(**self.own_params(), autocommit=True) as probe:
            if "DIRECT" in self.settings_dict:
                # A pooler accepts connections while PostgreSQL is down: ask through it.
                probe.execute("SELECT 1")

    def _reachable(self) -> bool:
        try:
            self._probe()
        except psycopg.Error:
            return False
        return True

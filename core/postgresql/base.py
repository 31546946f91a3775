"""Django's PostgreSQL backend with the database breaker in front of its connection pool.

With no ``DATABASE_URL`` it also starts (or joins) the embedded server the first time the process
needs a connection, never at settings import.
"""

from __future__ import annotations

from typing import Any

import psycopg
from django.db.backends.postgresql import base

from core.database_breaker import breaker, request_fails_fast
from core.embedded import embedded_database_settings_resolve


class DatabaseWrapper(base.DatabaseWrapper):
    def get_connection_params(self) -> dict[str, Any]:
        # Every connection, the pool's included, is made from these parameters.
        embedded_database_settings_resolve(self.settings_dict)
        return super().get_connection_params()

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        breaker.before_connect(self._probe)
        try:
            return super().get_new_connection(conn_params)
        except psycopg.OperationalError:
            # The pool gave up: an outage, or only a pool exhausted by slow requests. A direct
            # connection tells them apart, and only an outage opens the breaker.
            if request_fails_fast() and not self._reachable():
                breaker.record_failure()
            raise

    def _direct_params(self) -> dict[str, Any]:
        params = dict(self.get_connection_params())
        for pool_only in ("pool", "cursor_factory", "context", "prepare_threshold"):
            params.pop(pool_only, None)
        return params

    def _probe(self) -> None:
        psycopg.connect(**self._direct_params(), autocommit=True).close()

    def _reachable(self) -> bool:
        try:
            self._probe()
        except psycopg.Error:
            return False
        return True

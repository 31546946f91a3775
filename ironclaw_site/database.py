"""The DATABASES entry: Django's PostgreSQL backend behind the circuit breaker, with a pool."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def database_settings(
    url_config: dict[str, Any] | None,
    *,
    embedded_dir: Path,
    embedded_name: str,
    pool_size: int,
    pool_timeout: int,
    connect_timeout: int,
    prepared_statements: bool = True,
) -> dict[str, Any]:
    """The default database: DATABASE_URL's (parsed by env_postgres_url) or the embedded one."""
    if url_config is not None:
        config = dict(url_config)
    else:
        # The embedded server: nothing starts here. The backend starts or joins it when this
        # process first needs a connection, and fills HOST and PORT in (core.embedded).
        from core.embedded import SETTINGS_KEY

        config = {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": embedded_name,
            "USER": "postgres",
            "PASSWORD": "",
            "HOST": "",
            "PORT": "",
            "OPTIONS": {},
            SETTINGS_KEY: {"DATA_DIR": str(embedded_dir), "NAME": embedded_name},
        }
    # Django's backend with a circuit breaker in front of the pool (core.database_breaker),
    # which also starts the embedded server on first use.
    config["ENGINE"] = "core.postgresql"
    config["OPTIONS"].setdefault("connect_timeout", connect_timeout)
    # Statements bound server-side (core.db.server_bound_cursor: the runtime writes and the hot
    # statements written once) are prepared on a connection's fifth execution, sparing PostgreSQL
    # their parse and plan: a 50 KB checkpoint write takes about a third less time. Django's own
    # cursors bind client-side and never prepare; search never does (its plan depends on the
    # tenant).
    config["OPTIONS"].setdefault("prepare_threshold", 5 if prepared_statements else None)
    config["OPTIONS"]["pool"] = {
        "min_size": min(2, pool_size),
        "max_size": pool_size,
        # Waiting longer than this for a free connection raises PoolTimeout -> HTTP 503.
        "timeout": pool_timeout,
        # Give up a reconnection attempt quickly; the next request starts a fresh one, so the
        # service recovers within seconds of the database coming back.
        "reconnect_timeout": pool_timeout,
    }
    # The pool owns connection reuse: Django requires CONN_MAX_AGE=0 with it.
    config["CONN_MAX_AGE"] = 0
    # With a pool, a check on checkout (core.postgresql's, a round trip only when the socket
    # says the server has spoken): a restarted server costs one reconnect, not one failed
    # request per stale pooled connection.
    config["CONN_HEALTH_CHECKS"] = True
    config["TEST"] = {"NAME": f"test_{config['NAME']}"}
    return config

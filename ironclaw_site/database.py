"""The DATABASES entry: Django's PostgreSQL backend behind the circuit breaker, with a pool.

With a transaction pooler (PgBouncer) in front of PostgreSQL, ``DATABASE_URL`` points at the
pooler and ``DATABASE_DIRECT_URL`` at PostgreSQL itself. Web processes then go through the pooler
for their requests, and straight to PostgreSQL for what a pooler cannot carry (their
notification listener's LISTEN); every other process (workers, migrations, operators' commands)
connects straight to PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured

# The manage.py commands that serve web requests. Every other command connects to
# DATABASE_DIRECT_URL: workers hold long sessions (LISTEN, Procrastinate's locks), and migrations
# and operators' commands are few.
WEB_COMMANDS = frozenset({"serve_web", "runserver"})
# A connection's location, as Django's settings name it and as psycopg's parameters name it.
_LOCATION = {"HOST": "host", "PORT": "port", "USER": "user", "PASSWORD": "password"}


def process_connects_direct(argv: Sequence[str]) -> bool:
    """Whether this process, by its command line, connects to ``DATABASE_DIRECT_URL``.

    A ``manage.py`` command does, unless it serves web requests; anything else (a WSGI or ASGI
    server importing the app, the test runner) is a web process and goes through ``DATABASE_URL``.
    """
    launched_by_manage = len(argv) >= 2 and Path(argv[0]).name in {"manage.py", "django-admin"}
    return launched_by_manage and argv[1] not in WEB_COMMANDS


def database_through_pooler(
    url_config: dict[str, Any] | None,
    direct_url_config: dict[str, Any] | None,
    *,
    connects_direct: bool,
) -> bool:
    """Whether this process's connections go through a transaction pooler: ``DATABASE_URL`` and
    ``DATABASE_DIRECT_URL`` name different servers and this is a web process."""
    if direct_url_config is None:
        return False
    if url_config is None:
        raise ImproperlyConfigured(
            "DATABASE_DIRECT_URL is set but DATABASE_URL is not: set DATABASE_URL to the pooler "
            "(or to the same server) and DATABASE_DIRECT_URL to PostgreSQL itself."
        )
    if direct_url_config.get("NAME") != url_config.get("NAME"):
        raise ImproperlyConfigured(
            "DATABASE_DIRECT_URL must name the same database as DATABASE_URL "
            f"({direct_url_config.get('NAME')!r} is not {url_config.get('NAME')!r}): give the "
            "pooler's database the name it has in PostgreSQL."
        )
    same_server = all(
        str(direct_url_config.get(key) or "") == str(url_config.get(key) or "")
        for key in ("HOST", "PORT")
    )
    return not same_server and not connects_direct


def database_settings(
    url_config: dict[str, Any] | None,
    *,
    embedded_dir: Path,
    embedded_name: str,
    pool_size: int,
    pool_timeout: int,
    connect_timeout: int,
    prepared_statements: bool = True,
    direct_url_config: dict[str, Any] | None = None,
    connects_direct: bool = False,
) -> dict[str, Any]:
    """The default database: DATABASE_URL's (parsed by env_postgres_url) or the embedded one;
    DATABASE_DIRECT_URL's in a process that connects direct (``process_connects_direct``)."""
    through_pooler = database_through_pooler(
        url_config, direct_url_config, connects_direct=connects_direct
    )
    if direct_url_config is not None and connects_direct:
        url_config = direct_url_config
    if url_config is not None:
        config = dict(url_config)
        config["OPTIONS"] = dict(url_config.get("OPTIONS", {}))
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
    if through_pooler:
        assert direct_url_config is not None
        # Where this process's own connections go (its notification listener): PostgreSQL
        # itself, in psycopg's terms, on the same database (NAME is the test one in tests).
        # (None drops a parameter: no password in the direct URL means none is sent.)
        direct = {param: direct_url_config.get(key) or None for key, param in _LOCATION.items()}
        config["DIRECT"] = {**direct_url_config.get("OPTIONS", {}), **direct}
        # A transaction pooler hands each transaction to any server connection: a named cursor
        # (Django's .iterator()) would outlive its transaction's connection.
        config["DISABLE_SERVER_SIDE_CURSORS"] = True
    return config

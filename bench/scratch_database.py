"""A throw-away database for a benchmark: created, migrated, and dropped, never the dev one."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ironclaw_site.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")

import django
import psycopg
from django.conf import settings
from psycopg import sql


def admin_connection() -> psycopg.Connection:
    from core.embedded import embedded_database_settings_resolve

    database = settings.DATABASES["default"]
    # The embedded server starts on first use; this fills in its socket (a no-op with a URL).
    embedded_database_settings_resolve(database)
    return psycopg.connect(
        host=database["HOST"] or None,
        port=database["PORT"] or None,
        user=database["USER"] or None,
        password=database["PASSWORD"] or None,
        dbname="postgres",
        autocommit=True,
    )


@contextmanager
def scratch_database(prefix: str) -> Iterator[str]:
    """Create ``<prefix>_<pid>``, point Django at it, migrate, yield its name, then drop it."""
    name = f"{prefix}_{os.getpid()}"
    with admin_connection() as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    settings.DATABASES["default"]["NAME"] = name
    try:
        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        yield name
    finally:
        from django.db import connections

        connections.close_all()
        for alias in connections:
            # close_pool also forgets the pool, so a second scratch database in the same process
            # gets a pool of its own instead of this closed one.
            close_pool = getattr(connections[alias], "close_pool", None)
            if close_pool is not None:
                close_pool()
        with admin_connection() as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

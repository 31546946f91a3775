"""The embedded PostgreSQL 16 + pgvector used when ``DATABASE_URL`` is unset.

``pgserver`` starts one server per data folder and shares it between every process that asks for
it (web workers, the task worker, tests, management commands); it stops when the last of them
exits. The server listens on a Unix socket only, so two checkouts never fight over a TCP port.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

logger = logging.getLogger(__name__)

# pgserver's default of 100 connections is too few for a web server with two workers, each with a
# pool of 30, next to the task worker and a test run. Applied once, when the folder is created.
MAX_CONNECTIONS = 300
_CONFIG_MARKER = "# ironclaw_site embedded settings"
_CONFIG_LINES = (
    _CONFIG_MARKER,
    f"max_connections = {MAX_CONNECTIONS}",
    "shared_buffers = 128MB",
)


@dataclass(frozen=True)
class EmbeddedDatabase:
    socket_dir: str
    port: int
    user: str
    name: str


def _has_our_config(folder: Path) -> bool:
    conf = folder / "postgresql.conf"
    return conf.exists() and _CONFIG_MARKER in conf.read_text()


def _write_config(folder: Path) -> None:
    with (folder / "postgresql.conf").open("a") as conf:
        conf.write("\n" + "\n".join(_CONFIG_LINES) + "\n")


def start_embedded_database(folder: Path, database: str) -> EmbeddedDatabase:
    """Start (or join) the embedded server in ``folder`` and make sure ``database`` exists."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (servers, CI); its fallback is fine.
        warnings.simplefilter("ignore")
        import pgserver  # imported here: only the embedded mode needs it

    folder.parent.mkdir(parents=True, exist_ok=True)
    if (folder / "PG_VERSION").exists() and not _has_our_config(folder):
        _write_config(folder)
    server = pgserver.get_server(folder, cleanup_mode="stop")
    if not _has_our_config(folder):
        # A brand-new folder: pgserver ran initdb and started the server with stock settings.
        # Restart once so max_connections takes effect (a no-op stop if another process joined).
        _write_config(folder)
        server.cleanup()
        server = pgserver.get_server(folder, cleanup_mode="stop")

    info = server.get_postmaster_info()
    socket_dir = str(info.socket_dir)
    port = int(info.port or 5432)
    _ensure_database(socket_dir, port, database)
    return EmbeddedDatabase(socket_dir=socket_dir, port=port, user="postgres", name=database)


def _ensure_database(socket_dir: str, port: int, database: str) -> None:
    with psycopg.connect(
        host=socket_dir, port=port, user="postgres", dbname="postgres", autocommit=True
    ) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone()
        if exists:
            return
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        except psycopg.errors.DuplicateDatabase:
            # Another process created it between our check and our CREATE: that is the goal.
            pass
        else:
            logger.info("created embedded database %s", database)

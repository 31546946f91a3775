"""Start the embedded server, or join the one another process of the checkout started."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from django.core.exceptions import ImproperlyConfigured
from psycopg import sql

from core.embedded.cluster import (
    POSTGRES_VERSION,
    data_folder_version,
    has_our_config,
    old_data_folder_message,
    pgserver_package,
    write_config,
)
from core.embedded.liveness import process_alive

logger = logging.getLogger(__name__)

# The settings key that marks a DATABASES entry as the embedded server's (see settings.py).
SETTINGS_KEY = "EMBEDDED"


@dataclass(frozen=True)
class EmbeddedDatabase:
    socket_dir: str
    port: int
    user: str
    name: str


def _refuse_old_folder(folder: Path) -> None:
    version = data_folder_version(folder)
    if version is not None and version != POSTGRES_VERSION:
        raise ImproperlyConfigured(old_data_folder_message(folder, version))


def _forget_dead_users(folder: Path) -> None:
    """Drop processes that died without saying so from the server's list of users.

    pgserver stops the server when the last process on its list exits, but a process killed with
    SIGKILL (or by the OOM killer) never takes itself off: the list never empties and the server
    outlives every process of the checkout. Each process that joins prunes the dead first."""
    users = folder / ".handle_pids.json"
    try:
        pids = json.loads(users.read_text() or "[]")
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and process_alive(pid)]
    if alive != pids:
        users.write_text(json.dumps(alive))


def start_embedded_database(folder: Path, database: str) -> EmbeddedDatabase:
    """Start (or join) the embedded server in ``folder`` and make sure ``database`` exists."""
    folder = folder.expanduser().resolve()
    _refuse_old_folder(folder)
    _forget_dead_users(folder)
    pgserver = pgserver_package()
    folder.parent.mkdir(parents=True, exist_ok=True)
    if (folder / "PG_VERSION").exists() and not has_our_config(folder):
        write_config(folder)
    server = pgserver.get_server(folder, cleanup_mode="stop", postgres_version=POSTGRES_VERSION)
    if not has_our_config(folder):
        # A brand-new folder: pgserver ran initdb and started the server with stock settings.
        # Restart once so max_connections takes effect (a no-op stop if another process joined).
        write_config(folder)
        server.cleanup()
        server = pgserver.get_server(folder, cleanup_mode="stop", postgres_version=POSTGRES_VERSION)

    info = server.get_postmaster_info()
    socket_dir = str(info.socket_dir)
    port = int(info.port or 5432)
    _ensure_database(socket_dir, port, database)
    return EmbeddedDatabase(socket_dir=socket_dir, port=port, user="postgres", name=database)


_started: dict[tuple[Path, str], EmbeddedDatabase] = {}
_start_lock = threading.Lock()


def embedded_database(folder: Path, database: str) -> EmbeddedDatabase:
    """The embedded server of ``folder``, started or joined on this process's first call."""
    key = (folder.expanduser().resolve(), database)
    # Many request threads can need their first connection at once: one starts, the rest wait.
    with _start_lock:
        if key not in _started:
            _started[key] = start_embedded_database(key[0], database)
        return _started[key]


def embedded_database_settings_resolve(settings_dict: dict[str, Any]) -> None:
    """For a DATABASES entry of the embedded server, start or join it and fill HOST and PORT in.

    A no-op for any other entry (``DATABASE_URL`` set), and cheap after the first call.
    """
    embedded = settings_dict.get(SETTINGS_KEY)
    if not embedded:
        return
    server = embedded_database(Path(embedded["DATA_DIR"]), embedded["NAME"])
    settings_dict["HOST"] = server.socket_dir
    settings_dict["PORT"] = server.port


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

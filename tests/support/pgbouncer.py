"""A real PgBouncer in transaction mode on loopback, in front of a PostgreSQL, for tests.

Debian's ``pgbouncer`` package (``apt-get install pgbouncer``; ``.ci/run`` installs it). PgBouncer
refuses to run as root, so under root it is started as the user that owns the server's socket
folder (the embedded server's own user), or as ``nobody`` for a server on TCP. Every database
name is passed through (``*``), so the test database behind it is the one Django made.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg

from tests.support.servers import free_port

INSTALL_HINT = "PgBouncer is not installed: `apt-get install pgbouncer` (Debian) runs these tests"
START_TIMEOUT_SECONDS = 15
# How long a client's query waits for a server connection before PgBouncer fails it: while
# PostgreSQL is unreachable, every request waits this long (PgBouncer keeps accepting clients),
# so keep it short, as docs/deployment.md advises (PgBouncer's default is 120 s).
QUERY_WAIT_TIMEOUT_SECONDS = 5


def pgbouncer_missing() -> str | None:
    """Why the PgBouncer tests cannot run here, or None."""
    return None if shutil.which("pgbouncer") else INSTALL_HINT


@dataclass
class PgBouncer:
    host: str
    port: int
    folder: Path
    process: subprocess.Popen[bytes]

    def url(self, database: str, user: str = "postgres") -> str:
        return f"postgresql://{quote(user, safe='')}@{self.host}:{self.port}/{quote(database)}"

    def admin(self, command: str) -> list[dict[str, Any]]:
        """A ``SHOW`` command of PgBouncer's admin console, its rows as dicts."""
        with psycopg.connect(self.url("pgbouncer"), autocommit=True) as console:
            cursor = console.execute(command)
            names = [column.name for column in cursor.description or []]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def server_pids(self) -> set[int]:
        """The PostgreSQL backends PgBouncer holds (its server connections)."""
        return {int(row["remote_pid"]) for row in self.admin("SHOW SERVERS")}

    def transactions(self, database: str) -> int:
        """Transactions PgBouncer has carried to ``database`` since it started."""
        return sum(
            int(row["total_xact_count"])
            for row in self.admin("SHOW STATS")
            if row["database"] == database
        )

    def log(self) -> str:
        return (self.folder / "pgbouncer.log").read_text(errors="replace")


@contextmanager
def pgbouncer(*, server_host: str, server_port: int, pool_size: int = 4) -> Iterator[PgBouncer]:
    """PgBouncer in transaction mode on 127.0.0.1, in front of the server at ``server_host``
    (a host name or a Unix socket folder) and ``server_port``, stopped on the way out.

    ``pool_size`` server connections per database and user: small, so that client connections
    really share server connections and state left on one would reach another."""
    folder = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
    port = free_port()
    (folder / "users.txt").write_text('"postgres" ""\n')
    (folder / "pgbouncer.ini").write_text(
        f"""[databases]
* = host={server_host} port={server_port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {folder / "users.txt"}
admin_users = postgres
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 2000
max_db_connections = {pool_size * 4}
server_login_retry = 1
query_wait_timeout = {QUERY_WAIT_TIMEOUT_SECONDS}
"""
    )
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o644)
    log = (folder / "pgbouncer.log").open("wb")
    process = subprocess.Popen(
        ["pgbouncer", *_run_as(server_host), str(folder / "pgbouncer.ini")],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    bouncer = PgBouncer("127.0.0.1", port, folder, process)
    try:
        _wait_until_serving(bouncer)
        yield bouncer
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


def _run_as(server_host: str) -> list[str]:
    if os.geteuid() != 0:
        return []
    socket_folder = Path(server_host)
    owner = socket_folder.owner() if server_host.startswith("/") else "root"
    return ["-u", owner if owner != "root" else "nobody"]


def _wait_until_serving(bouncer: PgBouncer) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while True:
        if bouncer.process.poll() is not None:
            raise RuntimeError(f"pgbouncer exited at start:\n{bouncer.log()}")
        try:
            psycopg.connect(bouncer.url("pgbouncer"), connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"pgbouncer did not start:\n{bouncer.log()}") from None
            time.sleep(0.05)

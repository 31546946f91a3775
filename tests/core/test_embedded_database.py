from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from django.conf import settings
from django.db import connection

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("DATABASE_URL")),
    reason="DATABASE_URL is set: the embedded database is not in use",
)

_PROBE = """
import json, sys
from pathlib import Path
import psycopg
from core.embedded import start_embedded_database

db = start_embedded_database(Path(sys.argv[1]), sys.argv[2])
with psycopg.connect(host=db.socket_dir, port=db.port, user=db.user, dbname=db.name) as conn:
    started, data_dir = conn.execute(
        "SELECT pg_postmaster_start_time()::text, current_setting('data_directory')"
    ).fetchone()
    max_connections = conn.execute("SHOW max_connections").fetchone()[0]
print(json.dumps({"started": started, "data_dir": data_dir, "max_connections": max_connections}))
"""


@pytest.mark.django_db
def test_a_second_process_reuses_the_running_embedded_server() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_postmaster_start_time()::text, current_setting('data_directory')")
        started, data_dir = cursor.fetchone()

    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _PROBE,
            str(settings.EMBEDDED_DATABASE_DIR),
            connection.settings_dict["NAME"],
        ],
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["started"] == started
    assert seen["data_dir"] == data_dir
    assert int(seen["max_connections"]) >= 300
    # The second process has exited; the server it joined must still serve this one.
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_postmaster_start_time()::text")
        assert cursor.fetchone()[0] == started

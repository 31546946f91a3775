"""DATABASE_URL through a transaction pooler, DATABASE_DIRECT_URL for what a pooler cannot carry:
which process connects where, and what a connection through the pooler gives up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from ironclaw_site.database import (
    database_settings,
    database_through_pooler,
    process_connects_direct,
)
from ironclaw_site.env import env_postgres_url

POOLER = "postgresql://app:pooler-secret@127.0.0.1:6432/ironclaw"
DIRECT = "postgresql://app:db-secret@db.internal:5432/ironclaw?sslmode=require"


def _url(value: str) -> dict[str, Any]:
    os.environ["IRONCLAW_TEST_URL"] = value
    try:
        config = env_postgres_url("IRONCLAW_TEST_URL")
    finally:
        del os.environ["IRONCLAW_TEST_URL"]
    assert config is not None
    return config


def _settings(*, connects_direct: bool, **overrides: Any) -> dict[str, Any]:
    options: dict[str, Any] = {
        "embedded_dir": Path("unused"),
        "embedded_name": "unused",
        "pool_size": 4,
        "pool_timeout": 1,
        "connect_timeout": 1,
        "direct_url_config": _url(DIRECT),
        "connects_direct": connects_direct,
        **overrides,
    }
    return database_settings(_url(POOLER), **options)


@pytest.mark.parametrize(
    ("argv", "direct"),
    [
        (["manage.py", "run_worker", "--queues", "threads"], True),
        (["manage.py", "worker", "--kind", "turns"], True),
        (["manage.py", "migrate"], True),
        (["/srv/app/manage.py", "serve", "--no-worker"], True),
        (["manage.py", "create_api_key", "alice"], True),
        (["manage.py", "serve_web", "--port", "8000"], False),
        (["manage.py", "runserver"], False),
        (["/venv/bin/gunicorn", "ironclaw_site.wsgi"], False),
        (["/venv/bin/pytest", "tests"], False),
        (["manage.py"], False),
    ],
)
def test_every_manage_py_command_but_the_web_servers_connects_direct(
    argv: list[str], direct: bool
) -> None:
    assert process_connects_direct(argv) is direct


def test_a_web_process_goes_through_the_pooler_and_listens_on_postgresql_itself() -> None:
    config = _settings(connects_direct=False, prepared_statements=False)

    assert (config["HOST"], config["PORT"], config["PASSWORD"]) == (
        "127.0.0.1",
        6432,
        "pooler-secret",
    )
    # The listener's connection: PostgreSQL's address, credentials and TLS, the same database.
    assert config["DIRECT"] == {
        "host": "db.internal",
        "port": 5432,
        "user": "app",
        "password": "db-secret",
        "sslmode": "require",
    }
    assert config["OPTIONS"]["prepare_threshold"] is None
    assert config["DISABLE_SERVER_SIDE_CURSORS"] is True


def test_a_worker_connects_to_postgresql_itself_with_prepared_statements() -> None:
    config = _settings(connects_direct=True)

    assert (config["HOST"], config["PORT"], config["PASSWORD"]) == (
        "db.internal",
        5432,
        "db-secret",
    )
    assert config["OPTIONS"]["sslmode"] == "require"
    assert config["OPTIONS"]["prepare_threshold"] == 5
    assert "DIRECT" not in config
    assert "DISABLE_SERVER_SIDE_CURSORS" not in config


def test_a_direct_url_naming_the_same_server_is_no_pooler() -> None:
    url = _url(POOLER)
    assert not database_through_pooler(url, dict(url), connects_direct=False)
    assert not database_through_pooler(url, None, connects_direct=False)
    assert database_through_pooler(url, _url(DIRECT), connects_direct=False)
    assert not database_through_pooler(url, _url(DIRECT), connects_direct=True)


def test_a_direct_url_without_a_database_url_or_for_another_database_is_refused() -> None:
    with pytest.raises(ImproperlyConfigured, match="DATABASE_DIRECT_URL is set but DATABASE_URL"):
        database_through_pooler(None, _url(DIRECT), connects_direct=False)
    with pytest.raises(ImproperlyConfigured, match="must name the same database as DATABASE_URL"):
        database_through_pooler(
            _url(POOLER), _url("postgresql://db.internal/other"), connects_direct=False
        )


def _read_settings(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """What a fresh ``manage.py`` process (or a web server importing the app) configures."""
    script = (
        f"import sys, django; sys.argv = {argv!r}; django.setup(); "
        "from django.conf import settings as s; d = s.DATABASES['default']; "
        "print(d['HOST'], d['PORT'], s.DATABASE_THROUGH_POOLER, s.DATABASE_PREPARED_STATEMENTS)"
    )
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=settings.BASE_DIR,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "ironclaw_site.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_each_process_reads_its_database_from_its_own_command_line() -> None:
    env = {"DATABASE_URL": POOLER, "DATABASE_DIRECT_URL": DIRECT}

    web = _read_settings(["manage.py", "serve_web"], env)
    worker = _read_settings(["manage.py", "run_worker"], env)
    forced = _read_settings(
        ["manage.py", "serve_web"], {**env, "DATABASE_PREPARED_STATEMENTS": "1"}
    )

    assert web.stdout.split() == ["127.0.0.1", "6432", "True", "False"], web.stderr
    assert worker.stdout.split() == ["db.internal", "5432", "False", "True"], worker.stderr
    # PgBouncer 1.21+ keeps prepared statements (max_prepared_statements): the operator may say so.
    assert forced.stdout.split() == ["127.0.0.1", "6432", "True", "True"], forced.stderr


def test_start_up_names_a_direct_url_without_a_database_url() -> None:
    result = _read_settings(["manage.py", "serve_web"], {"DATABASE_DIRECT_URL": DIRECT})

    assert result.returncode != 0
    assert "DATABASE_DIRECT_URL is set but DATABASE_URL is not" in result.stderr

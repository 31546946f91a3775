"""The production topology with a transaction pooler: web processes through a real PgBouncer
(Debian's, in transaction mode, on loopback), workers, listeners and migrations straight to
PostgreSQL (``DATABASE_DIRECT_URL``).

- what transaction pooling breaks (prepared statements) breaks here, and the settings avoid it;
- the API suite passes through PgBouncer, with every statement on a pooled connection checked
  for session state (tests/support/pooled_sessions.py);
- ``manage.py serve`` with both URLs answers turns, its web process's LISTEN is on PostgreSQL
  itself and its requests go through PgBouncer.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.db import connection

from accounts.services import api_key_create
from core.notify import HEARING_CHECK_S
from tests.support.pgbouncer import (
    INSTALL_HINT,
    QUERY_WAIT_TIMEOUT_SECONDS,
    PgBouncer,
    pgbouncer,
    pgbouncer_missing,
)
from tests.support.pooled_sessions import session_state
from tests.support.serve import send_and_await_reply, serve_process
from tests.support.servers import BASE_DIR, TcpProxy, app_server, database_url, http_request

pytestmark = pytest.mark.skipif(pgbouncer_missing() is not None, reason=INSTALL_HINT)

# The suites that make up the API, run again through PgBouncer.
API_SUITES = [
    "tests/accounts/test_api_keys.py",
    "tests/accounts/test_idempotency.py",
    "tests/conversations/test_api.py",
    "tests/conversations/test_events_api.py",
    "tests/engine/test_threads_api.py",
    "tests/engine/test_checkpoint_api.py",
    "tests/workspace/test_api.py",
]
INNER_DATABASE = "ironclaw_pooled"
INNER_TIMEOUT_SECONDS = 900
# Fewer would mean the suites above were not all collected.
MIN_API_TESTS = 250


@pytest.fixture(scope="module")
def server(django_db_setup: None, django_db_blocker: Any) -> dict[str, Any]:
    """The PostgreSQL the suite runs on: its socket folder (or host) and port."""
    with django_db_blocker.unblock():
        connection.ensure_connection()
    return dict(connection.settings_dict)


@pytest.fixture
def bouncer(server: dict[str, Any]) -> Iterator[PgBouncer]:
    """PgBouncer with fewer server connections than the suites open client connections (so
    they share them), and enough for the most any one test holds at once in transactions
    waiting on each other (a lock holder, its waiters, a watcher)."""
    with pgbouncer(
        server_host=server["HOST"], server_port=int(server["PORT"]), pool_size=8
    ) as running:
        yield running


def test_prepared_statements_do_not_survive_transaction_pooling(server: dict[str, Any]) -> None:
    """Why connections through the pooler prepare nothing: two clients sharing PgBouncer's one
    server connection each prepare their first statement under the same name."""
    with pgbouncer(server_host=server["HOST"], server_port=int(server["PORT"]), pool_size=1) as one:
        url = one.url(server["NAME"])
        with psycopg.connect(url, autocommit=True) as first, psycopg.connect(url) as second:
            first.execute("SELECT %s::int", [1], prepare=True)
            second.autocommit = True
            with pytest.raises(psycopg.errors.DuplicatePreparedStatement):
                second.execute("SELECT %s::int", [2], prepare=True)

        # As the settings configure web processes through a pooler: nothing prepared.
        with (
            psycopg.connect(url, autocommit=True, prepare_threshold=None) as first,
            psycopg.connect(url, autocommit=True, prepare_threshold=None) as second,
        ):
            for value in range(10):
                for client in (first, second):
                    assert client.execute("SELECT %s::int", [value]).fetchone() == (value,)


@pytest.mark.parametrize(
    ("sql", "found"),
    [
        ("LISTEN ironclaw_events", "LISTEN"),
        ("SET statement_timeout = '5s'", "session setting statement_timeout"),
        ("SELECT set_config('lock_timeout', %s, false)", "set_config('lock_timeout') outside"),
        ("SELECT pg_advisory_lock(42)", "session-level advisory lock"),
        ("CREATE TEMPORARY TABLE t AS SELECT 1", "temporary table"),
        ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", "DECLARE c CURSOR WITH HOLD"),
        ("SET LOCAL hnsw.ef_search = 100", None),
        ("SELECT set_config('lock_timeout', %s, true)", None),
        ("SELECT pg_advisory_xact_lock(42)", None),
        ("SELECT set_config('TimeZone', %s, false)", None),
        ("SELECT 1 FROM workspace_document WHERE path = 'SET x'", None),
    ],
)
def test_the_guard_names_session_state_and_lets_transaction_state_through(
    sql: str, found: str | None
) -> None:
    result = session_state(sql)
    assert (result is None) if found is None else (result is not None and found in result), result


def test_the_api_suite_passes_through_pgbouncer(server: dict[str, Any], bouncer: PgBouncer) -> None:
    direct = database_url({**server, "NAME": INNER_DATABASE})
    env = {
        **os.environ,
        "DATABASE_URL": bouncer.url(INNER_DATABASE),
        "DATABASE_DIRECT_URL": direct,
        "IRONCLAW_POOLED_SESSION_CHECK": "1",
        "IRONCLAW_VAR_DIR": tempfile.mkdtemp(prefix="ironclaw-pooled-"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *API_SUITES],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=INNER_TIMEOUT_SECONDS,
    )

    summary = result.stdout[-6000:] + result.stderr[-3000:]
    assert result.returncode == 0, summary
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed is not None, summary
    assert int(passed.group(1)) >= MIN_API_TESTS, summary
    assert "skipped" not in result.stdout, summary
    # The suite's requests really went through PgBouncer, to the test database.
    assert bouncer.transactions(f"test_{INNER_DATABASE}") > 1000, bouncer.admin("SHOW STATS")


@pytest.mark.django_db(transaction=True)
def test_serve_with_both_urls_answers_turns_through_pgbouncer_and_listens_direct(
    server: dict[str, Any], bouncer: PgBouncer
) -> None:
    key = api_key_create(name="pooled", user_id="alice").raw_key
    env = {
        "DATABASE_URL": bouncer.url(server["NAME"]),
        "DATABASE_DIRECT_URL": database_url(server),
        "ENGINE_MODEL": "echo",
        "ENGINE_ECHO_LATENCY_MS": "50",
    }
    before = bouncer.transactions(server["NAME"])

    with serve_process(env) as serve:
        started = time.monotonic()
        for number in range(3):
            _, reply = send_and_await_reply(serve.base_url, key, f"hello {number}")
            assert reply["content"] == f"echo: hello {number}"

        # Every LISTEN (the web process's listener, the workers') is a backend of its own on
        # PostgreSQL, never one of PgBouncer's server connections.
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND query LIKE 'LISTEN %%'"
            )
            listening = {pid for (pid,) in cursor.fetchall()}
        assert listening
        assert not listening & bouncer.server_pids()
        # The web process's requests (authentication, the message, the long-polls) went through.
        assert bouncer.transactions(server["NAME"]) - before >= 6
        # Every listener heard its own check (it says so when not, after HEARING_CHECK_S).
        time.sleep(max(0.0, HEARING_CHECK_S + 1 - (time.monotonic() - started)))
        assert "did not hear a notification" not in serve.output()


@pytest.mark.django_db(transaction=True)
def test_a_listener_behind_the_pooler_says_it_hears_nothing_and_what_to_set(
    server: dict[str, Any], bouncer: PgBouncer
) -> None:
    """DATABASE_URL at PgBouncer and no DATABASE_DIRECT_URL: turns are still answered (by
    polling), and every process's log says why they are slow and what to set."""
    key = api_key_create(name="pooled", user_id="alice").raw_key
    env = {
        "DATABASE_URL": bouncer.url(server["NAME"]),
        "DATABASE_PREPARED_STATEMENTS": "false",
        "ENGINE_MODEL": "echo",
        "ENGINE_ECHO_LATENCY_MS": "50",
    }

    with serve_process(env) as serve:
        _, reply = send_and_await_reply(serve.base_url, key, "hello")
        assert reply["content"] == "echo: hello"
        deadline = time.monotonic() + HEARING_CHECK_S + 30
        while "did not hear a notification" not in serve.output():
            assert time.monotonic() < deadline, serve.output()
            time.sleep(0.2)
        assert "set DATABASE_DIRECT_URL to PostgreSQL itself" in serve.output()


@pytest.mark.django_db(transaction=True)
def test_an_outage_behind_pgbouncer_answers_503_and_heals_by_itself(
    server: dict[str, Any],
) -> None:
    """PostgreSQL unreachable behind PgBouncer (which still accepts connections): requests and
    /readyz answer a JSON 503, not a 500 or a hang, and the service serves again once it is back."""
    key = api_key_create(name="pooled", user_id="alice").raw_key
    auth = {"Authorization": f"Bearer {key}"}
    socket_path = f"{server['HOST']}/.s.PGSQL.{server['PORT']}"
    proxy = TcpProxy(
        socket_path if server["HOST"].startswith("/") else (server["HOST"], int(server["PORT"]))
    )
    proxy.start()
    try:
        with pgbouncer(server_host="127.0.0.1", server_port=proxy.port) as behind_proxy:
            env = {
                "DATABASE_URL": behind_proxy.url(server["NAME"]),
                "DATABASE_DIRECT_URL": database_url(server, host="127.0.0.1", port=proxy.port),
                "DATABASE_POOL_TIMEOUT": "2",
                "DATABASE_CONNECT_TIMEOUT": "2",
            }
            with app_server(env) as base_url:
                assert http_request(f"{base_url}/api/v1/me", headers=auth).status == 200

                proxy.stop()
                api_down = http_request(f"{base_url}/api/v1/me", headers=auth, timeout=60)
                ready_down = http_request(f"{base_url}/readyz", timeout=60)

                proxy.start()
                deadline = time.monotonic() + 30
                while (ready := http_request(f"{base_url}/readyz")).status != 200:
                    assert time.monotonic() < deadline, ready.body
                    time.sleep(0.2)
                api_again = http_request(f"{base_url}/api/v1/me", headers=auth)
    finally:
        proxy.stop()

    assert api_down.status == 503, api_down.body
    assert api_down.body["error"]["code"] == "database_unavailable"
    # PgBouncer holds a query while it cannot reach PostgreSQL, up to its query_wait_timeout.
    assert api_down.elapsed < QUERY_WAIT_TIMEOUT_SECONDS + 5
    assert ready_down.status == 503, ready_down.body
    assert api_again.status == 200
    assert api_again.body["user_id"] == "alice"

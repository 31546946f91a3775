"""Pool exhaustion and database outages, against a real web server process and real connections."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

import psycopg
import pytest
from django.db import connection

from accounts.services import CreatedApiKey
from tests.support.locks import psycopg_params, wait_for_lock_waiter
from tests.support.metrics import metric_sample
from tests.support.servers import (
    HttpResult,
    TcpProxy,
    app_server,
    database_url,
    http_request,
    worker_process,
)

pytestmark = pytest.mark.django_db(transaction=True)


def test_exhausted_pool_answers_503_within_the_pool_timeout(
    make_api_key: Callable[..., CreatedApiKey],
) -> None:
    first_key, second_key = make_api_key("alice"), make_api_key("bob")
    env = {
        "DATABASE_URL": database_url(connection.settings_dict),
        "DATABASE_POOL_SIZE": "1",
        "DATABASE_POOL_TIMEOUT": "1",
    }
    results: dict[str, HttpResult] = {}

    with app_server(env, threads=2) as base_url:
        # Warm the single pooled connection so the first request below does not pay to open it.
        assert http_request(f"{base_url}/readyz").status == 200
        with (
            psycopg.connect(**psycopg_params(), autocommit=True) as holder,
            psycopg.connect(**psycopg_params(), autocommit=True) as monitor,
        ):
            # The first request takes the only pooled connection and blocks on this lock, so the
            # pool is exhausted for as long as we hold it.
            holder.autocommit = False
            holder.execute("LOCK TABLE accounts_apikey IN ACCESS EXCLUSIVE MODE")

            def call_me(name: str, key: CreatedApiKey) -> None:
                results[name] = http_request(
                    f"{base_url}/api/v1/me", headers={"Authorization": f"Bearer {key.raw_key}"}
                )

            blocked = threading.Thread(target=call_me, args=("blocked", first_key))
            blocked.start()
            wait_for_lock_waiter(monitor)

            call_me("starved", second_key)
            holder.rollback()
        blocked.join(timeout=30)
        scrape = http_request(f"{base_url}/metrics")

    starved = results["starved"]
    assert starved.status == 503
    assert starved.body["error"]["code"] == "database_unavailable"
    assert starved.headers["Retry-After"] == "1"
    assert 0.9 <= starved.elapsed < 5
    assert results["blocked"].status == 200
    assert results["blocked"].body["user_id"] == "alice"
    assert metric_sample(scrape.body, "ironclaw_db_pool_timeouts_total") == 1
    assert metric_sample(scrape.body, "ironclaw_db_pool_connections_open") == 1
    assert metric_sample(scrape.body, "ironclaw_db_pool_requests_waiting") == 0


def _upstream() -> str | tuple[str, int]:
    settings_dict = connection.settings_dict
    host, port = settings_dict["HOST"] or "localhost", int(settings_dict["PORT"] or 5432)
    return f"{host}/.s.PGSQL.{port}" if host.startswith("/") else (host, port)


def _poll(url: str, headers: dict[str, str], want: int, timeout: float) -> HttpResult:
    deadline = time.monotonic() + timeout
    while True:
        result = http_request(url, headers=headers)
        if result.status == want or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


def test_database_outage_answers_503_json_and_recovers_by_itself(
    make_api_key: Callable[..., CreatedApiKey],
) -> None:
    key = make_api_key("alice")
    auth = {"Authorization": f"Bearer {key.raw_key}"}
    proxy = TcpProxy(_upstream())
    proxy.start()
    env = {
        "DATABASE_URL": database_url(connection.settings_dict, host="127.0.0.1", port=proxy.port),
        "DATABASE_POOL_TIMEOUT": "2",
        "DATABASE_CONNECT_TIMEOUT": "2",
    }
    try:
        with app_server(env) as base_url:
            assert http_request(f"{base_url}/readyz").status == 200
            assert http_request(f"{base_url}/api/v1/me", headers=auth).status == 200

            proxy.stop()
            ready_down = http_request(f"{base_url}/readyz")
            api_down = http_request(f"{base_url}/api/v1/me", headers=auth)

            proxy.start()
            ready_again = _poll(f"{base_url}/readyz", {}, 200, timeout=30)
            api_again = http_request(f"{base_url}/api/v1/me", headers=auth)
    finally:
        proxy.stop()

    assert ready_down.status == 503
    assert ready_down.body["error"]["code"] == "database_unavailable"
    assert api_down.status == 503
    assert api_down.body["error"]["code"] == "database_unavailable"
    assert api_down.elapsed < 10
    assert ready_again.status == 200
    assert api_again.status == 200
    assert api_again.body["user_id"] == "alice"


def test_requests_fail_fast_while_the_database_is_known_down_and_recover_by_themselves(
    make_api_key: Callable[..., CreatedApiKey],
) -> None:
    key = make_api_key("alice")
    auth = {"Authorization": f"Bearer {key.raw_key}"}
    proxy = TcpProxy(_upstream())
    proxy.start()
    env = {
        "DATABASE_URL": database_url(connection.settings_dict, host="127.0.0.1", port=proxy.port),
        "DATABASE_POOL_TIMEOUT": "5",
        "DATABASE_CONNECT_TIMEOUT": "2",
        "DATABASE_FAIL_FAST_SECONDS": "1",
    }
    try:
        with app_server(env) as base_url:
            assert http_request(f"{base_url}/api/v1/me", headers=auth).status == 200

            proxy.stop()
            first = http_request(f"{base_url}/api/v1/me", headers=auth)
            second = http_request(f"{base_url}/api/v1/me", headers=auth)
            ready_down = http_request(f"{base_url}/readyz")

            proxy.start()
            recovered = _poll(f"{base_url}/api/v1/me", auth, 200, timeout=15)
    finally:
        proxy.stop()

    assert first.status == 503
    assert second.status == 503
    assert second.body["error"]["code"] == "database_unavailable"
    assert second.headers["Retry-After"] == "1"
    assert second.elapsed < 0.5
    assert ready_down.status == 503
    assert ready_down.elapsed < 0.5
    assert recovered.status == 200
    assert recovered.body["user_id"] == "alice"


def test_an_outage_is_noticed_at_once_and_healed_within_two_seconds_of_the_return(
    make_api_key: Callable[..., CreatedApiKey],
) -> None:
    """With the default pool timeout (10 s): the first request after the database went away
    answers 503 without waiting for the pool, later ones within 100 ms; after an outage long
    enough for the pool's reconnection backoff to reach 8 s, /readyz is ready within 2 s of the
    database's return; and when the database goes away again right after (a flap), requests
    again answer at once, not after the pool timeout."""
    auth = {"Authorization": f"Bearer {make_api_key('alice').raw_key}"}
    proxy = TcpProxy(_upstream())
    proxy.start()
    env = {
        "DATABASE_URL": database_url(connection.settings_dict, host="127.0.0.1", port=proxy.port),
        "DATABASE_POOL_TIMEOUT": "10",
    }
    try:
        with app_server(env) as base_url:
            assert http_request(f"{base_url}/api/v1/me", headers=auth).status == 200

            proxy.stop()
            first = http_request(f"{base_url}/api/v1/me", headers=auth)
            during = [http_request(f"{base_url}/api/v1/me", headers=auth) for _ in range(5)]
            time.sleep(12)  # the pool's attempts back off: 1, 2, 4, 8 s apart without the cap
            proxy.start()
            back = time.monotonic()
            ready = _poll_fast(f"{base_url}/readyz", 200, timeout=15)
            ready_after = time.monotonic() - back

            proxy.stop()  # and away again
            flapped = [http_request(f"{base_url}/api/v1/me", headers=auth) for _ in range(3)]
            proxy.start()
            healed = _poll_fast(f"{base_url}/api/v1/me", 200, timeout=15, headers=auth)
    finally:
        proxy.stop()

    assert first.status == 503
    assert first.elapsed < 1.0
    assert [result.status for result in during] == [503] * 5
    assert max(result.elapsed for result in during) < 0.1
    assert ready.status == 200
    assert ready_after < 2.0
    assert [result.status for result in flapped] == [503] * 3
    assert max(result.elapsed for result in flapped) < 1.0
    assert healed.status == 200


def _poll_fast(
    url: str, want: int, timeout: float, headers: dict[str, str] | None = None
) -> HttpResult:
    deadline = time.monotonic() + timeout
    while True:
        result = http_request(url, headers=headers or {})
        if result.status == want or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


def test_readyz_names_a_missing_worker_kind_until_its_worker_runs() -> None:
    env = {
        "DATABASE_URL": database_url(connection.settings_dict),
        "READYZ_WORKERS": "background",
        "WORKER_HEARTBEAT_SECONDS": "0.2",
        "WORKER_STALLED_SECONDS": "1",
    }
    with connection.cursor() as cursor:
        # Workers left by other tests' killed processes must not count as this one.
        cursor.execute("DELETE FROM ironclaw_site_workername")

    with app_server(env) as base_url:
        missing = http_request(f"{base_url}/readyz")
        with worker_process(env, queues="default", concurrency=1, name="background"):
            present = _poll(f"{base_url}/readyz", {}, 200, timeout=30)
        time.sleep(0.5)
        gone = http_request(f"{base_url}/readyz")

    assert missing.status == 503
    assert missing.body["error"]["code"] == "workers_missing"
    assert missing.body["error"]["details"]["checks"] == {
        "database": "ok",
        "migrations": "ok",
        "workers": {"background": "missing"},
    }
    assert present.status == 200
    assert present.body["checks"]["workers"]["background"] == "alive"
    assert gone.status == 503
    assert gone.body["error"]["details"]["checks"]["workers"]["background"] == "missing"


def test_readyz_requiring_a_worker_fails_once_the_only_worker_is_killed() -> None:
    env = {
        "DATABASE_URL": database_url(connection.settings_dict),
        "READYZ_REQUIRE_WORKER": "true",
        "WORKER_HEARTBEAT_SECONDS": "0.2",
        "WORKER_STALLED_SECONDS": "1",
    }
    with connection.cursor() as cursor:
        # Workers of other tests' processes must not count as this one.
        cursor.execute("DELETE FROM procrastinate_workers")

    with app_server(env) as base_url:
        before = http_request(f"{base_url}/readyz")
        with worker_process(env, queues="default", concurrency=1, name="anything") as worker:
            running = _poll(f"{base_url}/readyz", {}, 200, timeout=30)
            worker.send_signal(signal.SIGKILL)
            worker.wait()
        # The dead worker's row stays (nobody stopped it cleanly) until its heartbeat ages out.
        after_kill = _poll(f"{base_url}/readyz", {}, 503, timeout=10)

    assert before.status == 503
    assert before.body["error"]["code"] == "workers_missing"
    assert running.status == 200
    assert after_kill.status == 503
    assert after_kill.body["error"]["code"] == "workers_missing"
    assert "READYZ_REQUIRE_WORKER" in after_kill.body["error"]["message"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM procrastinate_workers")
        assert cursor.fetchone()[0] == 1

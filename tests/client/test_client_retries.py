"""Retries against real refusals: a database outage (503, the link cut by a TCP proxy), an
exhausted connection pool (503, its only connection held), and a held row lock (409 ``*_busy``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import psycopg
import pytest
from django.db import connection
from ironclaw_client import NO_RETRY, Busy, Client, RateLimited, RetryPolicy, Unavailable

from accounts.services import CreatedApiKey
from tests.client.conftest import hold_row, live_env
from tests.support.locks import psycopg_params, wait_for_lock_waiter
from tests.support.metrics import metric_sample
from tests.support.servers import HttpResult, TcpProxy, app_server, database_url, http_request

pytestmark = pytest.mark.django_db(transaction=True)


def _upstream() -> str | tuple[str, int]:
    settings_dict = connection.settings_dict
    host, port = settings_dict["HOST"] or "localhost", int(settings_dict["PORT"] or 5432)
    return f"{host}/.s.PGSQL.{port}" if host.startswith("/") else (host, port)


class CountingClient:
    """A client whose HTTP requests are counted (by httpx's own event hook)."""

    def __init__(self, base_url: str, key: str, retry: RetryPolicy):
        self.paths: list[str] = []
        self.http = httpx.Client(
            base_url=base_url,
            timeout=15,
            event_hooks={"request": [lambda request: self.paths.append(request.url.path)]},
        )
        self.client = Client(base_url, key, retry=retry, http=self.http)


@pytest.fixture
def proxied_server() -> Iterator[tuple[str, TcpProxy]]:
    proxy = TcpProxy(_upstream())
    proxy.start()
    env = live_env(
        DATABASE_URL=database_url(connection.settings_dict, host="127.0.0.1", port=proxy.port),
        DATABASE_POOL_TIMEOUT="2",
        DATABASE_CONNECT_TIMEOUT="2",
        DATABASE_FAIL_FAST_SECONDS="0.5",
    )
    try:
        with app_server(env) as base_url:
            yield base_url, proxy
    finally:
        proxy.stop()


def _connected_then_cut_off(
    proxied_server: tuple[str, TcpProxy],
    make_api_key: Callable[..., CreatedApiKey],
    retry: RetryPolicy,
) -> tuple[CountingClient, TcpProxy]:
    """Alice's client, seen to reach the server, then the server's database link cut."""
    base_url, proxy = proxied_server
    counting = CountingClient(base_url, make_api_key("alice").raw_key, retry)
    assert counting.client.me()["user_id"] == "alice"
    proxy.stop()
    return counting, proxy


def test_a_read_during_an_outage_is_retried_until_the_database_returns(
    proxied_server: tuple[str, TcpProxy], make_api_key: Callable[..., CreatedApiKey]
) -> None:
    counting, proxy = _connected_then_cut_off(
        proxied_server,
        make_api_key,
        RetryPolicy(max_attempts=30, max_seconds=30, base_delay=0.2, max_delay=1),
    )
    restorer = threading.Timer(2.0, proxy.start)
    restorer.start()
    started = time.monotonic()

    me = counting.client.me()

    elapsed = time.monotonic() - started
    restorer.join()
    assert me["user_id"] == "alice"
    assert elapsed >= 1.5
    assert len(counting.paths) >= 3


def test_an_outage_longer_than_the_budget_raises_unavailable_for_reads_and_writes_alike(
    proxied_server: tuple[str, TcpProxy], make_api_key: Callable[..., CreatedApiKey]
) -> None:
    counting, _ = _connected_then_cut_off(
        proxied_server,
        make_api_key,
        RetryPolicy(max_attempts=100, max_seconds=4, base_delay=0.1, max_delay=0.3),
    )
    started = time.monotonic()

    with pytest.raises(Unavailable) as read_error:
        counting.client.read_document("notes.md")
    read_elapsed = time.monotonic() - started
    read_attempts = len(counting.paths) - 1
    started = time.monotonic()
    with pytest.raises(Unavailable) as write_error:
        counting.client.append_document("notes.md", "once")
    append_elapsed = time.monotonic() - started
    append_attempts = len(counting.paths) - 1 - read_attempts

    assert (read_error.value.status, read_error.value.code) == (503, "database_unavailable")
    assert read_error.value.retry_after is not None
    # Retry-After (1 s) paces the attempts; the budget (4 s of waiting) ends them.
    assert read_attempts >= 2
    assert 2 <= read_elapsed < 10
    # An append carries an idempotency key, so it is retried like the read, within the budget.
    assert write_error.value.status == 503
    assert append_attempts >= 2
    assert 2 <= append_elapsed < 10


@contextmanager
def _only_pooled_connection_held(base_url: str, key: str) -> Iterator[psycopg.Connection]:
    """The server's only pooled connection taken by a request blocked on a lock: the test's
    ``ACCESS EXCLUSIVE`` lock on ``accounts_apikey``, which every authenticated request reads.
    Meanwhile any other request waits ``DATABASE_POOL_TIMEOUT`` for a connection, then is
    answered 503. Yields the lock's holder: its rollback (or the block's end) frees the pool."""
    # Warm the single pooled connection so the blocked request does not pay to open it.
    assert http_request(f"{base_url}/readyz").status == 200
    blocked: list[HttpResult] = []
    auth = {"Authorization": f"Bearer {key}"}
    with (
        psycopg.connect(**psycopg_params()) as holder,
        psycopg.connect(**psycopg_params(), autocommit=True) as monitor,
    ):
        holder.execute("LOCK TABLE accounts_apikey IN ACCESS EXCLUSIVE MODE")
        request = threading.Thread(
            target=lambda: blocked.append(http_request(f"{base_url}/api/v1/me", headers=auth))
        )
        request.start()
        try:
            wait_for_lock_waiter(monitor)
            yield holder
        finally:
            holder.rollback()
            request.join(timeout=30)
    assert [result.status for result in blocked] == [200]


def test_a_503_from_a_held_pool_is_retried_for_a_read_and_for_a_message_under_its_key(
    make_api_key: Callable[..., CreatedApiKey],
) -> None:
    alice, bob = make_api_key("alice").raw_key, make_api_key("bob").raw_key
    env = live_env(DATABASE_POOL_SIZE="1", DATABASE_POOL_TIMEOUT="1")
    with app_server(env, threads=2) as base_url:
        # Each attempt waits the pool timeout (1 s) for its 503, whose Retry-After (1 s) paces
        # the next: a 3 s budget ends after two attempts, long before the pool is freed.
        short = CountingClient(
            base_url, alice, RetryPolicy(max_attempts=20, max_seconds=3, base_delay=0.2)
        )
        patient = CountingClient(
            base_url, alice, RetryPolicy(max_attempts=20, max_seconds=20, base_delay=0.2)
        )
        with _only_pooled_connection_held(base_url, bob) as holder:
            started = time.monotonic()
            with pytest.raises(Unavailable) as short_error:
                short.client.me()
            short_elapsed = time.monotonic() - started

            with pytest.raises(Unavailable) as message_error:
                short.client.send_message("web", "hi")
            message_paths = [path for path in short.paths if path == "/api/v1/messages"]
            short.paths[:] = [path for path in short.paths if path != "/api/v1/messages"]
            patient.paths.clear()

            releaser = threading.Timer(2.0, holder.rollback)
            releaser.start()
            try:
                started = time.monotonic()
                me = patient.client.me()
                patient_elapsed = time.monotonic() - started
            finally:
                releaser.cancel()
                releaser.join()
        scrape = http_request(f"{base_url}/metrics")

    assert (short_error.value.status, short_error.value.code) == (503, "database_unavailable")
    assert short_error.value.retry_after == 1
    assert short.paths == ["/api/v1/me"] * len(short.paths)
    assert len(short.paths) >= 2
    assert 2.5 <= short_elapsed < 6
    # A 503 leaves it unknown whether a message was written: the client retries it under its
    # idempotency key (so it would be stored once) until the budget ends.
    assert (message_error.value.status, message_error.value.code) == (503, "database_unavailable")
    assert len(message_paths) >= 2
    assert me["user_id"] == "alice"
    assert len(patient.paths) >= 2
    assert patient_elapsed >= 1.5
    # Every attempt but the last successful read was a real pool timeout answered 503.
    pool_timeouts = len(short.paths) + len(message_paths) + len(patient.paths) - 1
    assert metric_sample(scrape.body, "ironclaw_db_pool_timeouts_total") == pool_timeouts


@pytest.fixture
def lock_holder() -> Iterator[psycopg.Connection]:
    with psycopg.connect(**psycopg_params()) as holder:
        yield holder


def test_a_busy_thread_is_retried_until_its_lock_is_released(
    live_url: str,
    make_api_key: Callable[..., CreatedApiKey],
    lock_holder: psycopg.Connection,
) -> None:
    key = make_api_key("alice").raw_key
    counting = CountingClient(
        live_url, key, RetryPolicy(max_attempts=20, max_seconds=20, base_delay=0.2, max_delay=0.5)
    )
    sent = counting.client.send_message("web", "hi")
    hold_row(lock_holder, "conversations_thread", sent["thread_id"])
    releaser = threading.Timer(1.0, lock_holder.rollback)
    releaser.start()
    counting.paths.clear()

    thread = counting.client.claim_thread(sent["thread_id"], "engine-1")

    releaser.join()
    assert thread["lease_owner"] == "engine-1"
    assert len(counting.paths) >= 2


def test_a_busy_conversation_is_retried_even_for_a_message_until_the_budget_is_spent(
    live_url: str,
    make_api_key: Callable[..., CreatedApiKey],
    lock_holder: psycopg.Connection,
) -> None:
    key = make_api_key("alice").raw_key
    counting = CountingClient(
        live_url, key, RetryPolicy(max_attempts=3, max_seconds=20, base_delay=0.05, max_delay=0.1)
    )
    sent = counting.client.send_message("web", "first")
    hold_row(lock_holder, "conversations_conversation", sent["conversation_id"])
    counting.paths.clear()

    with pytest.raises(Busy) as busy:
        counting.client.send_message("web", "second")
    lock_holder.rollback()
    after = counting.client.send_message("web", "third")

    assert (busy.value.status, busy.value.code) == (409, "conversation_busy")
    assert busy.value.retry_after == 1
    assert counting.paths == ["/api/v1/messages"] * 4
    assert after["seq"] == sent["seq"] + 2


def test_a_rate_limited_call_waits_for_retry_after_then_passes(
    make_api_key: Callable[..., CreatedApiKey],
) -> None:
    key = make_api_key("alice").raw_key
    # 60 a minute: a burst of 60, then a token a second (Retry-After: 1).
    with app_server(live_env(RATE_LIMIT_PER_MINUTE="60")) as base_url:
        impatient = Client(base_url, key, retry=NO_RETRY)
        limited = _spend_the_burst(impatient)
        counting = CountingClient(
            base_url, key, RetryPolicy(max_attempts=5, max_seconds=10, base_delay=0.05)
        )
        _spend_the_burst(impatient)
        started = time.monotonic()

        me = counting.client.me()

        elapsed = time.monotonic() - started
    assert (limited.status, limited.code) == (429, "rate_limited")
    assert limited.retry_after == 1
    assert me["user_id"] == "alice"
    assert len(counting.paths) >= 2
    assert elapsed >= 0.9


def _spend_the_burst(client: Client) -> RateLimited:
    for _ in range(200):
        try:
            client.me()
        except RateLimited as error:
            return error
    raise AssertionError("200 calls in a row were never rate limited")


def test_follow_rides_out_an_outage_longer_than_any_retry_budget(
    proxied_server: tuple[str, TcpProxy], make_api_key: Callable[..., CreatedApiKey]
) -> None:
    base_url, proxy = proxied_server
    key = make_api_key("alice").raw_key
    # No retries at all: only the stream itself can ride the outage out.
    follower_client = Client(base_url, key, retry=NO_RETRY)
    sender = Client(base_url, key, retry=RetryPolicy(max_attempts=30, max_seconds=30))
    sent = sender.send_message("web", "before the outage")
    seen: list[str] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def follow() -> None:
        try:
            for entry in follower_client.follow(
                sent["conversation_id"], after_seq=sent["seq"], wait_seconds=1, stop=stop
            ):
                seen.append(entry["content"])
        except BaseException as error:  # reported by the assertion below
            failures.append(error)

    follower = threading.Thread(target=follow)
    follower.start()
    proxy.stop()
    time.sleep(3)  # the follower's long-polls fail: 503s while the database is unreachable
    proxy.start()
    sender.me()  # a read, retried until the server has its database back
    sender.send_message("web", "after the outage")
    deadline = time.monotonic() + 20
    while "after the outage" not in seen and time.monotonic() < deadline and not failures:
        time.sleep(0.1)
    stop.set()
    follower.join(timeout=15)

    assert failures == []
    assert seen.count("after the outage") == 1
    assert "before the outage" not in seen


def test_a_message_sent_through_a_database_outage_is_stored_once(
    proxied_server: tuple[str, TcpProxy], make_api_key: Callable[..., CreatedApiKey]
) -> None:
    counting, proxy = _connected_then_cut_off(
        proxied_server,
        make_api_key,
        RetryPolicy(max_attempts=30, max_seconds=30, base_delay=0.2, max_delay=1),
    )
    restorer = threading.Timer(2.0, proxy.start)
    restorer.start()

    sent = counting.client.send_message("web", "through the outage")

    restorer.join()
    assert len([path for path in counting.paths if path == "/api/v1/messages"]) >= 2
    assert _user_messages(sent["conversation_id"]) == [(sent["seq"], "through the outage")]


def test_a_message_whose_answer_was_lost_is_retried_and_stored_once(
    make_api_key: Callable[..., CreatedApiKey], lock_holder: psycopg.Connection
) -> None:
    """The first attempt is acted on but its answer never arrives (the client's timeout ends it
    while the server waits for a lock); the retries, under the same key, wait for it and are
    answered with its answer."""
    key = make_api_key("alice").raw_key
    env = live_env(CONVERSATION_LOCK_TIMEOUT_MS="10000")
    with app_server(env, threads=8) as base_url:
        counting = CountingClient(
            base_url,
            key,
            RetryPolicy(max_attempts=20, max_seconds=30, base_delay=0.2, max_delay=0.5),
        )
        impatient = Client(
            base_url, key, timeout=1.0, retry=counting.client.retry, http=counting.http
        )
        first = counting.client.send_message("web", "first")
        hold_row(lock_holder, "conversations_conversation", first["conversation_id"])
        releaser = threading.Timer(2.5, lock_holder.rollback)
        releaser.start()
        counting.paths.clear()

        sent = impatient.send_message("web", "once")

        releaser.join()
    assert len(counting.paths) >= 2
    assert sent["seq"] == first["seq"] + 2
    assert _user_messages(first["conversation_id"]) == [
        (first["seq"], "first"),
        (sent["seq"], "once"),
    ]


def _user_messages(conversation_id: str) -> list[tuple[int, str]]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT seq, content FROM conversations_conversationentry"
            " WHERE conversation_id = %s AND sender = 'user' ORDER BY seq",
            [conversation_id],
        )
        return [(seq, content) for seq, content in cursor.fetchall()]

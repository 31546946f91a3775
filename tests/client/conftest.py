"""A live web server for the client's tests: threads wait for an external engine (nothing in
the server runs them), so the tests and the example engine play the engine over HTTP."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import psycopg
import pytest
from django.db import connection
from ironclaw_client import Client, RetryPolicy

from accounts.services import CreatedApiKey
from tests.support.servers import app_server, database_url

EXTERNAL_RUNNER = "conversations.runners.wait_for_external_engine"
# Short lock waits, so a held row lock answers 409 *_busy quickly.
LIVE_ENV = {
    "THREAD_RUNNER": EXTERNAL_RUNNER,
    "CONVERSATION_LOCK_TIMEOUT_MS": "200",
    # Search finds a document as soon as it is written (no indexing worker runs here).
    "WORKSPACE_INDEXING": "inline",
}
# Quick retries: the tests exercise the loop, not the production pacing.
TEST_RETRY = RetryPolicy(max_attempts=4, max_seconds=10, base_delay=0.05, max_delay=0.5)


def live_env(**extra: str) -> dict[str, str]:
    return {"DATABASE_URL": database_url(connection.settings_dict), **LIVE_ENV, **extra}


@pytest.fixture(scope="module")
def live_url(django_db_setup: None, django_db_blocker: Any) -> Iterator[str]:
    """One server per test module (each test's keys and rows are its own: the test database is
    flushed after every transactional test)."""
    # Every long-poll (entries, threads/next) holds a web thread while it waits: enough for ten
    # engine workers and ten users waiting for replies at once.
    with app_server(live_env(), threads=32) as base_url:
        yield base_url


@pytest.fixture
def make_client(
    live_url: str, make_api_key: Callable[..., CreatedApiKey]
) -> Iterator[Callable[..., Client]]:
    """A client with a fresh key: ``make_client("alice")`` or ``make_client(service=True)``."""
    clients: list[Client] = []

    def make(
        user_id: str | None = "alice", *, service: bool = False, http: httpx.Client | None = None
    ) -> Client:
        key = make_api_key(user_id, service=service)
        client = Client(live_url, key.raw_key, retry=TEST_RETRY, timeout=15, http=http)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def hold_row(holder: psycopg.Connection, table: str, row_id: str) -> None:
    """Lock one row in the holder's open transaction (released by its rollback)."""
    holder.execute(f"SELECT 1 FROM {table} WHERE id = %s FOR UPDATE", [row_id])

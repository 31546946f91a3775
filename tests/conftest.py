from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, settings
from rest_framework.test import APIClient

from accounts.services import CreatedApiKey, api_key_create
from core.notify import listener_stop
from engine.delta_sender import delta_sender
from tests.support import pooled_sessions
from tests.support.postgres_cluster import PostgresCluster, postgres_cluster_running
from tests.support.servers import database_url

# The Citus statement check (docs/citus.md): records what the API and the engine run, and fails
# the run on a statement that touches a tenant table without pinning it to one tenant.
pytest_plugins = ["tests.support.citus_check"]

# The servers and workers the tests start connect through DATABASE_URL, with which the settings
# require SECRET_KEY (several hosts must share one); they inherit this one.
os.environ.setdefault("SECRET_KEY", f"tests-{secrets.token_urlsafe(50)}")

# Property tests: modest in the suite (a run stays quick), thorough with HYPOTHESIS_PROFILE=long.
# No example database: nothing is written into the checkout, and a failure prints the example.
# The location keys of the direct connection's parameters (psycopg's names, Django's upper-cased).
DIRECT_KEYS = ("host", "port", "user", "password")

settings.register_profile(
    "suite",
    max_examples=60,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("long", parent=settings.get_profile("suite"), max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))

if os.environ.get(pooled_sessions.ENV):
    # A run through a transaction pooler (tests/core/test_pgbouncer.py): no session state.
    pooled_sessions.install()


@pytest.fixture
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A PostgreSQL 18 of the test's own on 127.0.0.1 (``.url``, ``.restart()``, ``.kill()``
    then ``.start()``; see tests/support/postgres_cluster.py), stopped and deleted after it:
    a test that counts rows finds only its own."""
    with postgres_cluster_running() as cluster:
        yield cluster


@pytest.fixture
def make_api_key(db: None) -> Callable[..., CreatedApiKey]:
    def make(
        user_id: str | None = "alice", *, service: bool = False, name: str = "test"
    ) -> CreatedApiKey:
        return api_key_create(name=name, user_id=None if service else user_id, is_service=service)

    return make


@pytest.fixture
def api_client() -> APIClient:
    return APIClient()


@pytest.fixture
def tenant_client(make_api_key: Callable[..., CreatedApiKey]) -> Callable[[str], APIClient]:
    """An API client authenticated with a fresh tenant key for ``user_id``."""

    def make(user_id: str) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {make_api_key(user_id).raw_key}")
        return client

    return make


@pytest.fixture(scope="session", autouse=True)
def _direct_url_for_the_test_database(django_db_setup: None) -> None:
    """Through a pooler (DATABASE_DIRECT_URL set), the processes tests start with DATABASE_URL
    set to the test database must be told PostgreSQL's own address for that database too."""
    from django.db import connection

    direct = connection.settings_dict.get("DIRECT")
    if direct is not None:
        os.environ["DATABASE_DIRECT_URL"] = database_url(
            {**connection.settings_dict, **{key.upper(): direct.get(key) for key in DIRECT_KEYS}}
        )


@pytest.fixture(scope="session", autouse=True)
def _notification_listener_stopped(django_db_setup: None) -> Iterator[None]:
    """Stop this process's notification listener and close its delta sender's connection before
    the test database is dropped: any test that waits, streams, subscribes or runs a turn
    starts one, and its connection would hold the database at the end of the session."""
    yield
    listener_stop()
    delta_sender().disconnect()

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.db import connection
from pytest_django.fixtures import Settings as SettingsWrapper

from tests.support.embeddings_server import FakeEmbeddingsServer, running_embeddings_server


@pytest.fixture(autouse=True)
def _workspace_defaults(settings: SettingsWrapper) -> None:
    """Index inline (so a write is searchable on return) with the offline hashing provider."""
    settings.WORKSPACE_INDEXING = "inline"
    settings.EMBEDDING_PROVIDER = "hashing"
    settings.EMBEDDING_DIMENSIONS = 64
    settings.WORKSPACE_RUNTIME_PATHS = [
        "engine/.runtime/",
        "engine/projects/",
        "engine/orchestrator/failures.json",
        "engine/README.md",
    ]


@pytest.fixture
def no_queued_jobs() -> Iterator[None]:
    """Procrastinate's tables are not flushed between transactional tests: start and end empty."""

    def purge() -> None:
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM procrastinate_jobs")

    purge()
    yield
    purge()


@pytest.fixture
def embeddings_server() -> Iterator[FakeEmbeddingsServer]:
    with running_embeddings_server() as server:
        yield server

from __future__ import annotations

from pathlib import Path

import pytest
from django.db import IntegrityError, connection, transaction
from pytest_django import DjangoAssertNumQueries
from pytest_django.fixtures import Settings as SettingsWrapper

from ironclaw_site.database import database_settings
from tests.workspace.factories import ChunkFactory, DocumentFactory, DocumentVersionFactory
from workspace import selectors, services
from workspace.errors import DocumentNotFound, DocumentTooLarge, PatchFailed
from workspace.models import Chunk, Document, DocumentVersion, IndexState
from workspace.search import workspace_search

pytestmark = pytest.mark.django_db

RUNTIME = "engine/.runtime/threads/t1.json"


def test_runtime_write_creates_no_version_and_no_chunk_in_at_most_two_statements(
    django_assert_max_num_queries: DjangoAssertNumQueries,
) -> None:
    services.document_write(user_id="alice", path=RUNTIME, content='{"step": 1} lessons')

    with django_assert_max_num_queries(2):
        document = services.document_write(
            user_id="alice", path=RUNTIME, content='{"step": 2} lessons'
        )

    assert document.content == '{"step": 2} lessons'
    assert document.is_runtime
    assert document.index_state == IndexState.SKIPPED
    assert DocumentVersion.objects.count() == 0
    assert Chunk.objects.count() == 0
    assert workspace_search(user_id="alice", query="lessons").results == []


def test_unchanged_runtime_write_is_one_statement_and_returns_the_document(
    django_assert_num_queries: DjangoAssertNumQueries,
) -> None:
    services.document_write(user_id="alice", path=RUNTIME, content="same")
    before = Document.objects.get(path=RUNTIME).updated_at

    with django_assert_num_queries(1):
        document = services.document_write(user_id="alice", path=RUNTIME, content="same")

    assert document.content == "same"
    assert Document.objects.get(path=RUNTIME).updated_at == before


def test_runtime_write_of_a_new_document_is_one_statement(
    django_assert_num_queries: DjangoAssertNumQueries,
) -> None:
    with django_assert_num_queries(1):
        services.document_write(
            user_id="alice", path="engine/projects/p--1/project.json", content="{}"
        )

    assert Document.objects.get(path="engine/projects/p--1/project.json").is_runtime


def test_runtime_append_is_one_atomic_statement(
    django_assert_num_queries: DjangoAssertNumQueries,
) -> None:
    services.document_append(user_id="alice", path=RUNTIME, content="first")

    with django_assert_num_queries(1):
        document = services.document_append(user_id="alice", path=RUNTIME, content="second")

    assert document.content == "first\nsecond"
    assert document.content_hash == services.content_hash("first\nsecond")
    assert DocumentVersion.objects.count() == 0


@pytest.mark.parametrize(
    ("replace_all", "expected", "count"), [(False, "b a a", 1), (True, "b b b", 3)]
)
def test_runtime_patch_is_at_most_two_statements(
    django_assert_max_num_queries: DjangoAssertNumQueries,
    replace_all: bool,
    expected: str,
    count: int,
) -> None:
    services.document_write(user_id="alice", path=RUNTIME, content="a a a")

    with django_assert_max_num_queries(2):
        result = services.document_patch(
            user_id="alice", path=RUNTIME, old="a", new="b", replace_all=replace_all
        )

    assert result.document.content == expected
    assert result.replacements == count
    assert result.document.content_hash == services.content_hash(expected)
    assert DocumentVersion.objects.count() == 0


def test_runtime_patch_failures_stay_within_two_statements(
    django_assert_max_num_queries: DjangoAssertNumQueries,
) -> None:
    services.document_write(user_id="alice", path=RUNTIME, content="abc")

    with django_assert_max_num_queries(2), pytest.raises(PatchFailed):
        services.document_patch(user_id="alice", path=RUNTIME, old="zzz", new="y")
    with django_assert_max_num_queries(2), pytest.raises(DocumentNotFound):
        services.document_patch(user_id="alice", path="engine/.runtime/none", old="a", new="b")


def test_runtime_read_versions_delete_and_restore_stay_within_two_statements(
    django_assert_max_num_queries: DjangoAssertNumQueries,
) -> None:
    services.document_write(user_id="alice", path=RUNTIME, content="x")

    with django_assert_max_num_queries(2):
        selectors.document_get(user_id="alice", path=RUNTIME)
    with django_assert_max_num_queries(2):
        assert list(selectors.document_versions(user_id="alice", path=RUNTIME)) == []
    with django_assert_max_num_queries(2), pytest.raises(Exception, match="no version"):
        services.document_restore(user_id="alice", path=RUNTIME, version=1)
    with django_assert_max_num_queries(2):
        services.document_delete(user_id="alice", path=RUNTIME)

    assert not Document.objects.filter(path=RUNTIME).exists()


def test_runtime_append_over_the_size_limit_is_refused(settings: SettingsWrapper) -> None:
    settings.WORKSPACE_MAX_DOCUMENT_BYTES = 10
    services.document_write(user_id="alice", path=RUNTIME, content="12345678")

    with pytest.raises(DocumentTooLarge):
        services.document_append(user_id="alice", path=RUNTIME, content="abc")

    assert Document.objects.get(path=RUNTIME).content == "12345678"


def test_document_that_becomes_runtime_loses_its_chunks(settings: SettingsWrapper) -> None:
    settings.WORKSPACE_RUNTIME_PATHS = []
    services.document_write(user_id="alice", path=RUNTIME, content="indexed engine state words")
    assert Chunk.objects.filter(document__path=RUNTIME).count() == 1
    settings.WORKSPACE_RUNTIME_PATHS = ["engine/.runtime/"]

    services.document_write(user_id="alice", path=RUNTIME, content="new engine state")

    document = Document.objects.get(path=RUNTIME)
    assert document.is_runtime
    assert Chunk.objects.filter(document=document).count() == 0


def test_database_refuses_chunks_for_a_runtime_document() -> None:
    document = DocumentFactory(path=RUNTIME, is_runtime=True)

    with pytest.raises(IntegrityError), transaction.atomic():
        ChunkFactory(document=document)

    assert Chunk.objects.count() == 0


def test_database_refuses_versions_for_a_runtime_document() -> None:
    document = DocumentFactory(path=RUNTIME, is_runtime=True)

    with pytest.raises(IntegrityError), transaction.atomic():
        DocumentVersionFactory(document=document)

    assert DocumentVersion.objects.count() == 0


def test_a_path_that_stops_being_runtime_is_versioned_and_indexed_again(
    settings: SettingsWrapper,
) -> None:
    services.document_write(user_id="alice", path=RUNTIME, content="engine state")
    settings.WORKSPACE_RUNTIME_PATHS = []

    document = services.document_write(user_id="alice", path=RUNTIME, content="now a document")
    services.document_write(user_id="alice", path=RUNTIME, content="edited document")

    document.refresh_from_db()
    assert not document.is_runtime
    assert document.index_state == IndexState.INDEXED
    assert list(DocumentVersion.objects.values_list("content", flat=True)) == ["now a document"]
    assert Chunk.objects.filter(document=document).count() == 1


def test_a_connections_repeated_runtime_write_is_a_prepared_statement() -> None:
    for step in range(6):
        services.document_write(user_id="alice", path=RUNTIME, content=f'{{"step": {step}}}')

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_prepared_statements"
            " WHERE statement LIKE '%%INSERT INTO workspace_document%%'"
        )
        (prepared,) = cursor.fetchone()
    assert prepared == 1


def test_prepared_statements_can_be_turned_off_for_a_pooler() -> None:
    options = {"url_config": None, "embedded_dir": Path("x"), "embedded_name": "x"}
    sizes = {"pool_size": 2, "pool_timeout": 1, "connect_timeout": 1}

    on = database_settings(**options, **sizes)  # type: ignore[arg-type]
    off = database_settings(**options, **sizes, prepared_statements=False)  # type: ignore[arg-type]

    assert on["OPTIONS"]["prepare_threshold"] == 5
    assert off["OPTIONS"]["prepare_threshold"] is None

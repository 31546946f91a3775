"""Real threads, real connections: the races that the origin system (the Rust agent platform this
service re-creates) documented as limitations."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta

import psycopg
import pytest
from django.db import connection, transaction
from django.utils import timezone
from procrastinate.contrib.django.models import ProcrastinateJob
from pytest_django.fixtures import Settings as SettingsWrapper

from tests.support.concurrency import run_together_or_raise
from tests.support.embeddings_server import FakeEmbeddingsServer
from tests.support.locks import psycopg_params
from workspace import services
from workspace.chunking import chunk_text
from workspace.errors import DocumentBusy
from workspace.models import Chunk, Document, DocumentVersion, IndexState

pytestmark = pytest.mark.django_db(transaction=True)


def test_concurrent_writers_never_duplicate_version_numbers() -> None:
    writers, writes_each = 8, 5

    def writer(number: int) -> Callable[[], None]:
        def work() -> None:
            for round_ in range(writes_each):
                services.document_write(
                    user_id="alice",
                    path="shared/plan.md",
                    content=f"writer {number} round {round_}",
                )

        return work

    run_together_or_raise([writer(number) for number in range(writers)])

    assert Document.objects.filter(path="shared/plan.md").count() == 1
    versions = sorted(DocumentVersion.objects.values_list("version", flat=True))
    # Every write but the very first (which replaced the empty new document) versioned the
    # content it overwrote, each with its own number, without gaps.
    assert versions == list(range(1, writers * writes_each))


def test_concurrent_runtime_appends_lose_nothing() -> None:
    appenders = 8

    def appender(number: int) -> Callable[[], None]:
        def work() -> None:
            for round_ in range(5):
                services.document_append(
                    user_id="alice", path="engine/.runtime/log.txt", content=f"{number}-{round_}"
                )

        return work

    run_together_or_raise([appender(number) for number in range(appenders)])

    lines = Document.objects.get(path="engine/.runtime/log.txt").content.split("\n")
    assert sorted(lines) == sorted(f"{n}-{r}" for n in range(appenders) for r in range(5))


def test_concurrent_appends_to_a_document_lose_nothing() -> None:
    def appender(number: int) -> Callable[[], None]:
        def work() -> None:
            for round_ in range(3):
                services.document_append(
                    user_id="alice", path="log.md", content=f"{number}-{round_}"
                )

        return work

    run_together_or_raise([appender(number) for number in range(6)])

    lines = Document.objects.get(path="log.md").content.split("\n")
    assert len(lines) == 18
    assert sorted(DocumentVersion.objects.values_list("version", flat=True)) == list(range(1, 18))


def _chunk_sets_are_consistent() -> bool:
    """In one snapshot: every chunk of the document comes from one content, numbered 0..n-1."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT count(DISTINCT source_hash), count(*), coalesce(max(chunk_index), -1)
            FROM workspace_chunk c JOIN workspace_document d ON d.id = c.document_id
            WHERE d.path = 'race/doc.md'
            """
        )
        hashes, count, highest = cursor.fetchone()
    return hashes <= 1 and count == highest + 1


@pytest.mark.usefixtures("no_queued_jobs")
def test_concurrent_indexers_never_leave_a_mix_of_two_versions_chunks(
    settings: SettingsWrapper,
) -> None:
    settings.WORKSPACE_INDEXING = "queue"  # writers don't index; the indexer threads do
    settings.WORKSPACE_CHUNK_WORDS = 20
    settings.WORKSPACE_CHUNK_MIN_WORDS = 5
    document = services.document_write(user_id="alice", path="race/doc.md", content="start")
    contents = [
        " ".join(f"v{version}w{word}" for word in range(60 + version)) for version in range(12)
    ]
    inconsistent: list[int] = []
    stop = threading.Event()

    def writer() -> None:
        for content in contents:
            services.document_write(user_id="alice", path="race/doc.md", content=content)

    def indexer() -> None:
        while not stop.is_set():
            services.document_index(document_id=document.id, force=True)

    def checker() -> None:
        while not stop.is_set():
            if not _chunk_sets_are_consistent():
                inconsistent.append(1)

    def writer_then_stop() -> None:
        try:
            writer()
        finally:
            stop.set()

    run_together_or_raise([writer_then_stop, indexer, indexer, indexer, checker])
    services.document_index(document_id=document.id)

    assert inconsistent == []
    final = Document.objects.get(pk=document.id)
    chunks = list(Chunk.objects.filter(document=final).order_by("chunk_index"))
    assert {chunk.source_hash for chunk in chunks} == {final.content_hash}
    assert [chunk.content for chunk in chunks] == chunk_text(final.content)
    assert final.indexed_hash == final.content_hash


def test_concurrent_first_writes_create_one_document() -> None:
    def writer(number: int) -> Callable[[], None]:
        def work() -> None:
            services.document_write(user_id="alice", path="new/doc.md", content=f"from {number}")

        return work

    run_together_or_raise([writer(number) for number in range(8)])

    assert Document.objects.filter(path="new/doc.md").count() == 1
    assert DocumentVersion.objects.count() == 7


def test_concurrent_runtime_patches_lose_nothing() -> None:
    path = "engine/.runtime/board.txt"
    services.document_write(
        user_id="alice", path=path, content=" ".join(f"[t{n}]" for n in range(8))
    )

    def patcher(number: int) -> Callable[[], None]:
        def work() -> None:
            services.document_patch(
                user_id="alice", path=path, old=f"[t{number}]", new=f"<done{number}>"
            )

        return work

    run_together_or_raise([patcher(number) for number in range(8)])

    document = Document.objects.get(path=path)
    assert document.content == " ".join(f"<done{n}>" for n in range(8))
    assert document.content_hash == services.content_hash(document.content)


@pytest.mark.usefixtures("no_queued_jobs")
def test_skip_indexing_set_while_an_indexer_embeds_leaves_no_chunks(
    settings: SettingsWrapper, embeddings_server: FakeEmbeddingsServer
) -> None:
    settings.WORKSPACE_INDEXING = "queue"
    settings.EMBEDDING_PROVIDER = "openai"
    settings.EMBEDDING_BASE_URL = embeddings_server.url
    settings.EMBEDDING_MAX_RETRIES = 0
    document = services.document_write(user_id="alice", path="notes/a.md", content="ferns")
    embeddings_server.delay = 1.0
    indexer = threading.Thread(target=_index_then_close, args=(document.id,))

    indexer.start()
    deadline = time.monotonic() + 10
    while not embeddings_server.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    # The indexer is now embedding, outside any transaction: a metadata-only write goes through.
    services.document_write(
        user_id="alice", path="notes/a.md", content="ferns", metadata={"skip_indexing": True}
    )
    indexer.join(timeout=30)

    final = Document.objects.get(pk=document.id)
    assert embeddings_server.requests
    assert final.index_state == IndexState.SKIPPED
    assert Chunk.objects.filter(document=final).count() == 0


def _index_then_close(document_id: uuid.UUID) -> None:
    try:
        services.document_index(document_id=document_id)
    finally:
        connection.close()


@pytest.mark.parametrize("operation", ["write", "append", "patch", "restore"])
def test_a_write_waiting_past_the_lock_timeout_is_document_busy_and_changes_nothing(
    settings: SettingsWrapper, operation: str
) -> None:
    settings.WORKSPACE_LOCK_TIMEOUT_MS = 100
    services.document_write(user_id="alice", path="held.md", content="one")
    services.document_write(user_id="alice", path="held.md", content="two")
    locked, release = threading.Event(), threading.Event()

    def hold_the_row() -> None:
        try:
            with transaction.atomic():
                Document.objects.select_for_update().get(path="held.md")
                locked.set()
                release.wait(timeout=30)
        finally:
            connection.close()

    holder = threading.Thread(target=hold_the_row)
    holder.start()
    locked.wait(timeout=10)
    writes: dict[str, Callable[[], object]] = {
        "write": lambda: services.document_write(user_id="alice", path="held.md", content="x"),
        "append": lambda: services.document_append(user_id="alice", path="held.md", content="x"),
        "patch": lambda: services.document_patch(
            user_id="alice", path="held.md", old="two", new="x"
        ),
        "restore": lambda: services.document_restore(user_id="alice", path="held.md", version=1),
    }
    try:
        started = time.monotonic()
        with pytest.raises(DocumentBusy):
            writes[operation]()
        waited = time.monotonic() - started
    finally:
        release.set()
        holder.join(timeout=30)

    assert waited < 5
    assert Document.objects.get(path="held.md").content == "two"
    assert DocumentVersion.objects.count() == 1


def test_the_pending_sweep_leaves_a_document_a_write_holds_and_does_not_wait_for_it(
    settings: SettingsWrapper, no_queued_jobs: None
) -> None:
    settings.WORKSPACE_INDEXING = "queue"
    for path in ("held.md", "free.md"):
        services.document_write(user_id="alice", path=path, content=path)
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM procrastinate_jobs")
    Document.objects.update(updated_at=timezone.now() - timedelta(minutes=10))
    held = Document.objects.get(path="held.md")

    # Another connection holds the row as a write in progress does; that write defers its own job.
    with psycopg.connect(**psycopg_params()) as writer:
        writer.execute(
            "SELECT 1 FROM workspace_document WHERE id = %s FOR NO KEY UPDATE", [held.pk]
        )
        # A sweep that waited for the row would fail here rather than hang the test.
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL lock_timeout = '2s'")
            during = services.pending_documents_requeue(pending_for=timedelta(minutes=5))
        writer.rollback()
    after = services.pending_documents_requeue(pending_for=timedelta(minutes=5))

    assert (during.documents_found, during.documents_queued) == (1, 1)
    assert (after.documents_found, after.documents_queued) == (2, 1)
    assert ProcrastinateJob.objects.filter(args={"document_id": str(held.pk)}).count() == 1
    assert ProcrastinateJob.objects.count() == 2

"""Indexing: chunk and embed a document outside any transaction, then swap its chunks in under
the row lock if the document still has the content that was embedded.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from django.db import connection, transaction
from django.utils import timezone
from procrastinate.contrib.django import app
from procrastinate.exceptions import AlreadyEnqueued

from core.log_context import job_args
from workspace.chunking import chunk_text
from workspace.embeddings import EmbeddingError, embedding_provider
from workspace.metadata import flag_is_set
from workspace.metrics import EMBEDDING_ERRORS
from workspace.models import Chunk, Document, IndexState
from workspace.paths import is_runtime_path
from workspace.selectors import effective_metadata

logger = logging.getLogger(__name__)

# Registered by workspace.tasks (queue ``indexing``); deferred by name so that module can import
# the services without a cycle.
INDEX_DOCUMENT_TASK = "workspace.index_document"


class IndexOutcome(StrEnum):
    INDEXED = "indexed"
    SKIPPED = "skipped"
    FAILED = "failed"
    STALE = "stale"
    MISSING = "missing"
    UP_TO_DATE = "up_to_date"


def _index_queueing_lock(document_id: uuid.UUID | str) -> str:
    return f"workspace-index:{document_id}"


def document_index_enqueue(*, document_id: uuid.UUID) -> bool:
    """Defer the indexing job for a document, at most one waiting job per document; False when
    one was already waiting.

    Runs inside the caller's transaction (the job becomes visible when it commits). The queueing
    lock makes a second deferral raise a unique violation, so it gets its own savepoint: the
    surrounding write must not be aborted by "already queued".
    """
    try:
        with transaction.atomic():
            app.configure_task(
                name=INDEX_DOCUMENT_TASK,
                # An unknown name would otherwise defer to the default queue with no retries.
                allow_unknown=False,
                queueing_lock=_index_queueing_lock(document_id),
            ).defer(document_id=str(document_id), **job_args())
    except AlreadyEnqueued:
        # A job for this document has not started yet; it will read the latest content.
        return False
    return True


@dataclass
class PendingRequeue:
    documents_found: int = 0
    documents_queued: int = 0
    batches: int = 0


# The queueing locks, of those asked, that a waiting or running job holds. Every deferral sets
# one; Procrastinate's unique index on it serves the waiting jobs, and few jobs are running.
_LIVE_INDEX_JOBS = """
    SELECT queueing_lock FROM procrastinate_jobs
    WHERE queueing_lock = ANY(%s) AND status IN ('todo', 'doing')
"""


def pending_documents_requeue(*, pending_for: timedelta, batch_size: int = 500) -> PendingRequeue:
    """Defer indexing again for documents left ``pending`` (unchanged for ``pending_for``) with
    no indexing job waiting or running: their job was lost, or failed for good while the database
    was down. One transaction per batch of documents, locked in pk order with SKIP LOCKED: a
    document a write holds is left to that write, which defers its own job. A rerun finds the
    jobs this one deferred waiting, and defers nothing twice.
    """
    cutoff = timezone.now() - pending_for
    summary = PendingRequeue()
    after: uuid.UUID | None = None
    while True:
        with transaction.atomic():
            # The lock keeps writes of these documents out until the jobs below are deferred, so
            # a write's job cannot appear (or start running) between the check and the deferral.
            due = Document.objects.for_update(skip_locked=True).filter(
                index_state=IndexState.PENDING, is_runtime=False, updated_at__lt=cutoff
            )
            if after is not None:
                due = due.filter(pk__gt=after)
            ids = list(due.order_by("pk").values_list("pk", flat=True)[:batch_size])
            if not ids:
                return summary
            after = ids[-1]
            with connection.cursor() as cursor:
                cursor.execute(_LIVE_INDEX_JOBS, [[_index_queueing_lock(pk) for pk in ids]])
                live = {row[0] for row in cursor.fetchall()}
            for document_id in ids:
                if _index_queueing_lock(document_id) not in live:
                    summary.documents_queued += document_index_enqueue(document_id=document_id)
            summary.documents_found += len(ids)
        summary.batches += 1
        if len(ids) < batch_size:
            return summary


def _skip_indexing(document_id: uuid.UUID, user_id: str, source_hash: str) -> IndexOutcome:
    with transaction.atomic():
        locked = (
            Document.objects.for_update()
            .filter(pk=document_id, user_id=user_id, content_hash=source_hash)
            .first()
        )
        if locked is None:
            return IndexOutcome.STALE
        Chunk.objects.filter(document_id=document_id, user_id=user_id).delete()
        Document.objects.filter(pk=document_id, user_id=user_id).update(
            index_state=IndexState.SKIPPED, indexed_hash=""
        )
    return IndexOutcome.SKIPPED


def document_index(
    *, document_id: uuid.UUID | str, user_id: str | None = None, force: bool = False
) -> IndexOutcome:
    """Chunk and embed a document, then replace its chunks in one transaction under the row lock,
    only if the document still has the content that was chunked (a newer write wins).

    Embedding runs before that transaction. If it fails, chunks are stored without vectors and the
    state is ``failed`` (full-text search still works; a retry or ``reindex_workspace`` fixes it).
    """
    # Without ``user_id`` (the indexing job names only the document) this read finds the tenant,
    # which every later statement names.
    documents = Document.objects.filter(pk=document_id)
    snapshot = (documents if user_id is None else documents.filter(user_id=user_id)).first()
    if snapshot is None:
        return IndexOutcome.MISSING
    source_hash = snapshot.content_hash
    if snapshot.is_runtime or is_runtime_path(snapshot.path):
        return _skip_indexing(snapshot.pk, snapshot.user_id, source_hash)
    effective = effective_metadata(
        user_id=snapshot.user_id, path=snapshot.path, own=snapshot.metadata
    )
    if flag_is_set(effective, "skip_indexing"):
        return _skip_indexing(snapshot.pk, snapshot.user_id, source_hash)
    if (
        not force
        and snapshot.index_state == IndexState.INDEXED
        and snapshot.indexed_hash == source_hash
    ):
        return IndexOutcome.UP_TO_DATE

    pieces = chunk_text(snapshot.content)
    provider = embedding_provider()
    failed = False
    try:
        vectors = provider.embed(pieces) if pieces else []
    except EmbeddingError as error:
        EMBEDDING_ERRORS.inc()
        logger.warning(
            "embedding failed for document %s: %s",
            document_id,
            error,
            extra={"document_id": str(snapshot.pk), "tenant": snapshot.user_id},
        )
        vectors = [None] * len(pieces)
        failed = True

    with transaction.atomic():
        locked = (
            Document.objects.for_update()
            .filter(
                pk=snapshot.pk, user_id=snapshot.user_id, content_hash=source_hash, is_runtime=False
            )
            .first()
        )
        # A metadata-only write (same hash) may have set skip_indexing and dropped the chunks
        # while we embedded; storing ours would resurrect them. Any write that still wants an
        # index marked the document pending and queued (or ran) a job of its own.
        if locked is None or locked.metadata != snapshot.metadata:
            return IndexOutcome.STALE
        Chunk.objects.filter(document_id=locked.pk, user_id=locked.user_id).delete()
        Chunk.objects.bulk_create(
            [
                Chunk(
                    document_id=locked.pk,
                    user_id=locked.user_id,
                    chunk_index=position,
                    content=piece,
                    source_hash=source_hash,
                    embedding=vector,
                    embedding_model=provider.name if vector is not None else "",
                )
                for position, (piece, vector) in enumerate(zip(pieces, vectors, strict=True))
            ]
        )
        Document.objects.filter(pk=locked.pk, user_id=locked.user_id).update(
            index_state=IndexState.FAILED if failed else IndexState.INDEXED,
            indexed_hash=source_hash,
        )
    logger.info(
        "indexed document %s: %d chunks%s",
        snapshot.pk,
        len(pieces),
        " without embeddings" if failed else "",
        extra={"document_id": str(snapshot.pk), "tenant": snapshot.user_id},
    )
    return IndexOutcome.FAILED if failed else IndexOutcome.INDEXED

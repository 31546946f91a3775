"""Indexing: chunk and embed a document outside any transaction, then swap its chunks in under
the row lock if the document still has the content that was embedded.
"""

from __future__ import annotations

import logging
import uuid
from enum import StrEnum

from django.db import transaction
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


def document_index_enqueue(*, document_id: uuid.UUID) -> None:
    """Defer the indexing job for a document, at most one waiting job per document.

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
                queueing_lock=f"workspace-index:{document_id}",
            ).defer(document_id=str(document_id), **job_args())
    except AlreadyEnqueued:
        # A job for this document has not started yet; it will read the latest content.
        pass


def _skip_indexing(document_id: uuid.UUID, source_hash: str) -> IndexOutcome:
    with transaction.atomic():
        locked = (
            Document.objects.for_update().filter(pk=document_id, content_hash=source_hash).first()
        )
        if locked is None:
            return IndexOutcome.STALE
        Chunk.objects.filter(document_id=document_id).delete()
        Document.objects.filter(pk=document_id).update(
            index_state=IndexState.SKIPPED, indexed_hash=""
        )
    return IndexOutcome.SKIPPED


def document_index(*, document_id: uuid.UUID | str, force: bool = False) -> IndexOutcome:
    """Chunk and embed a document, then replace its chunks in one transaction under the row lock,
    only if the document still has the content that was chunked (a newer write wins).

    Embedding runs before that transaction. If it fails, chunks are stored without vectors and the
    state is ``failed`` (full-text search still works; a retry or ``reindex_workspace`` fixes it).
    """
    snapshot = Document.objects.filter(pk=document_id).first()
    if snapshot is None:
        return IndexOutcome.MISSING
    source_hash = snapshot.content_hash
    if snapshot.is_runtime or is_runtime_path(snapshot.path):
        return _skip_indexing(snapshot.pk, source_hash)
    effective = effective_metadata(
        user_id=snapshot.user_id, path=snapshot.path, own=snapshot.metadata
    )
    if flag_is_set(effective, "skip_indexing"):
        return _skip_indexing(snapshot.pk, source_hash)
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
            .filter(pk=snapshot.pk, content_hash=source_hash, is_runtime=False)
            .first()
        )
        # A metadata-only write (same hash) may have set skip_indexing and dropped the chunks
        # while we embedded; storing ours would resurrect them. Any write that still wants an
        # index marked the document pending and queued (or ran) a job of its own.
        if locked is None or locked.metadata != snapshot.metadata:
            return IndexOutcome.STALE
        Chunk.objects.filter(document_id=locked.pk).delete()
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
        Document.objects.filter(pk=locked.pk).update(
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

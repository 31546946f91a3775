"""Background indexing (Procrastinate, queue ``indexing``), the sweep that queues it again for
documents left pending, and the daily workspace maintenance (queue ``default``): version pruning
and folder hygiene, through the services the ``prune_versions`` and ``workspace_hygiene``
commands call, and the big tenants' vector indexes every 10 minutes (``vector_index_ensure``).

``services.document_index_enqueue`` defers one job per document with a queueing lock, so a burst
of writes to one document leaves at most one waiting job; the job reads the latest content when it
runs, and replaces the chunks only if the document still has that content.

Each job function is named after the service it runs with ``_job``; the registered task names
stay as they were, because queued jobs and periodic ids in the database carry them.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError
from procrastinate import RetryStrategy
from procrastinate.contrib.django import app

from workspace import services

logger = logging.getLogger(__name__)


class IndexingFailed(Exception):
    """Raised after storing vector-less chunks, so Procrastinate retries the embedding later."""


# Retried on a failed embedding and on the database failing under it (a restart, a connection
# cut): without it the job would end failed and its document stay pending.
INDEX_DOCUMENT_RETRY = RetryStrategy(
    max_attempts=5, exponential_wait=5, retry_exceptions={IndexingFailed, DatabaseError}
)


@app.task(
    name=services.INDEX_DOCUMENT_TASK,
    queue="indexing",
    retry=INDEX_DOCUMENT_RETRY,
    pass_context=False,
)
def document_index_job(document_id: str) -> str:
    outcome = services.document_index(document_id=document_id)
    if outcome == services.IndexOutcome.FAILED:
        raise IndexingFailed(f"embedding failed for document {document_id}; will retry")
    return outcome


# Retries end, and jobs get lost (deleted, or pruned after failing): without this sweep their
# documents, whose writes were acknowledged, would stay pending until their next write.
@app.periodic(cron="* * * * *", periodic_id="workspace.requeue_pending_indexing")
@app.task(
    name="workspace.tasks.requeue_pending_indexing",
    queue="default",
    queueing_lock="workspace.requeue_pending_indexing",
)
def pending_documents_requeue_job(timestamp: int) -> None:
    result = services.pending_documents_requeue(
        pending_for=timedelta(seconds=settings.INDEXING_PENDING_REQUEUE_SECONDS)
    )
    if result.documents_queued:
        logger.warning(
            "indexing: queued %d documents again, pending over %d s with no indexing job",
            result.documents_queued,
            settings.INDEXING_PENDING_REQUEUE_SECONDS,
        )


# At night, minutes apart, so the two never compete with each other or the hourly job prune.
@app.periodic(cron="17 3 * * *", periodic_id="workspace.prune_versions")
@app.task(
    name="workspace.tasks.prune_versions",
    queue="default",
    queueing_lock="workspace.prune_versions",
)
def versions_prune_job(timestamp: int) -> None:
    result = services.versions_prune(keep=services.VERSIONS_KEPT)
    if result.versions_deleted:
        logger.info(
            "versions: kept the newest %d of %d documents, deleted %d versions",
            services.VERSIONS_KEPT,
            result.documents,
            result.versions_deleted,
        )


@app.periodic(cron="47 3 * * *", periodic_id="workspace.workspace_hygiene")
@app.task(
    name="workspace.tasks.workspace_hygiene",
    queue="default",
    queueing_lock="workspace.workspace_hygiene",
)
def workspace_hygiene_job(timestamp: int) -> None:
    result = services.workspace_hygiene()
    if result.documents_deleted:
        logger.info(
            "hygiene: deleted %d expired documents in %d folders",
            result.documents_deleted,
            result.folders,
        )


# A tenant that grows past SEARCH_HNSW_MIN_CHUNKS is scanned exactly until this job gives it an
# index of its own (a count of every tenant's chunks, then a concurrent build per new big tenant).
@app.periodic(cron="*/10 * * * *", periodic_id="workspace.vector_index_ensure")
@app.task(
    name="workspace.tasks.vector_index_ensure",
    queue="default",
    queueing_lock="workspace.vector_index_ensure",
)
def vector_index_ensure_job(timestamp: int) -> None:
    result = services.vector_indexes_ensure_configured()
    if result is None:
        return
    for built in result.built:
        if built.measured is not None:
            logger.info(
                "vector index of %s %s (%d chunks) in %.1f s: recall@10 %.3f at ef_search %d, "
                "%.1f ms a query against %.1f ms exact",
                built.user_id,
                built.action,
                built.chunks,
                built.seconds,
                built.measured.recall,
                built.measured.ef_search,
                built.measured.index_ms,
                built.measured.exact_ms,
            )
    if result.dropped:
        logger.info("vector indexes dropped: %s", ", ".join(result.dropped))

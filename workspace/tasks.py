"""Background indexing (Procrastinate, queue ``indexing``).

``services.document_index_enqueue`` defers one job per document with a queueing lock, so a burst
of writes to one document leaves at most one waiting job; the job reads the latest content when it
runs, and replaces the chunks only if the document still has that content.
"""

from __future__ import annotations

from procrastinate import RetryStrategy
from procrastinate.contrib.django import app

from workspace import services


class IndexingFailed(Exception):
    """Raised after storing vector-less chunks, so Procrastinate retries the embedding later."""


@app.task(
    name=services.INDEX_DOCUMENT_TASK,
    queue="indexing",
    retry=RetryStrategy(max_attempts=5, exponential_wait=5, retry_exceptions={IndexingFailed}),
    pass_context=False,
)
def index_document(document_id: str) -> str:
    outcome = services.document_index(document_id=document_id)
    if outcome == services.IndexOutcome.FAILED:
        raise IndexingFailed(f"embedding failed for document {document_id}; will retry")
    return outcome

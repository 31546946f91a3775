"""Workspace writes.

Two paths, decided by ``is_runtime_path``:

* runtime paths (engine state): one upsert statement, no metadata lookup, version, chunk, embedding
  or lock beyond the row. At most 2 SQL statements per operation, pinned by tests.
* every other path: one short transaction that locks (or creates) the document row, versions the
  old content, updates the row and enqueues indexing. Embedding never runs inside it.

Locking order: document row first, then its versions and chunks. Version numbers are allocated
under the document row lock (``FOR NO KEY UPDATE``: it does not block chunk/version inserts that
only take ``FOR KEY SHARE`` on the document through their foreign key). Request writes wait for
that lock at most ``WORKSPACE_LOCK_TIMEOUT_MS`` (``SET LOCAL``), then raise ``DocumentBusy`` (409).

One module per concern: ``content`` (hash and input checks), ``runtime`` (the one-statement runtime
SQL), ``documents`` (the locked document writes), ``indexing``, ``maintenance`` and
``vector_index`` (the HNSW index build). Callers import from this package, never from the modules.
"""

from __future__ import annotations

from workspace.services.content import content_hash
from workspace.services.documents import (
    PatchResult,
    document_append,
    document_delete,
    document_patch,
    document_restore,
    document_write,
)
from workspace.services.indexing import (
    INDEX_DOCUMENT_TASK,
    IndexOutcome,
    PendingRequeue,
    document_index,
    document_index_enqueue,
    pending_documents_requeue,
)
from workspace.services.maintenance import (
    MAX_RETENTION_DAYS,
    VERSIONS_KEPT,
    HygieneResult,
    PruneResult,
    RuntimeCleanup,
    documents_reindex,
    runtime_chunks_cleanup,
    versions_prune,
    workspace_hygiene,
)
from workspace.services.runtime import WriteFence
from workspace.services.vector_index import (
    RecallMeasured,
    TenantIndexBuilt,
    VectorIndexEnsured,
    VectorIndexUnavailable,
    recall_measure,
    stored_dimensions,
    vector_index_ensure,
    vector_index_state,
    vector_indexes_ensure_configured,
)

__all__ = [
    "INDEX_DOCUMENT_TASK",
    "MAX_RETENTION_DAYS",
    "VERSIONS_KEPT",
    "HygieneResult",
    "IndexOutcome",
    "PatchResult",
    "PendingRequeue",
    "PruneResult",
    "RecallMeasured",
    "RuntimeCleanup",
    "TenantIndexBuilt",
    "VectorIndexEnsured",
    "VectorIndexUnavailable",
    "WriteFence",
    "content_hash",
    "document_append",
    "document_delete",
    "document_index",
    "document_index_enqueue",
    "document_patch",
    "document_restore",
    "document_write",
    "documents_reindex",
    "pending_documents_requeue",
    "recall_measure",
    "runtime_chunks_cleanup",
    "stored_dimensions",
    "vector_index_ensure",
    "vector_index_state",
    "vector_indexes_ensure_configured",
    "versions_prune",
    "workspace_hygiene",
]

"""Document paths: one short transaction under the document row lock.

The transaction locks (or creates) the row, versions the old content, updates the row and
enqueues indexing; embedding never runs inside it.
"""

from __future__ import annotations

import uuid
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import connection

from core.db import bounded_transaction
from workspace.errors import (
    DocumentBusy,
    DocumentNotFound,
    PatchFailed,
    VersionNotFound,
    WriteFenced,
)
from workspace.metadata import flag_is_set
from workspace.metrics import DOCUMENT_WRITES
from workspace.models import Chunk, Document, DocumentVersion, IndexState
from workspace.paths import is_runtime_path, normalise_path
from workspace.selectors import effective_metadata
from workspace.services.content import check_metadata, check_size, check_text, content_hash
from workspace.services.indexing import document_index, document_index_enqueue
from workspace.services.runtime import WriteFence, runtime_append, runtime_patch, runtime_write


def _document_transaction() -> AbstractContextManager[None]:
    """One transaction whose lock waits are bounded by ``WORKSPACE_LOCK_TIMEOUT_MS``.

    A document row is held only briefly by writers, but a maintenance batch (cleanup, indexing of
    a large document) can hold it longer; a request waits that long at most, then gets a 409.
    """
    return bounded_transaction(
        lock_timeout_ms=settings.WORKSPACE_LOCK_TIMEOUT_MS, busy=DocumentBusy
    )


def _lock_document(*, user_id: str, path: str) -> Document | None:
    return Document.objects.for_update().filter(user_id=user_id, path=path).first()


def _lock_or_create_document(*, user_id: str, path: str) -> Document:
    # Check-then-insert backed by the unique (user_id, path) constraint: a concurrent creator
    # makes the insert a no-op (it waits for that transaction), and both then lock the one row.
    # Only a concurrent delete between the insert and the lock sends us round again.
    # An empty document is trivially indexed: it has no chunks.
    empty_hash = content_hash("")
    while True:
        document = _lock_document(user_id=user_id, path=path)
        if document is not None:
            return document
        with connection.cursor() as cursor:
            cursor.execute(
                """
                INSERT INTO workspace_document
                    (id, user_id, path, content, content_hash, metadata, is_runtime, index_state,
                     indexed_hash, created_at, updated_at)
                VALUES (%s, %s, %s, '', %s, '{}', false, 'indexed', %s, now(), now())
                ON CONFLICT (user_id, path) DO NOTHING
                """,
                [uuid.uuid4(), user_id, path, empty_hash, empty_hash],
            )


def _save_version_of_current(document: Document, *, changed_by: str) -> None:
    """Snapshot the document's current content as version max+1 (caller holds the row lock)."""
    latest = (
        DocumentVersion.objects.filter(user_id=document.user_id, document=document)
        .order_by("-version")
        .values_list("version", "content_hash")
        .first()
    )
    if latest is not None and latest[1] == document.content_hash:
        return
    DocumentVersion.objects.create(
        document=document,
        user_id=document.user_id,
        version=(latest[0] if latest else 0) + 1,
        content=document.content,
        content_hash=document.content_hash,
        changed_by=changed_by,
    )


def _apply_change(
    document: Document,
    *,
    content: str,
    metadata: dict[str, Any] | None,
    changed_by: str,
) -> bool:
    """Version, update and mark for indexing; True when an index job is due. Row lock held."""
    DOCUMENT_WRITES.inc()
    new_hash = content_hash(content)
    metadata_changed = metadata is not None and metadata != document.metadata
    if new_hash == document.content_hash and not metadata_changed and not document.is_runtime:
        return False
    own = metadata if metadata is not None else document.metadata
    effective = effective_metadata(user_id=document.user_id, path=document.path, own=own)
    # Content written while the path was runtime (engine state) was never versioned, and the
    # database refuses the row until the flag is cleared below.
    if (
        document.content
        and new_hash != document.content_hash
        and not document.is_runtime
        and not flag_is_set(effective, "skip_versioning")
    ):
        _save_version_of_current(document, changed_by=changed_by)
    document.content = content
    document.content_hash = new_hash
    document.metadata = own
    document.is_runtime = False
    index_due = False
    if flag_is_set(effective, "skip_indexing"):
        Chunk.objects.filter(document=document).delete()
        document.index_state = IndexState.SKIPPED
        document.indexed_hash = ""
    elif document.indexed_hash != new_hash or document.index_state != IndexState.INDEXED:
        document.index_state = IndexState.PENDING
        index_due = True
    document.save(
        update_fields=[
            "content",
            "content_hash",
            "metadata",
            "is_runtime",
            "index_state",
            "indexed_hash",
            "updated_at",
        ]
    )
    if index_due and settings.WORKSPACE_INDEXING == "queue":
        document_index_enqueue(document_id=document.id)
    return index_due


def _index_inline(document: Document, index_due: bool) -> None:
    if index_due and settings.WORKSPACE_INDEXING == "inline":
        document_index(document_id=document.id, user_id=document.user_id)
        document.refresh_from_db(fields=["index_state", "indexed_hash"])


def document_write(
    *,
    user_id: str,
    path: str,
    content: str,
    metadata: dict[str, Any] | None = None,
    changed_by: str | None = None,
    fence: WriteFence | None = None,
) -> Document:
    """Create or replace a document. Runtime paths: one upsert. Others: lock the row, version the
    old content, update, enqueue indexing (or index after commit when WORKSPACE_INDEXING=inline).

    ``fence``: the write is applied only while the fence finds its row (``WriteFenced`` if not).
    """
    normalised = normalise_path(path)
    check_text(content, field="content")
    check_size(content)
    if metadata is not None:
        check_metadata(metadata)
    if is_runtime_path(normalised):
        return runtime_write(
            user_id=user_id, path=normalised, content=content, metadata=metadata, fence=fence
        )
    with _document_transaction():
        if fence is not None:
            with connection.cursor() as cursor:
                cursor.execute(fence.sql, fence.params)
                if cursor.fetchone() is None:
                    raise WriteFenced(details={"path": normalised})
        document = _lock_or_create_document(user_id=user_id, path=normalised)
        index_due = _apply_change(
            document, content=content, metadata=metadata, changed_by=changed_by or user_id
        )
    _index_inline(document, index_due)
    return document


def document_append(
    *, user_id: str, path: str, content: str, changed_by: str | None = None
) -> Document:
    """Append ``content`` on a new line (creating the document). Runtime paths: one statement."""
    normalised = normalise_path(path)
    check_text(content, field="content")
    check_size(content)
    if is_runtime_path(normalised):
        return runtime_append(user_id=user_id, path=normalised, content=content)
    with _document_transaction():
        document = _lock_or_create_document(user_id=user_id, path=normalised)
        combined = f"{document.content}\n{content}" if document.content else content
        check_size(combined)
        index_due = _apply_change(
            document, content=combined, metadata=None, changed_by=changed_by or user_id
        )
    _index_inline(document, index_due)
    return document


@dataclass(frozen=True)
class PatchResult:
    document: Document
    replacements: int


def document_patch(
    *,
    user_id: str,
    path: str,
    old: str,
    new: str,
    replace_all: bool = False,
    changed_by: str | None = None,
) -> PatchResult:
    """Replace the first (or every) occurrence of ``old`` in an existing document."""
    normalised = normalise_path(path)
    if old == "":
        raise PatchFailed("old must not be empty.", details={"old": ["must not be empty"]})
    check_text(old, field="old")
    check_text(new, field="new")
    if is_runtime_path(normalised):
        document, count = runtime_patch(
            user_id=user_id, path=normalised, old=old, new=new, replace_all=replace_all
        )
        return PatchResult(document=document, replacements=count)
    with _document_transaction():
        locked = _lock_document(user_id=user_id, path=normalised)
        if locked is None:
            raise DocumentNotFound.for_path(normalised)
        document = locked
        occurrences = document.content.count(old)
        if occurrences == 0:
            raise PatchFailed(
                "old was not found in the document.",
                details={"old": ["not found in the document"]},
            )
        patched = document.content.replace(old, new, -1 if replace_all else 1)
        check_size(patched)
        index_due = _apply_change(
            document, content=patched, metadata=None, changed_by=changed_by or user_id
        )
    _index_inline(document, index_due)
    return PatchResult(document=document, replacements=occurrences if replace_all else 1)


def document_delete(*, user_id: str, path: str) -> None:
    """Delete a document; its versions and chunks go with it (ON DELETE CASCADE). One statement."""
    normalised = normalise_path(path)
    with connection.cursor() as cursor:
        cursor.execute(
            "DELETE FROM workspace_document WHERE user_id = %s AND path = %s RETURNING id",
            [user_id, normalised],
        )
        if cursor.fetchone() is None:
            raise DocumentNotFound.for_path(normalised)


def document_restore(
    *, user_id: str, path: str, version: int, changed_by: str | None = None
) -> Document:
    """Write version ``version`` back as the current content; the current content is versioned."""
    normalised = normalise_path(path)
    if is_runtime_path(normalised):
        restored = (
            DocumentVersion.objects.of_path(user_id=user_id, path=normalised)
            .filter(version=version)
            .values_list("content", flat=True)
            .first()
        )
        if restored is None:
            raise VersionNotFound.for_version(normalised, version=version)
        return runtime_write(user_id=user_id, path=normalised, content=restored, metadata=None)
    with _document_transaction():
        document = _lock_document(user_id=user_id, path=normalised)
        if document is None:
            raise DocumentNotFound.for_path(normalised)
        restored = (
            DocumentVersion.objects.filter(user_id=user_id, document=document, version=version)
            .values_list("content", flat=True)
            .first()
        )
        if restored is None:
            raise VersionNotFound.for_version(normalised, version=version)
        index_due = _apply_change(
            document, content=restored, metadata=None, changed_by=changed_by or user_id
        )
    _index_inline(document, index_due)
    return document

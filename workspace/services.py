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
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, F, Q, QuerySet
from django.utils import timezone
from procrastinate.exceptions import AlreadyEnqueued
from psycopg.types.json import Jsonb

from ironclaw_site.db import bounded_transaction
from workspace.chunking import chunk_text
from workspace.embeddings import EmbeddingError, embedding_provider
from workspace.errors import (
    DocumentBusy,
    DocumentNotFound,
    DocumentTooLarge,
    InvalidContent,
    PatchFailed,
    VersionNotFound,
)
from workspace.models import Chunk, Document, DocumentVersion, IndexState
from workspace.paths import CONFIG_NAME, is_runtime_path, normalise_path, runtime_rules
from workspace.selectors import effective_metadata

logger = logging.getLogger(__name__)

_DOCUMENT_FIELDS = [field.attname for field in Document._meta.concrete_fields]
_DOCUMENT_COLUMNS = ", ".join(f"d.{field.column}" for field in Document._meta.concrete_fields)
_SQL_HASH = "'sha256:' || encode(sha256(convert_to({}, 'UTF8')), 'hex')"


def content_hash(content: str) -> str:
    return "sha256:" + hashlib.sha256(content.encode("utf-8")).hexdigest()


def _check_text(value: str, *, field: str) -> None:
    if "\x00" in value:
        raise InvalidContent(
            f"{field} must not contain NUL characters.", details={field: ["contains NUL (\\u0000)"]}
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidContent(
            f"{field} must be valid Unicode.", details={field: ["contains unpaired surrogates"]}
        ) from None


def _check_size(content: str) -> None:
    limit = settings.WORKSPACE_MAX_DOCUMENT_BYTES
    size = len(content.encode("utf-8"))
    if size > limit:
        raise DocumentTooLarge(
            f"The document would be {size} bytes; the limit is {limit}.",
            details={"size": size, "limit": limit},
        )


def _check_metadata(metadata: dict[str, Any]) -> None:
    if not isinstance(metadata, dict):
        raise InvalidContent(
            "metadata must be a JSON object.", details={"metadata": ["not an object"]}
        )
    try:
        encoded = json.dumps(metadata, ensure_ascii=False)
        encoded.encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError):
        raise InvalidContent(
            "metadata must be JSON with valid Unicode.", details={"metadata": ["not valid JSON"]}
        ) from None
    if "\x00" in encoded or "\\u0000" in encoded:
        # jsonb cannot store NUL in strings.
        raise InvalidContent(
            "metadata must not contain NUL characters.", details={"metadata": ["contains NUL"]}
        )


def _document_from_row(row: tuple[Any, ...]) -> Document:
    # Raw SQL skips the ORM's converters (jsonb arrives as text): apply the fields' own.
    values = [
        field.from_db_value(value, None, connection) if hasattr(field, "from_db_value") else value
        for field, value in zip(Document._meta.concrete_fields, row, strict=False)
    ]
    return Document.from_db(connection.alias, _DOCUMENT_FIELDS, values)


# --- Runtime paths: one statement each ---------------------------------------------------------

# The CTE returns the row whether or not it changed, so an unchanged write is still one statement.
# The fallback SELECT sees the statement's snapshot; it can miss a row another transaction inserted
# concurrently (then the caller reads once more: the budget's second statement).
_RUNTIME_WRITE_SQL = f"""
WITH upserted AS (
    INSERT INTO workspace_document AS d
        (id, user_id, path, content, content_hash, metadata, is_runtime, index_state,
         indexed_hash, created_at, updated_at)
    VALUES (%(id)s, %(user_id)s, %(path)s, %(content)s, %(hash)s, %(metadata)s, true, 'skipped',
            '', now(), now())
    ON CONFLICT (user_id, path) DO UPDATE SET
        content = EXCLUDED.content,
        content_hash = EXCLUDED.content_hash,
        metadata = CASE WHEN %(metadata_given)s THEN EXCLUDED.metadata ELSE d.metadata END,
        is_runtime = true,
        index_state = 'skipped',
        indexed_hash = '',
        updated_at = now()
    WHERE d.content_hash IS DISTINCT FROM EXCLUDED.content_hash
       OR NOT d.is_runtime
       OR (%(metadata_given)s AND d.metadata IS DISTINCT FROM EXCLUDED.metadata)
    RETURNING {_DOCUMENT_COLUMNS}
)
SELECT * FROM upserted
UNION ALL
SELECT {_DOCUMENT_COLUMNS} FROM workspace_document d
WHERE d.user_id = %(user_id)s AND d.path = %(path)s AND NOT EXISTS (SELECT 1 FROM upserted)
"""

_APPENDED = (
    "CASE WHEN d.content = '' THEN EXCLUDED.content "
    "ELSE d.content || E'\\n' || EXCLUDED.content END"
)

# Appending in SQL makes concurrent runtime appends lossless without a read-modify-write.
_RUNTIME_APPEND_SQL = f"""
INSERT INTO workspace_document AS d
    (id, user_id, path, content, content_hash, metadata, is_runtime, index_state, indexed_hash,
     created_at, updated_at)
VALUES (%(id)s, %(user_id)s, %(path)s, %(content)s, %(hash)s, '{{}}', true, 'skipped', '',
        now(), now())
ON CONFLICT (user_id, path) DO UPDATE SET
    content = {_APPENDED},
    content_hash = {_SQL_HASH.format(_APPENDED)},
    is_runtime = true,
    index_state = 'skipped',
    indexed_hash = '',
    updated_at = now()
WHERE octet_length(d.content) + 1 + octet_length(EXCLUDED.content) <= %(limit)s
RETURNING {_DOCUMENT_COLUMNS}
"""

# The CTE locks the row and reads its latest committed content; the UPDATE computes from that
# locked copy, so the replacement count and the new content always describe the same version.
_RUNTIME_PATCH_SQL = f"""
WITH locked AS (
    SELECT id, content FROM workspace_document
    WHERE user_id = %(user_id)s AND path = %(path)s
    FOR NO KEY UPDATE
), patched AS (
    SELECT id, content AS old_content,
           CASE WHEN %(replace_all)s THEN replace(content, %(old)s, %(new)s)
                ELSE overlay(content PLACING %(new)s
                             FROM strpos(content, %(old)s) FOR char_length(%(old)s))
           END AS new_content
    FROM locked
    WHERE strpos(content, %(old)s) > 0
)
UPDATE workspace_document AS d SET
    content = p.new_content,
    content_hash = {_SQL_HASH.format("p.new_content")},
    is_runtime = true,
    index_state = 'skipped',
    indexed_hash = '',
    updated_at = now()
FROM patched p
WHERE d.id = p.id AND octet_length(p.new_content) <= %(limit)s
RETURNING {_DOCUMENT_COLUMNS},
    CASE WHEN %(replace_all)s
         THEN (char_length(p.old_content) - char_length(replace(p.old_content, %(old)s, '')))
              / char_length(%(old)s)
         ELSE 1 END
"""


def _runtime_write(
    *, user_id: str, path: str, content: str, metadata: dict[str, Any] | None
) -> Document:
    params: dict[str, Any] = {
        "id": uuid.uuid4(),
        "user_id": user_id,
        "path": path,
        "content": content,
        "hash": content_hash(content),
        "metadata": Jsonb(metadata or {}),
        "metadata_given": metadata is not None,
    }
    with connection.cursor() as cursor:
        cursor.execute(_RUNTIME_WRITE_SQL, params)
        row = cursor.fetchone()
        if row is None:
            cursor.execute(
                f"SELECT {_DOCUMENT_COLUMNS} FROM workspace_document d "
                "WHERE d.user_id = %s AND d.path = %s",
                [user_id, path],
            )
            row = cursor.fetchone()
    if row is None:  # deleted between the two statements: report the write as not applied
        raise DocumentNotFound.for_path(path)
    return _document_from_row(row)


def _runtime_append(*, user_id: str, path: str, content: str) -> Document:
    params: dict[str, Any] = {
        "id": uuid.uuid4(),
        "user_id": user_id,
        "path": path,
        "content": content,
        "hash": content_hash(content),
        "limit": settings.WORKSPACE_MAX_DOCUMENT_BYTES,
    }
    with connection.cursor() as cursor:
        cursor.execute(_RUNTIME_APPEND_SQL, params)
        row = cursor.fetchone()
    if row is None:
        limit = settings.WORKSPACE_MAX_DOCUMENT_BYTES
        raise DocumentTooLarge(
            f"Appending would make the document larger than {limit} bytes.",
            details={"limit": limit},
        )
    return _document_from_row(row)


def _runtime_patch(
    *, user_id: str, path: str, old: str, new: str, replace_all: bool
) -> tuple[Document, int]:
    params: dict[str, Any] = {
        "user_id": user_id,
        "path": path,
        "old": old,
        "new": new,
        "replace_all": replace_all,
        "limit": settings.WORKSPACE_MAX_DOCUMENT_BYTES,
    }
    with connection.cursor() as cursor:
        cursor.execute(_RUNTIME_PATCH_SQL, params)
        row = cursor.fetchone()
        if row is not None:
            return _document_from_row(row), int(row[-1])
        cursor.execute(
            "SELECT strpos(content, %s) > 0 FROM workspace_document "
            "WHERE user_id = %s AND path = %s",
            [old, user_id, path],
        )
        found = cursor.fetchone()
    if found is None:
        raise DocumentNotFound.for_path(path)
    if not found[0]:
        raise PatchFailed(
            "old was not found in the document.", details={"old": ["not found in the document"]}
        )
    raise DocumentTooLarge(
        "The patched document would be too large.",
        details={"limit": settings.WORKSPACE_MAX_DOCUMENT_BYTES},
    )


# --- Document paths: one transaction under the row lock ----------------------------------------


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
        DocumentVersion.objects.filter(document=document)
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
        and not effective.get("skip_versioning")
    ):
        _save_version_of_current(document, changed_by=changed_by)
    document.content = content
    document.content_hash = new_hash
    document.metadata = own
    document.is_runtime = False
    index_due = False
    if effective.get("skip_indexing"):
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


def document_index_enqueue(*, document_id: uuid.UUID) -> None:
    """Defer the indexing job for a document, at most one waiting job per document.

    Runs inside the caller's transaction (the job becomes visible when it commits). The queueing
    lock makes a second deferral raise a unique violation, so it gets its own savepoint: the
    surrounding write must not be aborted by "already queued".
    """
    from workspace.tasks import index_document

    try:
        with transaction.atomic():
            index_document.configure(queueing_lock=f"workspace-index:{document_id}").defer(
                document_id=str(document_id)
            )
    except AlreadyEnqueued:
        # A job for this document has not started yet; it will read the latest content.
        pass


def _index_inline(document: Document, index_due: bool) -> None:
    if index_due and settings.WORKSPACE_INDEXING == "inline":
        document_index(document_id=document.id)
        document.refresh_from_db(fields=["index_state", "indexed_hash"])


def document_write(
    *,
    user_id: str,
    path: str,
    content: str,
    metadata: dict[str, Any] | None = None,
    changed_by: str | None = None,
) -> Document:
    """Create or replace a document. Runtime paths: one upsert. Others: lock the row, version the
    old content, update, enqueue indexing (or index after commit when WORKSPACE_INDEXING=inline).
    """
    normalised = normalise_path(path)
    _check_text(content, field="content")
    _check_size(content)
    if metadata is not None:
        _check_metadata(metadata)
    if is_runtime_path(normalised):
        return _runtime_write(user_id=user_id, path=normalised, content=content, metadata=metadata)
    with _document_transaction():
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
    _check_text(content, field="content")
    _check_size(content)
    if is_runtime_path(normalised):
        return _runtime_append(user_id=user_id, path=normalised, content=content)
    with _document_transaction():
        document = _lock_or_create_document(user_id=user_id, path=normalised)
        combined = f"{document.content}\n{content}" if document.content else content
        _check_size(combined)
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
    _check_text(old, field="old")
    _check_text(new, field="new")
    if is_runtime_path(normalised):
        document, count = _runtime_patch(
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
        _check_size(patched)
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
        return _runtime_write(user_id=user_id, path=normalised, content=restored, metadata=None)
    with _document_transaction():
        document = _lock_document(user_id=user_id, path=normalised)
        if document is None:
            raise DocumentNotFound.for_path(normalised)
        restored = (
            DocumentVersion.objects.filter(document=document, version=version)
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


# --- Indexing ------------------------------------------------------------------------------------


class IndexOutcome:
    INDEXED = "indexed"
    SKIPPED = "skipped"
    FAILED = "failed"
    STALE = "stale"
    MISSING = "missing"
    UP_TO_DATE = "up_to_date"


def _skip_indexing(document_id: uuid.UUID, source_hash: str) -> str:
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


def document_index(*, document_id: uuid.UUID | str, force: bool = False) -> str:
    """Chunk and embed a document, then replace its chunks in one transaction under the row lock,
    only if the document still has the content that was chunked (a newer write wins).

    Embedding runs before that transaction. If it fails, chunks are stored without vectors and the
    state is ``failed`` (full-text search still works; a retry or ``reindex_workspace`` fixes it).
    """
    snapshot = (
        Document.objects.filter(pk=document_id)
        .values(
            "id",
            "user_id",
            "path",
            "content",
            "content_hash",
            "metadata",
            "is_runtime",
            "index_state",
            "indexed_hash",
        )
        .first()
    )
    if snapshot is None:
        return IndexOutcome.MISSING
    source_hash = snapshot["content_hash"]
    if snapshot["is_runtime"] or is_runtime_path(snapshot["path"]):
        return _skip_indexing(snapshot["id"], source_hash)
    effective = effective_metadata(
        user_id=snapshot["user_id"], path=snapshot["path"], own=snapshot["metadata"]
    )
    if effective.get("skip_indexing"):
        return _skip_indexing(snapshot["id"], source_hash)
    if (
        not force
        and snapshot["index_state"] == IndexState.INDEXED
        and snapshot["indexed_hash"] == source_hash
    ):
        return IndexOutcome.UP_TO_DATE

    pieces = chunk_text(snapshot["content"])
    provider = embedding_provider()
    failed = False
    try:
        vectors = provider.embed(pieces) if pieces else []
    except EmbeddingError as error:
        logger.warning("embedding failed for document %s: %s", document_id, error)
        vectors = [None] * len(pieces)
        failed = True

    with transaction.atomic():
        locked = (
            Document.objects.for_update()
            .filter(pk=snapshot["id"], content_hash=source_hash, is_runtime=False)
            .first()
        )
        # A metadata-only write (same hash) may have set skip_indexing and dropped the chunks
        # while we embedded; storing ours would resurrect them. Any write that still wants an
        # index marked the document pending and queued (or ran) a job of its own.
        if locked is None or locked.metadata != snapshot["metadata"]:
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
    return IndexOutcome.FAILED if failed else IndexOutcome.INDEXED


# --- Maintenance (admin actions and management commands) -----------------------------------------


def _runtime_match() -> Q:
    """The current WORKSPACE_RUNTIME_PATHS as a query (matches nothing when it is empty)."""
    rules = runtime_rules()
    match = Q(path__in=sorted(rules.exact)) if rules.exact else Q(pk__in=[])
    for prefix in rules.prefixes:
        match |= Q(path__startswith=prefix)
    return match


@dataclass
class RuntimeCleanup:
    documents_found: int = 0
    flagged_runtime: int = 0
    unflagged: int = 0
    chunks_deleted: int = 0
    versions_deleted: int = 0
    batches: int = 0


def runtime_chunks_cleanup(
    *,
    user_id: str | None = None,
    document_ids: list[uuid.UUID] | None = None,
    batch_size: int = 500,
    include_versions: bool = False,
    dry_run: bool = False,
    progress: Callable[[RuntimeCleanup], None] | None = None,
) -> RuntimeCleanup:
    """Recompute runtime flags from the current setting; purge runtime documents' chunks (and with
    ``include_versions`` their versions); index documents that are no longer runtime. One
    transaction per batch of documents, rows locked in pk order; flipped rows stop matching, so a
    rerun after an interruption resumes where it stopped.
    """
    documents = Document.objects.all()
    if user_id is not None:
        documents = documents.filter(user_id=user_id)
    if document_ids is not None:
        documents = documents.filter(pk__in=document_ids)
    match = _runtime_match()
    to_flag = documents.filter(match, is_runtime=False)
    to_unflag = documents.filter(~match, is_runtime=True)
    with_versions = documents.filter(match, is_runtime=True, versions__isnull=False).distinct()
    summary = RuntimeCleanup()
    if dry_run:
        summary.flagged_runtime = to_flag.count()
        summary.unflagged = to_unflag.count()
        summary.chunks_deleted = Chunk.objects.filter(document__in=documents.filter(match)).count()
        if include_versions:
            summary.versions_deleted = DocumentVersion.objects.filter(
                document__in=documents.filter(match)
            ).count()
        summary.documents_found = summary.flagged_runtime + summary.unflagged
        return summary

    def batches(queryset: QuerySet[Document]) -> Iterator[list[uuid.UUID]]:
        while True:
            ids = list(queryset.order_by("pk").values_list("pk", flat=True)[:batch_size])
            if not ids:
                return
            yield ids

    for ids in batches(to_flag):
        with transaction.atomic():
            locked = list(
                Document.objects.for_update()
                .filter(pk__in=ids, is_runtime=False)
                .order_by("pk")
                .values_list("pk", flat=True)
            )
            summary.chunks_deleted += Chunk.objects.filter(document_id__in=locked).count()
            # The document trigger deletes their chunks in this same statement.
            summary.flagged_runtime += Document.objects.filter(pk__in=locked).update(
                is_runtime=True, index_state=IndexState.SKIPPED, indexed_hash=""
            )
            if include_versions:
                summary.versions_deleted += DocumentVersion.objects.filter(
                    document_id__in=locked
                ).delete()[0]
        summary.batches += 1
        if progress:
            progress(summary)
    for ids in batches(to_unflag):
        with transaction.atomic():
            summary.unflagged += Document.objects.filter(pk__in=ids, is_runtime=True).update(
                is_runtime=False, index_state=IndexState.PENDING
            )
        # Pending alone would wait for the next write: nothing else queues these documents.
        documents_reindex(document_ids=ids)
        summary.batches += 1
        if progress:
            progress(summary)
    if include_versions:
        for ids in batches(with_versions):
            with transaction.atomic():
                summary.versions_deleted += DocumentVersion.objects.filter(
                    document_id__in=ids, document__is_runtime=True
                ).delete()[0]
            summary.batches += 1
    summary.documents_found = summary.flagged_runtime + summary.unflagged
    return summary


def documents_for_reindex(
    *,
    user_id: str | None = None,
    path_prefix: str | None = None,
    stale_only: bool = False,
) -> QuerySet[Document]:
    documents = Document.objects.filter(is_runtime=False)
    if user_id is not None:
        documents = documents.filter(user_id=user_id)
    if path_prefix:
        documents = documents.filter(path__startswith=path_prefix)
    if stale_only:
        documents = documents.filter(
            Q(index_state__in=[IndexState.PENDING, IndexState.FAILED])
            | ~Q(indexed_hash=F("content_hash"))
        ).exclude(index_state=IndexState.SKIPPED)
    return documents.order_by("pk")


def documents_reindex(
    *,
    document_ids: list[uuid.UUID],
    progress: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Re-index documents: enqueue a job each (queue mode) or index them now (inline mode)."""
    outcomes: dict[str, int] = {}
    for done, document_id in enumerate(document_ids, start=1):
        if settings.WORKSPACE_INDEXING == "queue":
            with transaction.atomic():
                Document.objects.filter(pk=document_id).exclude(
                    index_state=IndexState.SKIPPED
                ).update(index_state=IndexState.PENDING)
                document_index_enqueue(document_id=document_id)
            outcome = "queued"
        else:
            outcome = document_index(document_id=document_id, force=True)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if progress:
            progress(done)
    return outcomes


@dataclass
class PruneResult:
    documents: int = 0
    versions_deleted: int = 0


def versions_prune(
    *,
    keep: int,
    user_id: str | None = None,
    batch_size: int = 500,
    dry_run: bool = False,
) -> PruneResult:
    """Delete all but the newest ``keep`` versions of every document, a batch of documents per
    transaction. Version numbers are never reused: the newest version always survives.
    """
    if keep < 1:
        raise ValueError("keep must be at least 1")
    documents = (
        DocumentVersion.objects.values("document_id")
        .annotate(total=Count("id"))
        .filter(total__gt=keep)
    )
    if user_id is not None:
        documents = documents.filter(user_id=user_id)
    result = PruneResult()
    candidates = list(documents.order_by("document_id"))
    result.documents = len(candidates)
    if dry_run:
        result.versions_deleted = sum(row["total"] - keep for row in candidates)
        return result
    for start in range(0, len(candidates), batch_size):
        ids = [row["document_id"] for row in candidates[start : start + batch_size]]
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                """
                DELETE FROM workspace_documentversion v
                USING (
                    SELECT id, row_number() OVER (
                        PARTITION BY document_id ORDER BY version DESC
                    ) AS position
                    FROM workspace_documentversion
                    WHERE document_id = ANY(%s)
                ) ranked
                WHERE v.id = ranked.id AND ranked.position > %s
                """,
                [ids, keep],
            )
            result.versions_deleted += cursor.rowcount
    return result


MAX_RETENTION_DAYS = 36_500


@dataclass
class HygieneResult:
    folders: int = 0
    documents_deleted: int = 0
    deleted_paths: list[str] | None = None


def _retention_cutoff(hygiene: Any, *, now: datetime) -> datetime | None:
    """Documents updated before this expire under ``hygiene``; None when it is not enabled."""
    if not isinstance(hygiene, dict) or not hygiene.get("enabled"):
        return None
    try:
        days = max(1, int(hygiene.get("retention_days", 30)))
    except (TypeError, ValueError):
        days = 30
    # Tenants write this number: one beyond what a date can go back must not abort the run for
    # every other tenant (OverflowError); nothing is older than a century anyway.
    return now - timedelta(days=min(days, MAX_RETENTION_DAYS))


def workspace_hygiene(
    *, user_id: str | None = None, dry_run: bool = False, now: datetime | None = None
) -> HygieneResult:
    """For each ``.config`` with ``hygiene.enabled``: delete the folder's immediate documents not
    updated for ``retention_days`` (default 30, at least 1). ``.config`` documents are kept. A
    document's own ``hygiene`` replaces the folder's (the metadata overlay), so it can opt out.
    """
    now = now or timezone.now()
    configs = Document.objects.folder_configs()
    if user_id is not None:
        configs = configs.filter(user_id=user_id)
    result = HygieneResult(deleted_paths=[])
    for config in configs.only("user_id", "path", "metadata").order_by("user_id", "path"):
        own = config.metadata if isinstance(config.metadata, dict) else {}
        folder_cutoff = _retention_cutoff(own.get("hygiene"), now=now)
        if folder_cutoff is None:
            continue
        result.folders += 1
        folder = config.path[: -len(CONFIG_NAME)]
        candidates = (
            Document.objects.filter(user_id=config.user_id, path__startswith=folder)
            .filter(Q(updated_at__lt=folder_cutoff) | Q(metadata__has_key="hygiene"))
            .without_folder_configs()
            .values_list("pk", "path", "updated_at", "metadata")
        )
        expired: dict[datetime, list[tuple[uuid.UUID, str]]] = {}
        for pk, path, updated_at, metadata in candidates:
            if "/" in path[len(folder) :]:
                continue
            cutoff = (
                _retention_cutoff(metadata["hygiene"], now=now)
                if isinstance(metadata, dict) and "hygiene" in metadata
                else folder_cutoff
            )
            if cutoff is not None and updated_at < cutoff:
                expired.setdefault(cutoff, []).append((pk, path))
        assert result.deleted_paths is not None
        for cutoff, documents in expired.items():
            result.deleted_paths.extend(f"{config.user_id}:{path}" for _, path in documents)
            result.documents_deleted += len(documents)
            if not dry_run:
                # A write since the scan moves updated_at past the cutoff and keeps the document.
                Document.objects.filter(
                    pk__in=[pk for pk, _ in documents], updated_at__lt=cutoff
                ).delete()
    return result

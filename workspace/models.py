"""Workspace documents, their version history and their search chunks.

Invariants live in the database: one document per ``(user_id, path)``; version numbers unique per
document and version rows never updated; no chunk or version row ever exists for a runtime
document (so no code path, present or future, can flood the index with engine state again).
"""

from __future__ import annotations

import uuid

import pgtrigger
from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVector, SearchVectorField
from django.db import models
from pgvector.django import VectorField

from core.db import RowLockQuerySet, TenantRow
from workspace.paths import CONFIG_NAME

# Raised by the triggers below; SQLSTATE 23000 reaches Django as an IntegrityError.
_REFUSE_RUNTIME_ROWS = """
    IF EXISTS (
        SELECT 1 FROM workspace_document WHERE id = NEW.document_id AND is_runtime
    ) THEN
        RAISE EXCEPTION 'workspace: % rows are not allowed for runtime document %',
            TG_TABLE_NAME, NEW.document_id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
"""


class IndexState(models.TextChoices):
    PENDING = "pending"
    INDEXED = "indexed"
    SKIPPED = "skipped"
    FAILED = "failed"


class OctetLength(models.Func):
    function = "octet_length"
    output_field = models.IntegerField()


class DocumentQuerySet(RowLockQuerySet["Document"]):
    # for_update() (FOR NO KEY UPDATE) does not block the KEY SHARE that version and chunk
    # inserts take on their document through the foreign key.

    def with_size(self) -> DocumentQuerySet:
        """Annotate ``size_bytes`` computed by the database, so a list shows sizes with the
        content deferred (a document can be WORKSPACE_MAX_DOCUMENT_BYTES)."""
        return self.annotate(size_bytes=OctetLength("content"))

    def folder_configs(self) -> DocumentQuerySet:
        """The ``.config`` documents, which hold their folder's metadata defaults."""
        return self.filter(_IS_FOLDER_CONFIG)

    def without_folder_configs(self) -> DocumentQuerySet:
        return self.exclude(_IS_FOLDER_CONFIG)


_IS_FOLDER_CONFIG = models.Q(path=CONFIG_NAME) | models.Q(path__endswith=f"/{CONFIG_NAME}")


class Document(TenantRow):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Tenant and future sharding key. Lookups by tenant use the (user_id, path) unique index.
    user_id = models.CharField(max_length=255)
    path = models.TextField()
    content = models.TextField(blank=True, default="")
    content_hash = models.CharField(max_length=71)
    metadata = models.JSONField(default=dict, blank=True)
    is_runtime = models.BooleanField(default=False)
    index_state = models.CharField(
        max_length=8, choices=IndexState.choices, default=IndexState.PENDING
    )
    # The content_hash whose chunks are stored; differs from content_hash while indexing is due.
    indexed_hash = models.CharField(max_length=71, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = DocumentQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user_id", "path"], name="workspace_document_user_path")
        ]
        indexes = [
            # reindex_workspace --stale-only and the admin's filter on index state.
            models.Index(
                fields=["index_state"],
                name="workspace_document_stale",
                condition=~models.Q(index_state="indexed") & ~models.Q(index_state="skipped"),
            ),
        ]
        triggers = [
            # A document that becomes runtime (a write under a new WORKSPACE_RUNTIME_PATHS, or
            # any UPDATE) loses its chunks in the same statement: the runtime upsert stays one
            # statement and search never shows engine state.
            pgtrigger.Trigger(
                name="document_purge_chunks_when_runtime",
                when=pgtrigger.After,
                operation=pgtrigger.Update,
                condition=pgtrigger.Q(old__is_runtime=False, new__is_runtime=True),
                func="DELETE FROM workspace_chunk WHERE document_id = NEW.id; RETURN NULL;",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user_id}:{self.path}"

    @property
    def size(self) -> int:
        return len(self.content.encode("utf-8"))


class DocumentVersionQuerySet(models.QuerySet["DocumentVersion"]):
    def of_path(self, *, user_id: str, path: str) -> DocumentVersionQuerySet:
        """The versions of the tenant's document at ``path``. The document is only joined to
        match the path: loading it would drag its current content along for nothing."""
        return self.filter(user_id=user_id, document__user_id=user_id, document__path=path)


class DocumentVersion(TenantRow):
    # Deleting a document deletes its versions and chunks through ON DELETE CASCADE foreign keys
    # (set in migration 0002), so even a raw one-statement delete cannot leave orphans.
    document = models.ForeignKey(Document, on_delete=models.DO_NOTHING, related_name="versions")
    user_id = models.CharField(max_length=255)
    version = models.PositiveIntegerField()
    content = models.TextField(blank=True)
    content_hash = models.CharField(max_length=71)
    changed_by = models.CharField(max_length=255, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    objects = DocumentVersionQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["document", "version"], name="workspace_version_document_version"
            )
        ]
        triggers = [
            pgtrigger.Protect(name="version_append_only", operation=pgtrigger.Update),
            pgtrigger.Trigger(
                name="version_refuse_runtime",
                when=pgtrigger.Before,
                operation=pgtrigger.Insert,
                func=_REFUSE_RUNTIME_ROWS,
            ),
        ]

    def __str__(self) -> str:
        return f"{self.document_id} v{self.version}"


class Chunk(TenantRow):
    document = models.ForeignKey(Document, on_delete=models.DO_NOTHING, related_name="chunks")
    # Denormalised from the document so each search leg filters by tenant before anything else.
    user_id = models.CharField(max_length=255)
    chunk_index = models.PositiveIntegerField()
    content = models.TextField()
    # The document content_hash this chunk was cut from: all chunks of a document share it.
    source_hash = models.CharField(max_length=71)
    # 'english' spelled out: to_tsvector(regconfig, text) is immutable, as a generated column needs.
    content_tsv = models.GeneratedField(
        expression=SearchVector("content", config="english"),
        output_field=SearchVectorField(),
        db_persist=True,
    )
    # No fixed dimension: the provider (and its size) can change without a migration. Search
    # compares only vectors of the current model. The HNSW index (one per model and size, a
    # partial expression index) is configuration, built by `vector_index_ensure`, not a migration.
    embedding = VectorField(null=True, blank=True)
    embedding_model = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["document", "chunk_index"], name="workspace_chunk_document_index"
            )
        ]
        indexes = [
            GinIndex(fields=["content_tsv"], name="workspace_chunk_tsv"),
            models.Index(fields=["user_id"], name="workspace_chunk_user"),
        ]
        triggers = [
            pgtrigger.Trigger(
                name="chunk_refuse_runtime",
                when=pgtrigger.Before,
                operation=pgtrigger.Insert | pgtrigger.Update,
                func=_REFUSE_RUNTIME_ROWS,
            ),
        ]

    def __str__(self) -> str:
        return f"{self.document_id}#{self.chunk_index}"


class TenantVectorIndex(models.Model):
    """A big tenant's own HNSW index of one model and size, and the recall measured at its build.

    ``vector_index_ensure`` builds a partial index (this tenant's rows of the model only) for every
    tenant over ``SEARCH_HNSW_MIN_CHUNKS`` chunks and records it here; the vector leg reads this
    row to choose its plan, so a tenant's size is never counted at query time.
    """

    # One row per tenant, model and size; the key leads with the tenant, as Citus requires of a
    # table distributed by it (docs/citus.md).
    pk = models.CompositePrimaryKey("user_id", "model", "dimensions")
    user_id = models.CharField(max_length=255)
    model = models.CharField(max_length=200)
    dimensions = models.PositiveIntegerField()
    # Unique by construction (vector_index_name hashes tenant, model and size), not by a
    # constraint: every unique index of a tenant table includes user_id.
    name = models.CharField(max_length=63)
    # The tenant's chunks of the model when the index was built.
    chunks = models.PositiveIntegerField()
    # recall@10 against the exact scan on sample queries less one standard error, at the
    # ef_search below (the smallest tried that reached SEARCH_RECALL_FLOOR, or the last tried).
    recall = models.FloatField()
    ef_search = models.PositiveIntegerField()
    # Median milliseconds per sample query through the index and with the exact scan: reported
    # (a tenant whose index is no faster may want a higher SEARCH_HNSW_MIN_CHUNKS), not acted on.
    index_ms = models.FloatField()
    exact_ms = models.FloatField()
    built_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.user_id}:{self.model}:{self.dimensions}"

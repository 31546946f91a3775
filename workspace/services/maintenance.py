"""Maintenance for admin actions and management commands: runtime flags, re-indexing, version
pruning and folder hygiene. Each works in short transactions, a batch of rows at a time, so a
rerun after an interruption is safe.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from workspace.metadata import retention_days
from workspace.models import Chunk, Document, DocumentVersion, IndexState
from workspace.paths import CONFIG_NAME, IDENTITY_NAMES, runtime_rules
from workspace.services.indexing import document_index, document_index_enqueue


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


# Versions kept per document by `prune_versions` and its daily task.
VERSIONS_KEPT = 50


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
    days = retention_days(hygiene)
    if days is None:
        return None
    # Tenants write this number: one beyond what a date can go back must not abort the run for
    # every other tenant (OverflowError); nothing is older than a century anyway.
    return now - timedelta(days=min(days, MAX_RETENTION_DAYS))


def workspace_hygiene(
    *, user_id: str | None = None, dry_run: bool = False, now: datetime | None = None
) -> HygieneResult:
    """For each ``.config`` with ``hygiene.enabled``: delete the folder's immediate documents not
    updated for ``retention_days`` (default 30, at least 1). ``.config`` documents and the
    identity files (``IDENTITY_NAMES``, in any folder) are always kept, whatever their metadata. A
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
            name = path[len(folder) :]
            if "/" in name or name in IDENTITY_NAMES:
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

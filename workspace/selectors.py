"""Workspace reads, always scoped by tenant; paths are normalised here from raw input."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import connection
from django.db.models import F, Q, QuerySet

from workspace.errors import DocumentNotFound, VersionNotFound
from workspace.models import Document, DocumentQuerySet, DocumentVersion, IndexState
from workspace.paths import config_paths_for, normalise_directory, normalise_path

PREVIEW_CHARACTERS = 200


def documents_for(*, user_id: str) -> DocumentQuerySet:
    return Document.objects.filter(user_id=user_id)


def document_get(*, user_id: str, path: str) -> Document:
    normalised = normalise_path(path)
    document = documents_for(user_id=user_id).filter(path=normalised).first()
    if document is None:
        raise DocumentNotFound.for_path(normalised)
    return document


def effective_metadata(*, user_id: str, path: str, own: dict[str, Any]) -> dict[str, Any]:
    """The nearest ancestor ``.config`` document's metadata overlaid by the document's own.

    Shallow: a nested object (``hygiene``) in the document replaces the folder's wholesale.
    """
    candidates = config_paths_for(path)
    configs = dict(
        documents_for(user_id=user_id).filter(path__in=candidates).values_list("path", "metadata")
    )
    inherited: Any = next(
        (configs[candidate] for candidate in candidates if candidate in configs), {}
    )
    if not isinstance(inherited, dict):
        inherited = {}
    return {**inherited, **own}


def document_versions(*, user_id: str, path: str) -> QuerySet[DocumentVersion]:
    """Versions of a document, newest first; ``DocumentNotFound`` for another tenant's path."""
    normalised = normalise_path(path)
    document_id = (
        documents_for(user_id=user_id).filter(path=normalised).values_list("id", flat=True).first()
    )
    if document_id is None:
        raise DocumentNotFound.for_path(normalised)
    return (
        DocumentVersion.objects.filter(user_id=user_id, document_id=document_id)
        .defer("content")
        .order_by("-version")
    )


def document_version(*, user_id: str, path: str, version: int) -> DocumentVersion:
    """One version with its content, without loading the document's current content."""
    normalised = normalise_path(path)
    found = (
        DocumentVersion.objects.of_path(user_id=user_id, path=normalised)
        .filter(version=version)
        .first()
    )
    if found is None:
        if not documents_for(user_id=user_id).filter(path=normalised).exists():
            raise DocumentNotFound.for_path(normalised)
        raise VersionNotFound.for_version(normalised, version=version)
    return found


@dataclass(frozen=True)
class DirectoryEntry:
    path: str
    name: str
    is_directory: bool
    updated_at: datetime
    content_preview: str | None


def document_list(*, user_id: str, directory: str = "") -> list[DirectoryEntry]:
    """Immediate children of ``directory`` (root by default); directories are virtual.

    One query: each child name aggregated over the documents below it (newest ``updated_at``;
    a name that is both a document and a folder is reported as a directory).
    """
    prefix = normalise_directory(directory)
    prefix = f"{prefix}/" if prefix else ""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            WITH below AS (
                SELECT substr(path, %(start)s) AS rest, updated_at, content
                FROM workspace_document
                WHERE user_id = %(user_id)s AND starts_with(path, %(prefix)s)
            )
            SELECT split_part(rest, '/', 1) AS name,
                   bool_or(strpos(rest, '/') > 0) AS is_directory,
                   max(updated_at) AS updated_at,
                   max(left(content, %(preview)s)) FILTER (WHERE strpos(rest, '/') = 0)
            FROM below
            GROUP BY 1
            ORDER BY 1
            """,
            {
                "user_id": user_id,
                "prefix": prefix,
                "start": len(prefix) + 1,
                "preview": PREVIEW_CHARACTERS,
            },
        )
        rows = cursor.fetchall()
    return [
        DirectoryEntry(
            path=f"{prefix}{name}",
            name=name,
            is_directory=is_directory,
            updated_at=updated_at,
            content_preview=None if is_directory else preview,
        )
        for name, is_directory, updated_at, preview in rows
    ]


def document_tree(*, user_id: str, prefix: str = "") -> QuerySet[Document]:
    """Every document at or below ``prefix``, in path order (a flat, paginatable tree)."""
    normalised = normalise_directory(prefix)
    documents = documents_for(user_id=user_id)
    if normalised:
        documents = documents.filter(path__startswith=f"{normalised}/") | documents.filter(
            path=normalised
        )
    return documents.defer("content").with_size().order_by("path")


def documents_for_reindex(
    *,
    user_id: str | None = None,
    path_prefix: str | None = None,
    stale_only: bool = False,
) -> QuerySet[Document]:
    """The documents ``reindex_workspace`` would index (never runtime ones), in pk order; every
    tenant's unless ``user_id`` is given (an operator's command, not a request)."""
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

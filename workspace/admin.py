"""Operators' view of workspaces: documents with their versions (diffed) and chunks.

Tables get large (every tenant's documents, every chunk), so lists never count the whole table,
join what they show, and chunk search uses the full-text index rather than a LIKE scan.
"""

from __future__ import annotations

import difflib
from typing import Any, cast

from django.contrib import admin, messages
from django.contrib.postgres.search import SearchQuery
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode

from ironclaw_site.admin import ReadOnlyAdmin
from workspace import services
from workspace.models import Chunk, Document, DocumentQuerySet, DocumentVersion

RECENT_VERSIONS_SHOWN = 20


def unified_diff(before: str, after: str, *, before_label: str, after_label: str) -> str:
    lines = difflib.unified_diff(
        before.splitlines(),
        after.splitlines(),
        fromfile=before_label,
        tofile=after_label,
        lineterm="",
        n=2,
    )
    return "\n".join(lines) or "(no textual difference)"


@admin.register(Document)
class DocumentAdmin(ReadOnlyAdmin):
    # Read-only: a write must go through the services (paths, versions, indexing), as the API's do.
    list_display = ("path", "user_id", "is_runtime", "size_display", "index_state", "updated_at")
    list_filter = ("is_runtime", "index_state")
    search_fields = ("=user_id", "path")
    show_full_result_count = False
    list_per_page = 50
    ordering = ("user_id", "path")
    readonly_fields = (
        "id",
        "user_id",
        "path",
        "content_hash",
        "is_runtime",
        "index_state",
        "indexed_hash",
        "size_display",
        "chunks_link",
        "recent_versions",
        "created_at",
        "updated_at",
    )
    fields = (*readonly_fields[:9], "metadata", "content", *readonly_fields[9:])
    actions = ("reindex", "purge_runtime_chunks")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Document]:
        # The list shows sizes without loading every document's content.
        documents = cast(DocumentQuerySet, super().get_queryset(request))
        return documents.defer("content").with_size()

    @admin.display(description="size (bytes)", ordering="size_bytes")
    def size_display(self, document: Document) -> int:
        size = getattr(document, "size_bytes", None)
        return document.size if size is None else int(size)

    @admin.display(description="chunks")
    def chunks_link(self, document: Document) -> str:
        count = Chunk.objects.filter(document=document).count()
        url = (
            reverse("admin:workspace_chunk_changelist")
            + "?"
            + urlencode({"document__id__exact": str(document.pk)})
        )
        return format_html('<a href="{}">{} chunk(s)</a>', url, count)

    @admin.display(description=f"latest {RECENT_VERSIONS_SHOWN} versions (diff to the next)")
    def recent_versions(self, document: Document) -> str:
        versions = list(
            DocumentVersion.objects.filter(document=document).order_by("-version")[
                :RECENT_VERSIONS_SHOWN
            ]
        )
        if not versions:
            return "no versions"
        # Each version is the content before a change; the next newer one (or the current
        # content) is what it became.
        newer_content, newer_label = document.content, "current"
        rows = []
        for version in versions:
            diff = unified_diff(
                version.content,
                newer_content,
                before_label=f"v{version.version}",
                after_label=newer_label,
            )
            url = reverse("admin:workspace_documentversion_change", args=[version.pk])
            rows.append((url, version.version, version.created_at, version.changed_by, diff))
            newer_content, newer_label = version.content, f"v{version.version}"
        return format_html(
            "<table><tr><th>version</th><th>saved</th><th>changed by</th><th>diff</th></tr>"
            "{}</table>",
            format_html_join(
                "",
                '<tr><td><a href="{}">v{}</a></td><td>{}</td><td>{}</td>'
                '<td><pre style="white-space: pre-wrap">{}</pre></td></tr>',
                rows,
            ),
        )

    @admin.action(description="Reindex the selected documents")
    def reindex(self, request: HttpRequest, queryset: QuerySet[Document]) -> None:
        ids = list(queryset.filter(is_runtime=False).values_list("pk", flat=True))
        outcomes = services.documents_reindex(document_ids=ids)
        summary = ", ".join(f"{count} {outcome}" for outcome, count in sorted(outcomes.items()))
        self.message_user(request, f"Reindexed {len(ids)} document(s): {summary or 'nothing'}.")

    @admin.action(description="Purge chunks of runtime documents (recompute runtime flags)")
    def purge_runtime_chunks(self, request: HttpRequest, queryset: QuerySet[Document]) -> None:
        result = services.runtime_chunks_cleanup(
            document_ids=list(queryset.values_list("pk", flat=True))
        )
        self.message_user(
            request,
            f"{result.flagged_runtime} document(s) flagged runtime, {result.unflagged} unflagged, "
            f"{result.chunks_deleted} chunk(s) deleted.",
            messages.SUCCESS,
        )


class RelatedToDocumentAdmin(ReadOnlyAdmin):
    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        # The joined document is shown by path; never drag its (up to 5 MiB) content along.
        return super().get_queryset(request).defer("document__content")


@admin.register(DocumentVersion)
class DocumentVersionAdmin(RelatedToDocumentAdmin):
    list_display = ("document", "version", "user_id", "changed_by", "created_at")
    list_select_related = ("document",)
    raw_id_fields = ("document",)
    search_fields = ("=user_id", "document__path")
    show_full_result_count = False
    readonly_fields = (
        "document",
        "user_id",
        "version",
        "content_hash",
        "changed_by",
        "created_at",
        "diff_to_previous",
        "content",
    )
    fields = readonly_fields

    @admin.display(description="diff from the previous version")
    def diff_to_previous(self, version: DocumentVersion) -> str:
        previous = (
            DocumentVersion.objects.filter(
                document_id=version.document_id, version__lt=version.version
            )
            .order_by("-version")
            .first()
        )
        if previous is None:
            return "first version"
        return format_html(
            '<pre style="white-space: pre-wrap">{}</pre>',
            unified_diff(
                previous.content,
                version.content,
                before_label=f"v{previous.version}",
                after_label=f"v{version.version}",
            ),
        )


@admin.register(Chunk)
class ChunkAdmin(RelatedToDocumentAdmin):
    list_display = ("document", "chunk_index", "user_id", "embedding_model", "short_content")
    list_select_related = ("document",)
    raw_id_fields = ("document",)
    search_fields = ("content",)
    show_full_result_count = False
    readonly_fields = (
        "document",
        "user_id",
        "chunk_index",
        "source_hash",
        "embedding_model",
        "created_at",
        "content",
    )
    fields = readonly_fields

    @admin.display(description="content")
    def short_content(self, chunk: Chunk) -> str:
        return chunk.content[:120]

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Chunk], search_term: str
    ) -> tuple[QuerySet[Chunk], bool]:
        # Full-text through the GIN index instead of an ILIKE scan of every chunk.
        if not search_term.strip():
            return queryset, False
        query = SearchQuery(search_term, search_type="websearch", config="english")
        return queryset.filter(content_tsv=query), False

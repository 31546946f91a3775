"""Operators' view of workspaces: documents with their versions (diffed) and chunks.

Tables get large (every tenant's documents, every chunk), so lists never count the whole table,
join what they show, and chunk search uses the full-text index rather than a LIKE scan.
"""

from __future__ import annotations

import difflib
from typing import Any, cast

from django.contrib import admin, messages
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.admin.views.main import ChangeList
from django.contrib.postgres.search import SearchQuery
from django.db.models import Count, Exists, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.http import HttpRequest
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import formats, timezone
from django.utils.html import format_html
from django.utils.http import urlencode
from django.utils.safestring import SafeString, mark_safe

from core.admin import HiddenByDefaultFilter, OperateAdmin, ReadOnlyAdmin, TenantPrefixFilter
from core.admin_display import change_link
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


def diff_lines(diff: str) -> list[dict[str, str]]:
    """A unified diff's lines, each with the marker its colour follows (none for file headers)."""
    return [
        {"marker": "" if line.startswith(("+++", "---")) else line[:1], "text": line}
        for line in diff.splitlines()
    ]


def diff_html(diff: str) -> SafeString:
    """A unified diff with added lines green and removed lines red."""
    html = render_to_string("admin/workspace/diff.html", {"lines": diff_lines(diff)})
    return mark_safe(html.strip())


class _RowsExistFilter(admin.SimpleListFilter):
    """Documents that have (or have no) rows of ``related`` (an EXISTS per listed page)."""

    related: type[Chunk] | type[DocumentVersion]

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "yes"), ("no", "no")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        exists = Exists(self.related.objects.filter(document=OuterRef("pk")))
        if self.value() == "yes":
            return queryset.filter(exists)
        if self.value() == "no":
            return queryset.filter(~exists)
        return queryset


class HasChunksFilter(_RowsExistFilter):
    title = "has chunks"
    parameter_name = "chunks"
    related = Chunk


class HasVersionsFilter(_RowsExistFilter):
    title = "has versions"
    parameter_name = "versions"
    related = DocumentVersion


class RuntimeDocumentsFilter(HiddenByDefaultFilter):
    """Runtime documents (the engine's checkpoints under ``engine/``, most rows of a busy
    workspace) are hidden from the list unless asked for.

    The parameter keeps the name of the field filter this replaced, so a link that lists runtime
    documents with ``is_runtime__exact=1`` (the dashboard's) still does.
    """

    title = "runtime documents"
    parameter_name = "is_runtime__exact"
    ONLY = "1"
    only_label = "only runtime"

    def only(self, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(is_runtime=True)

    def without(self, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(is_runtime=False)


class DocumentChangeList(ChangeList):
    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> QuerySet[Any]:
        # Counted per listed row, after the page's LIMIT (PostgreSQL evaluates a subquery in the
        # select list after the sort and limit it does not take part in), on the versions'
        # (document, version) index: the page costs the same whatever the table holds.
        versions = (
            DocumentVersion.objects.filter(document=OuterRef("pk"))
            .order_by()
            .values("document")
            .annotate(count=Count("*"))
            .values("count")
        )
        return (
            super()
            .get_queryset(request, exclude_parameters)
            .annotate(version_count=Coalesce(Subquery(versions), 0))
        )


@admin.register(Document)
class DocumentAdmin(OperateAdmin, ReadOnlyAdmin):
    # Read-only: a write must go through the services (paths, versions, indexing), as the API's do.
    list_display = (
        "path",
        "user_id",
        "runtime",
        "size_display",
        "version_count",
        "index_state",
        "updated_at",
    )
    list_filter = (
        RuntimeDocumentsFilter,
        "index_state",
        HasChunksFilter,
        HasVersionsFilter,
        TenantPrefixFilter,
    )
    search_fields = ("path",)
    search_help_text = "Part of a path (tenants: the filter)."
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
        "metadata",
        "content",
    )
    fieldsets = (
        (
            f"Latest {RECENT_VERSIONS_SHOWN} versions, each diffed to the next",
            {"fields": ("recent_versions",)},
        ),
        (
            None,
            {
                "fields": (
                    "id",
                    "user_id",
                    "path",
                    "is_runtime",
                    "index_state",
                    "size_display",
                    "chunks_link",
                    "content_hash",
                    "indexed_hash",
                    "created_at",
                    "updated_at",
                )
            },
        ),
        ("Content and metadata", {"classes": ("collapse",), "fields": ("metadata", "content")}),
    )
    actions = ("reindex", "purge_runtime_chunks")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Document]:
        # The list shows sizes without loading every document's content.
        documents = cast(DocumentQuerySet, super().get_queryset(request))
        return documents.defer("content").with_size()

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return DocumentChangeList

    @admin.display(description="runtime", ordering="is_runtime")
    def runtime(self, document: Document) -> str:
        # Words, not the admin's red cross: a tenant's document is not an error.
        return "runtime" if document.is_runtime else "-"

    @admin.display(description="versions")
    def version_count(self, document: Document) -> int:
        return int(getattr(document, "version_count", 0))

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

    @admin.display(description="versions")
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
            rows.append(
                {
                    "url": url,
                    "version": version.version,
                    "saved": formats.localize(timezone.localtime(version.created_at)),
                    "changed_by": version.changed_by,
                    "diff_lines": diff_lines(diff),
                }
            )
            newer_content, newer_label = version.content, f"v{version.version}"
        return mark_safe(render_to_string("admin/workspace/document_versions.html", {"rows": rows}))

    @admin.action(description="Reindex the selected documents", permissions=["operate"])
    def reindex(self, request: HttpRequest, queryset: QuerySet[Document]) -> None:
        ids = list(queryset.filter(is_runtime=False).values_list("pk", flat=True))
        outcomes = services.documents_reindex(document_ids=ids)
        summary = ", ".join(f"{count} {outcome}" for outcome, count in sorted(outcomes.items()))
        self._log_each(request, Document.objects.filter(pk__in=ids), f"Reindex: {summary}")
        self.message_user(request, f"Reindexed {len(ids)} document(s): {summary or 'nothing'}.")

    @admin.action(
        description="Purge chunks of runtime documents (recompute runtime flags)",
        permissions=["operate"],
    )
    def purge_runtime_chunks(self, request: HttpRequest, queryset: QuerySet[Document]) -> None:
        ids = list(queryset.values_list("pk", flat=True))
        result = services.runtime_chunks_cleanup(document_ids=ids)
        done = (
            f"{result.flagged_runtime} document(s) flagged runtime, {result.unflagged} unflagged, "
            f"{result.chunks_deleted} chunk(s) deleted"
        )
        self._log_each(
            request, Document.objects.filter(pk__in=ids), f"Purge runtime chunks: {done}"
        )
        self.message_user(request, f"{done}.", messages.SUCCESS)

    def _log_each(self, request: HttpRequest, documents: QuerySet[Document], message: str) -> None:
        """One admin log row per document (one INSERT for them all), so each document's
        History and the index's Recent actions say what an operator did."""
        LogEntry.objects.log_actions(
            user_id=cast(int, request.user.pk),
            queryset=documents.defer("content"),
            action_flag=CHANGE,
            change_message=message,
            single_object=False,
        )


class RelatedToDocumentAdmin(ReadOnlyAdmin):
    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        # Rows are shown by their document's path (lists and pages: one join, not a query per
        # row); never drag the document's (up to 5 MiB) content along.
        return super().get_queryset(request).select_related("document").defer("document__content")

    @admin.display(description="document", ordering="document__path")
    def document_link(self, row: DocumentVersion | Chunk) -> SafeString:
        return change_link("admin:workspace_document_change", row.document_id, row.document.path)


@admin.register(DocumentVersion)
class DocumentVersionAdmin(RelatedToDocumentAdmin):
    list_display = ("title", "document_link", "user_id", "changed_by", "created_at")
    list_select_related = ("document",)
    raw_id_fields = ("document",)
    list_filter = (TenantPrefixFilter,)
    search_fields = ("document__path",)
    search_help_text = "Part of a document path (tenants: the filter)."
    show_full_result_count = False
    readonly_fields = (
        "document_link",
        "user_id",
        "version",
        "content_hash",
        "changed_by",
        "created_at",
        "diff_to_previous",
        "content",
    )
    fields = readonly_fields

    @admin.display(description="version", ordering="version")
    def title(self, version: DocumentVersion) -> str:
        return version_title(version)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> Any:
        version = self.get_object(request, object_id)
        title = {"title": version_title(version), "subtitle": None} if version else {}
        return super().change_view(request, object_id, form_url, {**title, **(extra_context or {})})

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
        return diff_html(
            unified_diff(
                previous.content,
                version.content,
                before_label=f"v{previous.version}",
                after_label=f"v{version.version}",
            )
        )


class HasEmbeddingFilter(admin.SimpleListFilter):
    title = "has embedding"
    parameter_name = "embedded"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "yes"), ("no", "no")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() in ("yes", "no"):
            return queryset.filter(embedding__isnull=self.value() == "no")
        return queryset


@admin.register(Chunk)
class ChunkAdmin(RelatedToDocumentAdmin):
    list_display = (
        "chunk_id",
        "document_link",
        "chunk_index",
        "user_id",
        "embedding_model",
        "short_content",
    )
    list_select_related = ("document",)
    list_filter = (
        ("document__is_runtime", admin.BooleanFieldListFilter),
        HasEmbeddingFilter,
        TenantPrefixFilter,
    )
    raw_id_fields = ("document",)
    search_fields = ("content",)
    search_help_text = "Words of the text, full-text (tenants: the filter)."
    show_full_result_count = False
    readonly_fields = (
        "document_link",
        "user_id",
        "chunk_index",
        "source_hash",
        "embedding_model",
        "created_at",
        "content",
    )
    fields = readonly_fields

    @admin.display(description="chunk", ordering="pk")
    def chunk_id(self, chunk: Chunk) -> str:
        return f"#{chunk.pk}"

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


def version_title(version: DocumentVersion) -> str:
    """A version named as people look for it: its document's path and number."""
    return f"{version.document.path} v{version.version}"

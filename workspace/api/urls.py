from __future__ import annotations

from django.urls import path, register_converter
from django.urls.converters import PathConverter

from workspace.api import views


class DocumentPathConverter(PathConverter):
    """Any text, newlines included. Django's ``path`` stops at a newline (``.`` in its regex), so
    ``documents/%0Anotes.md`` matched no route and was a 404, never reaching the path check's 400.
    """

    regex = r"(?s:.+)"


register_converter(DocumentPathConverter, "document_path")

# Most specific first: a document path may itself contain slashes. GET, PUT
# and DELETE on ``documents/<path>`` are three operations; DocumentView hands each to its own view.
urlpatterns = [
    path(
        "documents/<document_path:path>/versions/<int:version>/restore",
        views.DocumentRestoreView.as_view(),
        name="workspace-document-restore",
    ),
    path(
        "documents/<document_path:path>/versions/<int:version>",
        views.DocumentVersionDetailView.as_view(),
        name="workspace-document-version",
    ),
    path(
        "documents/<document_path:path>/versions",
        views.DocumentVersionListView.as_view(),
        name="workspace-document-versions",
    ),
    path(
        "documents/<document_path:path>/append",
        views.DocumentAppendView.as_view(),
        name="workspace-document-append",
    ),
    path(
        "documents/<document_path:path>/patch",
        views.DocumentPatchView.as_view(),
        name="workspace-document-patch",
    ),
    path("documents/<document_path:path>", views.DocumentView.as_view(), name="workspace-document"),
    path("list", views.FolderListView.as_view(), name="workspace-list"),
    path("tree", views.DocumentTreeView.as_view(), name="workspace-tree"),
    path("search", views.WorkspaceSearchView.as_view(), name="workspace-search"),
]

from __future__ import annotations

from django.urls import path

from workspace.api import views

# Most specific first: a document path may itself contain slashes (``<path:path>``). GET, PUT
# and DELETE on ``documents/<path>`` are three operations; DocumentView hands each to its own view.
urlpatterns = [
    path(
        "documents/<path:path>/versions/<int:version>/restore",
        views.DocumentRestoreView.as_view(),
        name="workspace-document-restore",
    ),
    path(
        "documents/<path:path>/versions/<int:version>",
        views.DocumentVersionDetailView.as_view(),
        name="workspace-document-version",
    ),
    path(
        "documents/<path:path>/versions",
        views.DocumentVersionListView.as_view(),
        name="workspace-document-versions",
    ),
    path(
        "documents/<path:path>/append",
        views.DocumentAppendView.as_view(),
        name="workspace-document-append",
    ),
    path(
        "documents/<path:path>/patch",
        views.DocumentPatchView.as_view(),
        name="workspace-document-patch",
    ),
    path("documents/<path:path>", views.DocumentView.as_view(), name="workspace-document"),
    path("list", views.FolderListView.as_view(), name="workspace-list"),
    path("tree", views.DocumentTreeView.as_view(), name="workspace-tree"),
    path("search", views.WorkspaceSearchView.as_view(), name="workspace-search"),
]

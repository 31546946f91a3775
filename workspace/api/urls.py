from __future__ import annotations

from django.urls import path

from workspace.api import views

# Most specific first: a document path may itself contain slashes (``<path:path>``).
urlpatterns = [
    path(
        "documents/<path:path>/versions/<int:version>/restore",
        views.DocumentRestoreView.as_view(),
        name="workspace-document-restore",
    ),
    path(
        "documents/<path:path>/versions/<int:version>",
        views.DocumentVersionView.as_view(),
        name="workspace-document-version",
    ),
    path(
        "documents/<path:path>/versions",
        views.DocumentVersionsView.as_view(),
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
    path("list", views.ListView.as_view(), name="workspace-list"),
    path("tree", views.TreeView.as_view(), name="workspace-tree"),
    path("search", views.SearchView.as_view(), name="workspace-search"),
]

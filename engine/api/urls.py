from __future__ import annotations

from django.urls import path

from engine.api import views

urlpatterns = [
    path(
        "threads/<uuid:thread_id>/checkpoint",
        views.ThreadCheckpointView.as_view(),
        name="thread-checkpoint",
    ),
    path("threads/<uuid:thread_id>/deltas", views.ThreadDeltasView.as_view(), name="thread-deltas"),
]

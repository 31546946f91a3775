from __future__ import annotations

from django.urls import path

from routines.api import views

urlpatterns = [
    path("routines", views.RoutinesView.as_view(), name="routine-list"),
    path("routines/<uuid:routine_id>", views.RoutineView.as_view(), name="routine-detail"),
    path(
        "routines/<uuid:routine_id>/firings",
        views.RoutineFiringListView.as_view(),
        name="routine-firings",
    ),
]

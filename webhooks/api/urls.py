from __future__ import annotations

from django.urls import path

from webhooks.api import views

urlpatterns = [
    path("webhooks", views.WebhooksView.as_view(), name="webhook-list"),
    path("webhooks/<uuid:webhook_id>", views.WebhookView.as_view(), name="webhook-detail"),
    path(
        "webhooks/<uuid:webhook_id>/deliveries",
        views.DeliveryListView.as_view(),
        name="webhook-delivery-list",
    ),
    path(
        "webhooks/<uuid:webhook_id>/deliveries/<uuid:delivery_id>",
        views.DeliveryDetailView.as_view(),
        name="webhook-delivery-detail",
    ),
    path(
        "webhooks/<uuid:webhook_id>/deliveries/<uuid:delivery_id>/redeliver",
        views.DeliveryRedeliverView.as_view(),
        name="webhook-delivery-redeliver",
    ),
]

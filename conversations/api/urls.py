from __future__ import annotations

from django.urls import path

from conversations.api import views

urlpatterns = [
    path("messages", views.MessageCreateView.as_view(), name="message-create"),
    path("conversations", views.ConversationListView.as_view(), name="conversation-list"),
    path("conversations/new", views.ConversationNewView.as_view(), name="conversation-new"),
    path(
        "conversations/<uuid:conversation_id>",
        views.ConversationDetailView.as_view(),
        name="conversation-detail",
    ),
    path(
        "conversations/<uuid:conversation_id>/entries",
        views.ConversationEntriesView.as_view(),
        name="conversation-entries",
    ),
    path(
        "conversations/<uuid:conversation_id>/clear",
        views.ConversationClearView.as_view(),
        name="conversation-clear",
    ),
    path(
        "conversations/<uuid:conversation_id>/policy",
        views.ConversationPolicySetView.as_view(),
        name="conversation-policy",
    ),
    path("threads/<uuid:thread_id>", views.ThreadDetailView.as_view(), name="thread-detail"),
    path("threads/<uuid:thread_id>/claim", views.ThreadClaimView.as_view(), name="thread-claim"),
    path(
        "threads/<uuid:thread_id>/heartbeat",
        views.ThreadHeartbeatView.as_view(),
        name="thread-heartbeat",
    ),
    path(
        "threads/<uuid:thread_id>/suspend",
        views.ThreadSuspendView.as_view(),
        name="thread-suspend",
    ),
    path("threads/<uuid:thread_id>/inbox", views.ThreadInboxView.as_view(), name="thread-inbox"),
    path(
        "threads/<uuid:thread_id>/outcome",
        views.ThreadOutcomeView.as_view(),
        name="thread-outcome",
    ),
]

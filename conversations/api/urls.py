from __future__ import annotations

from django.urls import path

from conversations.api import events, threads, views

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
        "conversations/<uuid:conversation_id>/events",
        events.ConversationEventsView.as_view(),
        name="conversation-events",
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
    path("threads/next", threads.ThreadNextView.as_view(), name="thread-next"),
    path("threads/<uuid:thread_id>", threads.ThreadDetailView.as_view(), name="thread-detail"),
    path(
        "threads/<uuid:thread_id>/events", events.ThreadEventsView.as_view(), name="thread-events"
    ),
    path("threads/<uuid:thread_id>/claim", threads.ThreadClaimView.as_view(), name="thread-claim"),
    path(
        "threads/<uuid:thread_id>/heartbeat",
        threads.ThreadHeartbeatView.as_view(),
        name="thread-heartbeat",
    ),
    path(
        "threads/<uuid:thread_id>/suspend",
        threads.ThreadSuspendView.as_view(),
        name="thread-suspend",
    ),
    path("threads/<uuid:thread_id>/inbox", threads.ThreadInboxView.as_view(), name="thread-inbox"),
    path(
        "threads/<uuid:thread_id>/outcome",
        threads.ThreadOutcomeView.as_view(),
        name="thread-outcome",
    ),
]

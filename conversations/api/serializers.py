"""Representations shared by several conversation endpoints."""

from __future__ import annotations

from rest_framework import serializers

from conversations.models import BusyPolicy, Conversation, EntrySender, ThreadKind, ThreadState


class EntrySerializer(serializers.Serializer):
    id = serializers.UUIDField()
    seq = serializers.IntegerField()
    sender = serializers.ChoiceField(choices=EntrySender.choices)
    content = serializers.CharField()
    thread_id = serializers.UUIDField(allow_null=True)
    created_at = serializers.DateTimeField()
    delivered_at = serializers.DateTimeField(allow_null=True)


class ThreadSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    conversation_id = serializers.UUIDField(allow_null=True)
    kind = serializers.ChoiceField(choices=ThreadKind.choices)
    state = serializers.ChoiceField(choices=ThreadState.choices)
    goal = serializers.CharField()
    tracked = serializers.BooleanField()
    lease_owner = serializers.CharField(allow_blank=True)
    lease_expires_at = serializers.DateTimeField(allow_null=True)
    outcome = serializers.JSONField(allow_null=True)
    cancel_requested = serializers.BooleanField()
    claim_count = serializers.IntegerField()
    step_count = serializers.IntegerField()
    tokens_used = serializers.IntegerField()
    metadata = serializers.JSONField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)


class ConversationSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    channel = serializers.CharField()
    metadata = serializers.JSONField()
    busy_policy = serializers.ChoiceField(choices=BusyPolicy.choices, allow_null=True)
    effective_busy_policy = serializers.SerializerMethodField()
    last_seq = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    def get_effective_busy_policy(self, conversation: Conversation) -> str:
        return conversation.effective_busy_policy

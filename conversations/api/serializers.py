"""Representations shared by several conversation endpoints."""

from __future__ import annotations

from decimal import Decimal

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
    claim_count = serializers.IntegerField(
        help_text="Claims so far; the claim's answer is the lease's epoch: send it back as "
        "`lease_epoch` on every write under the lease."
    )
    step_count = serializers.IntegerField()
    tokens_used = serializers.IntegerField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cost_usd = serializers.DecimalField(max_digits=12, decimal_places=6, coerce_to_string=False)
    model_time_ms = serializers.IntegerField()
    metadata = serializers.JSONField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    enqueued_at = serializers.DateTimeField(allow_null=True)
    claimed_at = serializers.DateTimeField(allow_null=True)
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    model_calls = serializers.ListField(child=serializers.DictField())


class UsageSerializer(serializers.Serializer):
    """What a run cost: totals with an outcome, the increase since the last report with a
    heartbeat."""

    steps = serializers.IntegerField(required=False, min_value=0, max_value=1_000_000, default=0)
    input_tokens = serializers.IntegerField(
        required=False, min_value=0, max_value=10**12, default=0
    )
    output_tokens = serializers.IntegerField(
        required=False, min_value=0, max_value=10**12, default=0
    )
    cost_usd = serializers.DecimalField(
        required=False, min_value=0, max_digits=12, decimal_places=6, default=Decimal(0)
    )
    model_ms = serializers.FloatField(required=False, min_value=0, max_value=10**12, default=0)


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

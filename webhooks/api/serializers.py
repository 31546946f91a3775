"""The JSON shapes of webhooks and their deliveries."""

from __future__ import annotations

from rest_framework import serializers

from webhooks.models import AttemptResult, DeliveryState, WebhookEvent


class WebhookSerializer(serializers.Serializer):
    """A webhook as the API shows it; its secret never appears here (only when created)."""

    id = serializers.UUIDField()
    url = serializers.URLField()
    events = serializers.ListField(child=serializers.ChoiceField(choices=WebhookEvent.choices))
    description = serializers.CharField()
    enabled = serializers.BooleanField()
    disabled_reason = serializers.CharField(
        help_text="Why the service disabled it (failures in a row, a 410); empty otherwise."
    )
    consecutive_failures = serializers.IntegerField()
    paused_until = serializers.DateTimeField(
        allow_null=True,
        help_text="The receiver's last attempts failed (timeouts, connection errors, 408, 429, "
        "5xx): its deliveries wait until then, and the first one after tries it again.",
    )
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class DeliverySerializer(serializers.Serializer):
    id = serializers.UUIDField(help_text="The webhook-id header of every attempt.")
    # Plain strings in the schema: enums named "state" and "event type" exist already.
    event_type = serializers.CharField(help_text=f"One of: {', '.join(WebhookEvent.values)}.")
    state = serializers.CharField(help_text=f"One of: {', '.join(DeliveryState.values)}.")
    attempts = serializers.IntegerField()
    last_status_code = serializers.IntegerField(allow_null=True)
    last_error = serializers.CharField()
    next_attempt_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()
    delivered_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    payload = serializers.JSONField(help_text='The body sent: {"type", "timestamp", "data"}.')


class AttemptSerializer(serializers.Serializer):
    number = serializers.IntegerField()
    started_at = serializers.DateTimeField()
    duration_ms = serializers.IntegerField()
    result = serializers.ChoiceField(choices=AttemptResult.choices)
    status_code = serializers.IntegerField(allow_null=True)
    error = serializers.CharField()


class DeliveryDetailSerializer(DeliverySerializer):
    """A delivery with its attempts: ``attempts`` is the list here, and ``attempt_count`` the
    number the list view calls ``attempts``."""

    attempts = AttemptSerializer(many=True, source="attempt_list")  # type: ignore[assignment]
    attempt_count = serializers.IntegerField(source="attempts")

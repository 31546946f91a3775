"""Representations shared by several conversation endpoints (the shapes DESIGN.md fixes)."""

from __future__ import annotations

import datetime
from typing import Any

from django.utils.dateparse import parse_datetime
from rest_framework import serializers
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import Cursor, CursorPagination

from conversations.models import BusyPolicy, Conversation, EntrySender, ThreadKind, ThreadState
from ironclaw_site.api.fields import TextField  # noqa: F401  (re-exported)
from ironclaw_site.api.schema import ErrorSerializer  # noqa: F401  (re-exported)


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


def page_serializer(name: str, item: serializers.Serializer) -> type[serializers.Serializer]:
    """The OpenAPI shape of a cursor-paginated list of ``item``."""
    return type(
        name,
        (serializers.Serializer,),
        {
            "next": serializers.URLField(allow_null=True),
            "previous": serializers.URLField(allow_null=True),
            "results": item,
        },
    )


def _aware_datetime(position: str) -> datetime.datetime:
    parsed = parse_datetime(position)
    if parsed is None or parsed.tzinfo is None:
        raise ValueError(position)
    return parsed


def _seq(position: str) -> int:
    return int(position)


class _CheckedCursorPagination(CursorPagination):
    """A cursor whose position does not fit the ordering column is a 400 naming ``cursor``.

    DRF puts the decoded position straight into the page query, so a hand-made cursor such as
    ``p=abc`` on an integer or timestamp column used to escape as a 500.
    """

    page_size_query_param = "limit"
    max_page_size = 1000
    # Parses the first ordering column's position, raising ValueError when it does not fit.
    parse_position: staticmethod[[str], Any]

    def decode_cursor(self, request: Any) -> Cursor | None:
        try:
            cursor = super().decode_cursor(request)
            if cursor is not None and cursor.position is not None:
                self.parse_position(str(cursor.position))
        except (NotFound, ValueError):
            raise ValidationError({"cursor": [self.invalid_cursor_message]}) from None
        return cursor


class NewestFirstPagination(_CheckedCursorPagination):
    """Cursor pages: one query each (no COUNT) and stable while new rows arrive."""

    ordering = ("-created_at", "-id")
    parse_position = staticmethod(_aware_datetime)


class SeqPagination(_CheckedCursorPagination):
    ordering = ("seq",)
    parse_position = staticmethod(_seq)

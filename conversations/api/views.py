"""One APIView per operation: validate, call one service or selector, serialise."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.pagination import Cursor
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import request_user_id
from accounts.idempotency import idempotent
from conversations import selectors, services
from conversations.api import examples
from conversations.api.serializers import ConversationSerializer, EntrySerializer, ThreadSerializer
from conversations.models import BusyPolicy, EntrySender
from core.api.cursor_pagination import (
    NewestFirstPagination,
    SeqPagination,
    page_serializer,
)
from core.api.fields import TextField
from core.api.schema import ErrorSerializer
from core.notify import ENTRIES_CHANNEL, client_gone, wait_for

TAG = ["conversations"]
THREAD_TAG = ["threads"]
# Long-polls answer within this many seconds, so a client never looks like a stalled request.
MAX_WAIT_SECONDS = 30


def _errors(**descriptions: str) -> dict[int, OpenApiResponse]:
    codes = {"bad_request": 400, "not_found": 404, "conflict": 409, "too_large": 413}
    return {
        codes[name]: OpenApiResponse(ErrorSerializer, description=text)
        for name, text in descriptions.items()
    }


class MessageCreateView(APIView):
    """Post a user message: it spawns, is injected into, resumes or queues behind a thread."""

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "MessageCreateInput"

        channel = TextField(max_length=64)
        content = TextField(trim_whitespace=False)
        scope = TextField(required=False, allow_null=True, max_length=128, trim_whitespace=False)

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "MessageCreateOutput"

        conversation_id = serializers.UUIDField()
        thread_id = serializers.UUIDField()
        action = serializers.ChoiceField(choices=["spawned", "injected", "resumed", "queued"])
        seq = serializers.IntegerField()
        interrupted_thread_id = serializers.UUIDField(allow_null=True)

    @extend_schema(
        tags=TAG,
        operation_id="message_create",
        examples=[examples.MESSAGE_CREATE_REQUEST, examples.MESSAGE_CREATE_RESPONSE],
        summary="Post a user message",
        request=InputSerializer,
        responses={
            202: OutputSerializer,
            **_errors(
                bad_request="A field is invalid (details name it).",
                conflict="conversation_busy (lock timeout) or message_rejected (busy policy).",
                too_large="content over CONVERSATION_MAX_MESSAGE_BYTES.",
            ),
        },
    )
    @idempotent
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        result = services.message_handle(user_id=request_user_id(request), **data.validated_data)
        return Response(self.OutputSerializer(result).data, status=status.HTTP_202_ACCEPTED)


class ConversationListView(APIView):
    class FilterSerializer(serializers.Serializer):
        channel = serializers.CharField(required=False, max_length=255)

    @extend_schema(
        tags=TAG,
        operation_id="conversation_list",
        summary="List conversations",
        parameters=[
            OpenApiParameter("channel", str, description="Only this channel key (web, web:tab)."),
            OpenApiParameter("limit", int, description="Page size."),
            OpenApiParameter("cursor", str, description="Opaque cursor from next/previous."),
        ],
        responses={
            200: page_serializer("ConversationPage", ConversationSerializer(many=True)),
            **_errors(bad_request="channel or cursor is invalid (details name it)."),
        },
    )
    def get(self, request: Request) -> Response:
        filters = _query_params(self.FilterSerializer, request)
        conversations = selectors.conversation_list(
            user_id=request_user_id(request), channel=filters.get("channel")
        )
        paginator = NewestFirstPagination()
        page = paginator.paginate_queryset(conversations, request, view=self)
        return paginator.get_paginated_response(ConversationSerializer(page, many=True).data)


def _query_params(
    serializer_class: type[serializers.Serializer], request: Request
) -> dict[str, Any]:
    filters = serializer_class(data=request.query_params)
    filters.is_valid(raise_exception=True)
    return dict(filters.validated_data)


class ConversationNewView(APIView):
    """Start a new conversation on a channel; the old one stays readable."""

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "ConversationNewInput"

        channel = TextField(max_length=64)
        scope = TextField(required=False, allow_null=True, max_length=128, trim_whitespace=False)

    @extend_schema(
        tags=TAG,
        operation_id="conversation_new",
        summary="Start a new conversation on a channel",
        request=InputSerializer,
        responses={201: ConversationSerializer, **_errors(bad_request="A field is invalid.")},
    )
    @idempotent
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        conversation = services.conversation_start_new(
            user_id=request_user_id(request), **data.validated_data
        )
        return Response(ConversationSerializer(conversation).data, status=status.HTTP_201_CREATED)


class ConversationDetailView(APIView):
    class OutputSerializer(ConversationSerializer):
        class Meta:
            ref_name = "ConversationDetailOutput"

        active_threads = ThreadSerializer(many=True)

    @extend_schema(
        tags=TAG,
        operation_id="conversation_get",
        summary="Read a conversation with its active threads",
        responses={200: OutputSerializer, **_errors(not_found="Unknown or another tenant's.")},
    )
    def get(self, request: Request, conversation_id: UUID) -> Response:
        conversation = selectors.conversation_get(
            user_id=request_user_id(request), conversation_id=conversation_id
        )
        return Response(self.OutputSerializer(conversation).data)


class ConversationPolicySetView(APIView):
    """Set the conversation's busy policy (null: the CONVERSATION_DEFAULT_BUSY_POLICY setting)."""

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "ConversationPolicySetInput"

        busy_policy = serializers.ChoiceField(choices=BusyPolicy.choices, allow_null=True)

    @extend_schema(
        tags=TAG,
        operation_id="conversation_policy_set",
        summary="Set a conversation's busy policy",
        request=InputSerializer,
        responses={
            200: ConversationSerializer,
            **_errors(bad_request="Unknown policy.", not_found="Unknown or another tenant's."),
        },
    )
    @idempotent
    def post(self, request: Request, conversation_id: UUID) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        conversation = services.conversation_busy_policy_set(
            user_id=request_user_id(request),
            conversation_id=conversation_id,
            busy_policy=data.validated_data["busy_policy"],
        )
        return Response(ConversationSerializer(conversation).data)


class ConversationEntriesView(APIView):
    """A conversation's entries in seq order; with ``wait_seconds``, a long-poll that answers as
    soon as an entry after ``after_seq`` exists (no database connection is held while it waits).
    With ``sender``, only that sender's entries, and the long-poll waits for one of them: a client
    waiting for the agent's reply is not answered by the "Thread started" line before it.
    """

    class FilterSerializer(serializers.Serializer):
        after_seq = serializers.IntegerField(required=False, min_value=0)
        sender = serializers.ChoiceField(choices=EntrySender.choices, required=False)
        wait_seconds = serializers.FloatField(
            required=False, min_value=0, max_value=MAX_WAIT_SECONDS, default=0
        )

    @extend_schema(
        tags=TAG,
        operation_id="conversation_entries",
        examples=[examples.ENTRIES_RESPONSE],
        summary="List (or long-poll) a conversation's entries",
        parameters=[
            OpenApiParameter("after_seq", int, description="Only entries with a larger seq."),
            OpenApiParameter(
                "sender",
                str,
                enum=EntrySender.values,
                description="Only this sender's entries; a long-poll waits for one of them "
                "(sender=agent: the agent's reply, whatever system entries come first).",
            ),
            OpenApiParameter(
                "wait_seconds",
                float,
                description=f"Wait up to this long (0-{MAX_WAIT_SECONDS}) for an entry after "
                "after_seq (of sender, when given) when there is none yet.",
            ),
            OpenApiParameter("limit", int, description="Page size."),
            OpenApiParameter("cursor", str, description="Opaque cursor from next/previous."),
        ],
        responses={
            200: page_serializer("EntryPage", EntrySerializer(many=True)),
            **_errors(
                bad_request="after_seq, sender or cursor is invalid (details name it).",
                not_found="Unknown conversation.",
            ),
        },
    )
    def get(self, request: Request, conversation_id: UUID) -> Response:
        filters = _query_params(self.FilterSerializer, request)
        user_id = request_user_id(request)
        after_seq = filters.get("after_seq")
        sender = filters.get("sender")
        paging = "cursor" in request.query_params
        if paging:
            entries = selectors.entry_list(
                user_id=user_id, conversation_id=conversation_id, after_seq=after_seq, sender=sender
            )
        else:
            selectors.conversation_check(user_id=user_id, conversation_id=conversation_id)
        if filters["wait_seconds"] > 0 and not paging:

            def entry_exists() -> bool | None:
                found = selectors.entry_after_exists(
                    user_id=user_id,
                    conversation_id=conversation_id,
                    after_seq=after_seq,
                    sender=sender,
                )
                return True if found else None

            wait_for(
                ENTRIES_CHANNEL,
                str(conversation_id),
                timeout=filters["wait_seconds"],
                check=entry_exists,
                # A client that hung up frees its web thread now, not at the timeout.
                abandoned=client_gone(request),
            )
        paginator = SeqPagination()
        if paging:
            page = paginator.paginate_queryset(entries, request, view=self)
            return paginator.get_paginated_response(EntrySerializer(page, many=True).data)
        # The first page (every long-poll's answer) without the ORM and DRF's cursor paging: the
        # same response, checked against them by the tests.
        limit = paginator.get_page_size(request)
        rows = selectors.entry_first_rows(
            user_id=user_id,
            conversation_id=conversation_id,
            after_seq=after_seq,
            limit=limit + 1,
            sender=sender,
        )
        return Response(first_page(paginator, request, rows[:limit], more=len(rows) > limit))


_TIME = serializers.DateTimeField()


def first_page(
    paginator: SeqPagination, request: Request, rows: list[tuple[Any, ...]], *, more: bool
) -> dict[str, Any]:
    """The first page of entries as ``SeqPagination`` and ``EntrySerializer`` render it: no
    previous page, and a next cursor positioned at the last entry when more follow."""
    next_link = None
    if more:
        paginator.base_url = request.build_absolute_uri()
        # The position DRF would put in it: the last entry's seq (unique, so offset 0).
        next_link = paginator.encode_cursor(Cursor(offset=0, reverse=False, position=rows[-1][1]))
    return {
        "next": next_link,
        "previous": None,
        "results": [
            {
                "id": str(entry_id),
                "seq": seq,
                "sender": sender,
                "content": content,
                "thread_id": None if thread_id is None else str(thread_id),
                "created_at": _TIME.to_representation(created_at),
                "delivered_at": None
                if delivered_at is None
                else _TIME.to_representation(delivered_at),
            }
            for entry_id, seq, sender, content, thread_id, created_at, delivered_at in rows
        ],
    }


class ConversationClearView(APIView):
    """Delete the entries and cancel the threads of a conversation."""

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "ConversationClearOutput"

        conversation_id = serializers.UUIDField(source="conversation.id")
        deleted_entries = serializers.IntegerField()
        untracked_thread_ids = serializers.ListField(child=serializers.UUIDField())

    @extend_schema(
        tags=TAG,
        operation_id="conversation_clear",
        summary="Clear a conversation",
        request=None,
        responses={
            200: OutputSerializer,
            **_errors(not_found="Unknown conversation.", conflict="conversation_busy."),
        },
    )
    @idempotent
    def post(self, request: Request, conversation_id: UUID) -> Response:
        result = services.conversation_clear(
            user_id=request_user_id(request), conversation_id=conversation_id
        )
        return Response(self.OutputSerializer(result).data)

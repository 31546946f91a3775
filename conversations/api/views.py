"""One APIView per operation: validate, call one service or selector, serialise."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import request_user_id
from conversations import selectors, services
from conversations.api.serializers import ConversationSerializer, EntrySerializer, ThreadSerializer
from conversations.models import BusyPolicy
from ironclaw_site.api.cursor_pagination import (
    NewestFirstPagination,
    SeqPagination,
    page_serializer,
)
from ironclaw_site.api.fields import TextField
from ironclaw_site.api.schema import ErrorSerializer

TAG = ["conversations"]
THREAD_TAG = ["threads"]


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
        request=InputSerializer,
        responses={201: ConversationSerializer, **_errors(bad_request="A field is invalid.")},
    )
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
        request=InputSerializer,
        responses={
            200: ConversationSerializer,
            **_errors(bad_request="Unknown policy.", not_found="Unknown or another tenant's."),
        },
    )
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
    class FilterSerializer(serializers.Serializer):
        after_seq = serializers.IntegerField(required=False, min_value=0)

    @extend_schema(
        tags=TAG,
        operation_id="conversation_entries",
        parameters=[
            OpenApiParameter("after_seq", int, description="Only entries with a larger seq."),
            OpenApiParameter("limit", int, description="Page size."),
            OpenApiParameter("cursor", str, description="Opaque cursor from next/previous."),
        ],
        responses={
            200: page_serializer("EntryPage", EntrySerializer(many=True)),
            **_errors(
                bad_request="after_seq or cursor is invalid (details name it).",
                not_found="Unknown conversation.",
            ),
        },
    )
    def get(self, request: Request, conversation_id: UUID) -> Response:
        filters = _query_params(self.FilterSerializer, request)
        entries = selectors.entry_list(
            user_id=request_user_id(request),
            conversation_id=conversation_id,
            after_seq=filters.get("after_seq"),
        )
        paginator = SeqPagination()
        page = paginator.paginate_queryset(entries, request, view=self)
        return paginator.get_paginated_response(EntrySerializer(page, many=True).data)


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
        request=None,
        responses={
            200: OutputSerializer,
            **_errors(not_found="Unknown conversation.", conflict="conversation_busy."),
        },
    )
    def post(self, request: Request, conversation_id: UUID) -> Response:
        result = services.conversation_clear(
            user_id=request_user_id(request), conversation_id=conversation_id
        )
        return Response(self.OutputSerializer(result).data)


class ThreadDetailView(APIView):
    @extend_schema(
        tags=THREAD_TAG,
        operation_id="thread_get",
        responses={200: ThreadSerializer, **_errors(not_found="Unknown thread.")},
    )
    def get(self, request: Request, thread_id: UUID) -> Response:
        thread = selectors.thread_get(user_id=request_user_id(request), thread_id=thread_id)
        return Response(ThreadSerializer(thread).data)


class LeaseInputSerializer(serializers.Serializer):
    worker_id = TextField(max_length=255)
    lease_seconds = serializers.IntegerField(required=False, min_value=1)


class ThreadClaimView(APIView):
    """Take the thread's lease: created/waiting/suspended -> running."""

    InputSerializer = LeaseInputSerializer

    @extend_schema(
        tags=THREAD_TAG,
        operation_id="thread_claim",
        request=LeaseInputSerializer,
        responses={
            200: ThreadSerializer,
            **_errors(
                bad_request="A field is invalid.",
                not_found="Unknown thread.",
                conflict="thread_not_claimable: leased by another worker, cancelled or ended.",
            ),
        },
    )
    def post(self, request: Request, thread_id: UUID) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        thread = services.thread_claim(
            user_id=request_user_id(request), thread_id=thread_id, **data.validated_data
        )
        return Response(ThreadSerializer(thread).data)


class ThreadHeartbeatView(APIView):
    """Extend the lease; the response's cancel_requested tells the engine to stop."""

    InputSerializer = LeaseInputSerializer

    @extend_schema(
        tags=THREAD_TAG,
        operation_id="thread_heartbeat",
        request=LeaseInputSerializer,
        responses={
            200: ThreadSerializer,
            **_errors(
                bad_request="A field is invalid.",
                not_found="Unknown thread.",
                conflict="lease_not_held.",
            ),
        },
    )
    def post(self, request: Request, thread_id: UUID) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        thread = services.thread_lease_renew(
            user_id=request_user_id(request), thread_id=thread_id, **data.validated_data
        )
        return Response(ThreadSerializer(thread).data)


class ThreadSuspendView(APIView):
    """The lease holder parks the thread (running -> suspended); the next message resumes it."""

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "ThreadSuspendInput"

        worker_id = TextField(max_length=255)

    @extend_schema(
        tags=THREAD_TAG,
        operation_id="thread_suspend",
        request=InputSerializer,
        responses={
            200: ThreadSerializer,
            **_errors(
                bad_request="worker_id is invalid.",
                not_found="Unknown thread.",
                conflict="lease_not_held.",
            ),
        },
    )
    def post(self, request: Request, thread_id: UUID) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        thread = services.thread_suspend(
            user_id=request_user_id(request), thread_id=thread_id, **data.validated_data
        )
        return Response(ThreadSerializer(thread).data)


class ThreadInboxView(APIView):
    """Take the thread's undelivered user messages (each is returned once)."""

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "ThreadInboxInput"

        worker_id = TextField(max_length=255)

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "ThreadInboxOutput"

        entries = EntrySerializer(many=True)

    @extend_schema(
        tags=THREAD_TAG,
        operation_id="thread_inbox_take",
        request=InputSerializer,
        responses={
            200: OutputSerializer,
            **_errors(
                bad_request="worker_id is invalid.",
                not_found="Unknown thread.",
                conflict="lease_not_held.",
            ),
        },
    )
    def post(self, request: Request, thread_id: UUID) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        entries = services.thread_inbox_take(
            user_id=request_user_id(request), thread_id=thread_id, **data.validated_data
        )
        return Response(self.OutputSerializer({"entries": entries}).data)


class ThreadOutcomeView(APIView):
    """Record how the thread's run ended; late messages come back as a follow-up thread."""

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "ThreadOutcomeInput"

        class GateSerializer(serializers.Serializer):
            name = TextField(max_length=255)
            action = TextField(max_length=1000)

        kind = serializers.ChoiceField(choices=list(services.OUTCOME_KINDS))
        response = TextField(
            required=False, allow_null=True, allow_blank=True, trim_whitespace=False
        )
        error = TextField(required=False, allow_null=True, trim_whitespace=False)
        gate = GateSerializer(required=False, allow_null=True)
        worker_id = TextField(max_length=255)

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "ThreadOutcomeOutput"

        thread = ThreadSerializer()
        follow_up_thread = ThreadSerializer(source="follow_up", allow_null=True)
        entries = EntrySerializer(many=True)

    @extend_schema(
        tags=THREAD_TAG,
        operation_id="thread_outcome_record",
        request=InputSerializer,
        responses={
            200: OutputSerializer,
            **_errors(
                bad_request="A field is invalid (failed needs error, gate_paused needs gate).",
                not_found="Unknown thread.",
                conflict="outcome_already_recorded, lease_not_held or invalid_thread_transition.",
                too_large="response or error over CONVERSATION_MAX_MESSAGE_BYTES.",
            ),
        },
    )
    def post(self, request: Request, thread_id: UUID) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        gate = values.get("gate") or {}
        outcome = services.ThreadOutcome(
            kind=values["kind"],
            response=values.get("response"),
            error=values.get("error"),
            gate_name=gate.get("name"),
            gate_action=gate.get("action"),
        )
        result = services.thread_outcome_record(
            user_id=request_user_id(request),
            thread_id=thread_id,
            outcome=outcome,
            worker_id=values["worker_id"],
        )
        return Response(self.OutputSerializer(result).data)

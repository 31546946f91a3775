"""Thread endpoints for engines: one APIView per operation."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import request_tenant_or_any, request_user_id
from accounts.idempotency import idempotent, idempotent_call, idempotent_run
from conversations import selectors, services
from conversations.api import examples
from conversations.api.serializers import EntrySerializer, ThreadSerializer, UsageSerializer
from conversations.api.views import MAX_WAIT_SECONDS, THREAD_TAG, _errors
from core.api.fields import TextField
from core.api.schema import IDEMPOTENCY_KEY_PARAMETER
from core.notify import ANY, THREADS_CHANNEL, client_gone, wait_for

# 409 of the operations that lock the thread row itself (claim, heartbeat, inbox, next).
THREAD_BUSY = (
    "thread_busy: its row lock was not granted within CONVERSATION_LOCK_TIMEOUT_MS; retry."
)


def _usage(data: dict[str, Any] | None) -> services.ThreadUsage | None:
    if not data:
        return None
    return services.ThreadUsage(
        steps=data["steps"],
        input_tokens=data["input_tokens"],
        output_tokens=data["output_tokens"],
        cost_usd=data["cost_usd"],
        model_ms=data["model_ms"],
    )


class ThreadDetailView(APIView):
    @extend_schema(
        tags=THREAD_TAG,
        operation_id="thread_get",
        examples=[examples.THREAD_RESPONSE],
        summary="Read a thread",
        responses={200: ThreadSerializer, **_errors(not_found="Unknown thread.")},
    )
    def get(self, request: Request, thread_id: UUID) -> Response:
        thread = selectors.thread_get(user_id=request_user_id(request), thread_id=thread_id)
        return Response(ThreadSerializer(thread).data)


class LeaseInputSerializer(serializers.Serializer):
    worker_id = TextField(max_length=255)
    lease_seconds = serializers.IntegerField(required=False, min_value=1)


def _lease_epoch_field() -> serializers.IntegerField:
    return serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=2**31 - 1,
        help_text="The `claim_count` the claim answered with. Given, the write is refused with "
        "409 `lease_lost` once anyone has claimed the thread since (the lease lapsed and was "
        "taken over), even under the same worker_id.",
    )


class HeartbeatInputSerializer(LeaseInputSerializer):
    usage = UsageSerializer(required=False, help_text="Usage since the previous report.")
    lease_epoch = _lease_epoch_field()


class ThreadNextView(APIView):
    """Claim the oldest thread waiting for an engine, with its inbox; 204 when there is none.

    A service key without X-User-Id serves every tenant (the response names the thread's
    tenant). ``wait_seconds`` long-polls without holding a database connection.
    """

    serves_any_tenant = True

    class InputSerializer(LeaseInputSerializer):
        class Meta:
            ref_name = "ThreadNextInput"

        wait_seconds = serializers.FloatField(
            required=False, min_value=0, max_value=MAX_WAIT_SECONDS, default=0
        )

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "ThreadNextOutput"

        user_id = serializers.CharField(source="thread.user_id")
        thread = ThreadSerializer()
        inbox = EntrySerializer(many=True)

    @extend_schema(
        tags=THREAD_TAG,
        operation_id="thread_next",
        summary="Claim the oldest thread waiting for an engine",
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
        request=InputSerializer,
        responses={
            200: OutputSerializer,
            204: OpenApiResponse(description="No thread is waiting (after wait_seconds)."),
            **_errors(bad_request="A field is invalid.", conflict=THREAD_BUSY),
        },
    )
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        tenant = request_tenant_or_any(request)

        def claim() -> Response | None:
            claimed = services.thread_claim_next(
                user_id=tenant,
                worker_id=values["worker_id"],
                lease_seconds=values.get("lease_seconds"),
            )
            return None if claimed is None else Response(self.OutputSerializer(claimed).data)

        # With a key, each check is a transaction of its own with the key's row: only the check
        # that claims keeps it, and a repeat after a lost answer gets the same thread back.
        call = idempotent_call(request)

        def check() -> Response | None:
            return claim() if call is None else idempotent_run(call, claim)

        # An engine that died mid-poll must not be handed a thread it will never run (it would
        # sit leased until the lease ran out).
        answered = wait_for(
            THREADS_CHANNEL,
            tenant or ANY,
            timeout=values["wait_seconds"],
            check=check,
            abandoned=client_gone(request),
        )
        if answered is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        return answered


class ThreadClaimView(APIView):
    """Take the thread's lease: created/waiting/suspended -> running."""

    InputSerializer = LeaseInputSerializer

    @extend_schema(
        tags=THREAD_TAG,
        operation_id="thread_claim",
        summary="Claim a thread's lease",
        request=LeaseInputSerializer,
        responses={
            200: ThreadSerializer,
            **_errors(
                bad_request="A field is invalid.",
                not_found="Unknown thread.",
                conflict="thread_not_claimable: leased by another worker, cancelled or ended; "
                f"{THREAD_BUSY}",
            ),
        },
    )
    @idempotent
    def post(self, request: Request, thread_id: UUID) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        thread = services.thread_claim(
            user_id=request_user_id(request), thread_id=thread_id, **data.validated_data
        )
        return Response(ThreadSerializer(thread).data)


class ThreadHeartbeatView(APIView):
    """Extend the lease (and add usage since the last report); the response's cancel_requested
    tells the engine to stop."""

    InputSerializer = HeartbeatInputSerializer

    @extend_schema(
        tags=THREAD_TAG,
        operation_id="thread_heartbeat",
        summary="Renew a thread's lease",
        request=HeartbeatInputSerializer,
        responses={
            200: ThreadSerializer,
            **_errors(
                bad_request="A field is invalid.",
                not_found="Unknown thread.",
                conflict=f"lease_not_held, lease_lost; {THREAD_BUSY}",
            ),
        },
    )
    @idempotent
    def post(self, request: Request, thread_id: UUID) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        usage = _usage(values.pop("usage", None))
        thread = services.thread_lease_renew(
            user_id=request_user_id(request), thread_id=thread_id, usage=usage, **values
        )
        return Response(ThreadSerializer(thread).data)


class ThreadSuspendView(APIView):
    """The lease holder parks the thread (running -> suspended); the next message resumes it."""

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "ThreadSuspendInput"

        worker_id = TextField(max_length=255)
        lease_epoch = _lease_epoch_field()

    @extend_schema(
        tags=THREAD_TAG,
        operation_id="thread_suspend",
        summary="Suspend a running thread",
        request=InputSerializer,
        responses={
            200: ThreadSerializer,
            **_errors(
                bad_request="worker_id is invalid.",
                not_found="Unknown thread.",
                conflict="lease_not_held, lease_lost; conversation_busy (lock timeout).",
            ),
        },
    )
    @idempotent
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
        lease_epoch = _lease_epoch_field()

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "ThreadInboxOutput"

        entries = EntrySerializer(many=True)

    @extend_schema(
        tags=THREAD_TAG,
        operation_id="thread_inbox_take",
        summary="Take a thread's undelivered messages",
        request=InputSerializer,
        responses={
            200: OutputSerializer,
            **_errors(
                bad_request="worker_id is invalid.",
                not_found="Unknown thread.",
                conflict=f"lease_not_held, lease_lost; {THREAD_BUSY}",
            ),
        },
    )
    @idempotent
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
        usage = UsageSerializer(required=False, help_text="What the run cost, in total.")
        lease_epoch = _lease_epoch_field()

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "ThreadOutcomeOutput"

        thread = ThreadSerializer()
        follow_up_thread = ThreadSerializer(source="follow_up", allow_null=True)
        entries = EntrySerializer(many=True)

    @extend_schema(
        tags=THREAD_TAG,
        operation_id="thread_outcome_record",
        summary="Record how a thread's run ended",
        request=InputSerializer,
        responses={
            200: OutputSerializer,
            **_errors(
                bad_request="A field is invalid (failed needs error, gate_paused needs gate).",
                not_found="Unknown thread.",
                conflict="outcome_already_recorded, lease_not_held, lease_lost, "
                "invalid_thread_transition or conversation_busy (lock timeout).",
                too_large="response or error over CONVERSATION_MAX_MESSAGE_BYTES.",
            ),
        },
    )
    @idempotent
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
            usage=_usage(values.get("usage")),
            lease_epoch=values.get("lease_epoch"),
        )
        return Response(self.OutputSerializer(result).data)

"""The engine's own endpoints: an external engine checkpoints a thread's state, and publishes its
model's text as it is produced (token deltas), under its lease."""

from __future__ import annotations

from uuid import UUID

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import request_user_id
from conversations import selectors
from conversations.errors import LeaseLost
from conversations.services import LEASE_FENCE_SQL, lease_fence_params
from core.api.fields import TextField
from core.api.schema import ErrorSerializer
from engine.checkpoint import thread_checkpoint_path
from engine.deltas import thread_delta_publish
from workspace.api.serializers import DocumentSerializer
from workspace.errors import WriteFenced
from workspace.services import WriteFence, document_write

# The largest delta text an external engine may send at once, in UTF-8 bytes.
MAX_DELTA_TEXT_BYTES = 64 * 1024


def _lease_epoch_field() -> serializers.IntegerField:
    return serializers.IntegerField(
        min_value=1,
        max_value=2**31 - 1,
        help_text="The `claim_count` the claim answered with.",
    )


class ThreadCheckpointView(APIView):
    """Write the thread's checkpoint (``engine/.runtime/threads/<id>.json``, a runtime document:
    one statement, never versioned or indexed), fenced by the lease's epoch like the built-in
    engine's: once anyone has claimed the thread since, it is a 409 ``lease_lost`` and changes
    nothing."""

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "ThreadCheckpointInput"

        content = TextField(trim_whitespace=False, allow_blank=True)
        worker_id = TextField(max_length=255)
        lease_epoch = _lease_epoch_field()

    @extend_schema(
        tags=["threads"],
        operation_id="thread_checkpoint_write",
        summary="Checkpoint a thread's state under its lease",
        request=InputSerializer,
        responses={
            200: DocumentSerializer,
            400: OpenApiResponse(ErrorSerializer, description="A field is invalid."),
            404: OpenApiResponse(ErrorSerializer, description="Unknown thread."),
            409: OpenApiResponse(
                ErrorSerializer,
                description="lease_lost: the thread was claimed again since this lease's claim.",
            ),
            413: OpenApiResponse(ErrorSerializer, description="Over WORKSPACE_MAX_DOCUMENT_BYTES."),
        },
    )
    def put(self, request: Request, thread_id: UUID) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        user_id = request_user_id(request)
        thread = selectors.thread_get(user_id=user_id, thread_id=thread_id)
        fence = WriteFence(
            LEASE_FENCE_SQL, lease_fence_params(thread.id, values["lease_epoch"], user_id=user_id)
        )
        try:
            document = document_write(
                user_id=user_id,
                path=thread_checkpoint_path(thread.id),
                content=values["content"],
                changed_by=values["worker_id"],
                fence=fence,
            )
        except WriteFenced:
            current = selectors.thread_get(user_id=user_id, thread_id=thread_id)
            raise LeaseLost(
                details={"state": current.state, "lease_epoch": current.claim_count}
            ) from None
        return Response(DocumentSerializer(document).data)


class ThreadDeltasView(APIView):
    """Publish the text a model step has produced so far (a token delta) to whoever listens on
    ``ironclaw_deltas``, as the built-in engine does: under the lease (409 ``lease_lost`` once
    anyone has claimed the thread since), never stored, not idempotency-keyed (a delta sent again
    is harmless). Split into as many notifications as PostgreSQL's 8,000-byte limit takes."""

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "ThreadDeltaInput"

        worker_id = TextField(max_length=255)
        lease_epoch = _lease_epoch_field()
        step = serializers.IntegerField(
            min_value=0,
            max_value=2**31 - 1,
            help_text="The model call the text belongs to (the built-in engine counts from 1).",
        )
        text = TextField(
            trim_whitespace=False,
            allow_blank=True,
            help_text="The step's text from character `offset` on, at most 64 KiB of UTF-8.",
        )
        offset = serializers.IntegerField(
            required=False,
            default=0,
            min_value=0,
            max_value=2**31 - 1,
            help_text="Where `text` starts in the step's text, in characters (Unicode code "
            "points): 0 sends the whole text so far; a listener applies "
            "`buf = buf[:offset] + text`.",
        )

        def validate_text(self, value: str) -> str:
            if len(value.encode(errors="surrogatepass")) > MAX_DELTA_TEXT_BYTES:
                raise serializers.ValidationError(
                    f"At most {MAX_DELTA_TEXT_BYTES} bytes of UTF-8; send the rest with a later "
                    "offset."
                )
            return value

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "ThreadDeltaOutput"

        published = serializers.IntegerField(
            help_text="Notifications sent (0 when ENGINE_DELTA_INTERVAL_MS is 0)."
        )

    @extend_schema(
        tags=["threads"],
        operation_id="thread_delta_publish",
        summary="Publish a model step's text as it is produced",
        request=InputSerializer,
        responses={
            202: OutputSerializer,
            400: OpenApiResponse(ErrorSerializer, description="A field is invalid."),
            404: OpenApiResponse(ErrorSerializer, description="Unknown thread."),
            409: OpenApiResponse(
                ErrorSerializer,
                description="lease_lost: this worker does not hold the lease of that epoch.",
            ),
        },
    )
    def post(self, request: Request, thread_id: UUID) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        published = thread_delta_publish(
            user_id=request_user_id(request), thread_id=thread_id, **data.validated_data
        )
        return Response(
            self.OutputSerializer({"published": published}).data, status=status.HTTP_202_ACCEPTED
        )

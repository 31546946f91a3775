"""The engine's own endpoint: an external engine checkpoints a thread's state under its lease."""

from __future__ import annotations

from uuid import UUID

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
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
from workspace.api.serializers import DocumentSerializer
from workspace.errors import WriteFenced
from workspace.services import WriteFence, document_write


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
        lease_epoch = serializers.IntegerField(
            min_value=1,
            max_value=2**31 - 1,
            help_text="The `claim_count` the claim answered with.",
        )

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
        fence = WriteFence(LEASE_FENCE_SQL, lease_fence_params(thread.id, values["lease_epoch"]))
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

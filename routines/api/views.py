"""Routines REST API: one view per operation; each validates, calls one service or selector and
serialises. Every query is scoped to the request's tenant, so another tenant's routine is a 404.
"""

from __future__ import annotations

from typing import Any, ClassVar
from uuid import UUID

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import request_user_id
from accounts.idempotency import idempotent
from core.api.cursor_pagination import NewestFirstPagination, page_serializer
from core.api.fields import StrictBooleanField, TextField
from core.api.schema import ErrorSerializer
from core.api.views import MethodRoutedView
from routines import selectors, services
from routines.models import FiringState

TAG = ["routines"]
PAGE_PARAMETERS = [
    OpenApiParameter("limit", int, description="Page size."),
    OpenApiParameter("cursor", str, description="Opaque cursor from next/previous."),
]
ERROR_DESCRIPTIONS = {
    400: "A field is invalid (`details` names it): the name is taken, the cron expression is "
    "invalid or finer than a minute, the time zone is unknown, the channel is malformed, the "
    "message is empty or over CONVERSATION_MAX_MESSAGE_BYTES, or the tenant has "
    "ROUTINE_MAX_PER_TENANT routines already (named `cron`).",
    404: "No such routine for this tenant.",
    409: "routine_busy: a scheduler was firing the routine past the lock timeout; retry.",
}


def _errors(*statuses: int) -> dict[int, OpenApiResponse]:
    return {
        code: OpenApiResponse(ErrorSerializer, description=ERROR_DESCRIPTIONS[code])
        for code in statuses
    }


class RoutineSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    cron = serializers.CharField(help_text="Five cron fields, or @hourly, @daily ...")
    timezone = serializers.CharField(help_text="IANA time zone the slots are wall times of.")
    target = serializers.ChoiceField(
        choices=["channel", "goal"],
        help_text="channel: the message goes to the channel's conversation under its busy "
        "policy; goal: each firing starts a new conversation and thread of its own.",
    )
    channel = serializers.CharField(allow_blank=True)
    scope = serializers.CharField(allow_blank=True)
    message = serializers.CharField()
    enabled = serializers.BooleanField()
    next_fire_at = serializers.DateTimeField(allow_null=True)
    last_fire_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class FiringSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    slot = serializers.DateTimeField()
    state = serializers.ChoiceField(choices=FiringState.choices)
    fired_at = serializers.DateTimeField()
    action = serializers.CharField(
        allow_blank=True, help_text="spawned, injected, resumed or queued; empty if not fired."
    )
    conversation_id = serializers.UUIDField(allow_null=True)
    thread_id = serializers.UUIDField(allow_null=True)
    thread_state = serializers.CharField(allow_null=True)
    thread_outcome = serializers.JSONField(allow_null=True)
    detail = serializers.CharField(allow_blank=True)


def _routine_fields(*, partial: bool) -> dict[str, serializers.Field]:
    optional: dict[str, Any] = {"required": False}
    return {
        "name": TextField(max_length=100, required=not partial),
        "cron": TextField(max_length=255, required=not partial),
        "timezone": TextField(max_length=64, **optional),
        "channel": TextField(
            max_length=64, allow_blank=True, allow_null=True, trim_whitespace=False, **optional
        ),
        "scope": TextField(
            max_length=128, allow_blank=True, allow_null=True, trim_whitespace=False, **optional
        ),
        "message": TextField(trim_whitespace=False, required=not partial),
        "enabled": StrictBooleanField(**optional),
    }


def _service_arguments(validated: dict[str, Any]) -> dict[str, Any]:
    # null and "" both mean "no channel" (a goal routine) and "no scope".
    return {
        name: ("" if name in ("channel", "scope") and value is None else value)
        for name, value in validated.items()
    }


class RoutineListView(APIView):
    @extend_schema(
        tags=TAG,
        operation_id="routine_list",
        summary="List routines",
        parameters=PAGE_PARAMETERS,
        responses={
            200: page_serializer("RoutinePage", RoutineSerializer(many=True)),
            **_errors(400),
        },
    )
    def get(self, request: Request) -> Response:
        routines = selectors.routine_list(user_id=request_user_id(request))
        paginator = NewestFirstPagination()
        page = paginator.paginate_queryset(routines, request, view=self)
        return paginator.get_paginated_response(RoutineSerializer(page, many=True).data)


class RoutineCreateView(APIView):
    """Create a routine: its message is sent at every slot of its schedule."""

    InputSerializer = type(
        "RoutineCreateInput", (serializers.Serializer,), _routine_fields(partial=False)
    )

    @extend_schema(
        tags=TAG,
        operation_id="routine_create",
        summary="Create a routine",
        request=InputSerializer,
        responses={201: RoutineSerializer, **_errors(400)},
    )
    @idempotent
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        routine = services.routine_create(
            user_id=request_user_id(request), **_service_arguments(data.validated_data)
        )
        return Response(RoutineSerializer(routine).data, status=status.HTTP_201_CREATED)


class RoutineDetailView(APIView):
    @extend_schema(
        tags=TAG,
        operation_id="routine_get",
        summary="Read a routine",
        responses={200: RoutineSerializer, **_errors(404)},
    )
    def get(self, request: Request, routine_id: UUID) -> Response:
        routine = selectors.routine_get(user_id=request_user_id(request), routine_id=routine_id)
        return Response(RoutineSerializer(routine).data)


class RoutineUpdateView(APIView):
    """Change some of a routine's fields. A new schedule, or enabling, sets the next slot to the
    first one after now (slots missed while disabled do not fire); disabling clears it."""

    InputSerializer = type(
        "RoutineUpdateInput", (serializers.Serializer,), _routine_fields(partial=True)
    )

    @extend_schema(
        tags=TAG,
        operation_id="routine_update",
        summary="Update a routine",
        request=InputSerializer,
        responses={200: RoutineSerializer, **_errors(400, 404, 409)},
    )
    def patch(self, request: Request, routine_id: UUID) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        routine = services.routine_update(
            user_id=request_user_id(request),
            routine_id=routine_id,
            **_service_arguments(data.validated_data),
        )
        return Response(RoutineSerializer(routine).data)


class RoutineDeleteView(APIView):
    @extend_schema(
        tags=TAG,
        operation_id="routine_delete",
        summary="Delete a routine and its firings",
        responses={204: None, **_errors(404, 409)},
    )
    def delete(self, request: Request, routine_id: UUID) -> Response:
        services.routine_delete(user_id=request_user_id(request), routine_id=routine_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class RoutineView(MethodRoutedView):
    operations: ClassVar[dict[str, type[APIView]]] = {
        "get": RoutineDetailView,
        "patch": RoutineUpdateView,
        "delete": RoutineDeleteView,
    }
    get = RoutineDetailView.get
    patch = RoutineUpdateView.patch
    delete = RoutineDeleteView.delete


class RoutinesView(MethodRoutedView):
    operations: ClassVar[dict[str, type[APIView]]] = {
        "get": RoutineListView,
        "post": RoutineCreateView,
    }
    get = RoutineListView.get
    post = RoutineCreateView.post


class NewestSlotFirstPagination(NewestFirstPagination):
    ordering = ("-slot", "-id")


class RoutineFiringListView(APIView):
    @extend_schema(
        tags=TAG,
        operation_id="routine_firing_list",
        summary="List a routine's firings, newest slot first, with their threads' outcomes",
        parameters=PAGE_PARAMETERS,
        responses={
            200: page_serializer("RoutineFiringPage", FiringSerializer(many=True)),
            **_errors(400, 404),
        },
    )
    def get(self, request: Request, routine_id: UUID) -> Response:
        user_id = request_user_id(request)
        selectors.routine_check(user_id=user_id, routine_id=routine_id)
        firings = selectors.firing_list(user_id=user_id, routine_id=routine_id)
        paginator = NewestSlotFirstPagination()
        page = paginator.paginate_queryset(firings, request, view=self)
        return paginator.get_paginated_response(FiringSerializer(page, many=True).data)

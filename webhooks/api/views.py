"""One APIView per operation on webhooks and their deliveries, scoped to the request's tenant."""

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
from webhooks import selectors, services
from webhooks.api.serializers import (
    DeliveryDetailSerializer,
    DeliverySerializer,
    WebhookSerializer,
)
from webhooks.models import WebhookEvent

TAG = ["webhooks"]
PAGE_PARAMETERS = [
    OpenApiParameter("limit", int, description="Page size."),
    OpenApiParameter("cursor", str, description="Opaque cursor from next/previous."),
]


def _errors(**descriptions: str) -> dict[int, OpenApiResponse]:
    codes = {"bad_request": 400, "not_found": 404, "conflict": 409}
    return {
        codes[name]: OpenApiResponse(ErrorSerializer, description=text)
        for name, text in descriptions.items()
    }


class _EventsField(serializers.ListField):
    """The events a webhook wants; known names and no repeats are checked by the service, whose
    400 names ``events``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(child=TextField(max_length=64), max_length=16, **kwargs)


class WebhookCreateView(APIView):
    """Create a webhook; the answer holds its signing secret, shown this once."""

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "WebhookCreateInput"

        url = TextField(help_text="http(s) URL of the receiver.")
        events = _EventsField(help_text=f"Any of: {', '.join(WebhookEvent.values)}.")
        description = TextField(required=False, allow_blank=True, max_length=255)

    class OutputSerializer(WebhookSerializer):
        class Meta:
            ref_name = "WebhookCreateOutput"

        secret = serializers.CharField(
            help_text="whsec_<base64>: verifies the webhook-signature header. Not shown again."
        )

    @extend_schema(
        tags=TAG,
        operation_id="webhook_create",
        summary="Create a webhook",
        request=InputSerializer,
        responses={
            201: OutputSerializer,
            **_errors(bad_request="A field is invalid, or the tenant has too many (url)."),
        },
    )
    @idempotent
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        created = services.webhook_create(user_id=request_user_id(request), **data.validated_data)
        body = {**WebhookSerializer(created.webhook).data, "secret": created.secret}
        return Response(body, status=status.HTTP_201_CREATED)


class WebhookListView(APIView):
    @extend_schema(
        tags=TAG,
        operation_id="webhook_list",
        summary="List webhooks",
        parameters=PAGE_PARAMETERS,
        responses={
            200: page_serializer("WebhookPage", WebhookSerializer(many=True)),
            **_errors(bad_request="limit or cursor is invalid."),
        },
    )
    def get(self, request: Request) -> Response:
        webhooks = selectors.webhook_list(user_id=request_user_id(request))
        paginator = NewestFirstPagination()
        page = paginator.paginate_queryset(webhooks, request, view=self)
        return paginator.get_paginated_response(WebhookSerializer(page, many=True).data)


class _WebhookUpdateInput(serializers.Serializer):
    class Meta:
        ref_name = "WebhookUpdateInput"

    url = TextField(required=False)
    events = _EventsField(required=False)
    description = TextField(required=False, allow_blank=True, max_length=255)
    enabled = StrictBooleanField(
        required=False,
        help_text="true enables it again and resets consecutive_failures and the reason.",
    )


class WebhookDetailView(APIView):
    @extend_schema(
        tags=TAG,
        operation_id="webhook_get",
        summary="Read a webhook",
        responses={200: WebhookSerializer, **_errors(not_found="Unknown or another tenant's.")},
    )
    def get(self, request: Request, webhook_id: UUID) -> Response:
        webhook = selectors.webhook_get(user_id=request_user_id(request), webhook_id=webhook_id)
        return Response(WebhookSerializer(webhook).data)


class WebhookUpdateView(APIView):
    @extend_schema(
        tags=TAG,
        operation_id="webhook_update",
        summary="Change a webhook's url, events, description or enabled",
        request=_WebhookUpdateInput,
        responses={
            200: WebhookSerializer,
            **_errors(
                bad_request="A field is invalid (details name it).",
                not_found="Unknown or another tenant's.",
            ),
        },
    )
    def patch(self, request: Request, webhook_id: UUID) -> Response:
        data = _WebhookUpdateInput(data=request.data)
        data.is_valid(raise_exception=True)
        webhook = services.webhook_update(
            user_id=request_user_id(request), webhook_id=webhook_id, **data.validated_data
        )
        return Response(WebhookSerializer(webhook).data)


class WebhookDeleteView(APIView):
    @extend_schema(
        tags=TAG,
        operation_id="webhook_delete",
        summary="Delete a webhook with its deliveries",
        responses={204: None, **_errors(not_found="Unknown or another tenant's.")},
    )
    def delete(self, request: Request, webhook_id: UUID) -> Response:
        services.webhook_delete(user_id=request_user_id(request), webhook_id=webhook_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class WebhooksView(MethodRoutedView):
    operations: ClassVar[dict[str, type[APIView]]] = {
        "get": WebhookListView,
        "post": WebhookCreateView,
    }
    get = WebhookListView.get
    post = WebhookCreateView.post


class WebhookView(MethodRoutedView):
    operations: ClassVar[dict[str, type[APIView]]] = {
        "get": WebhookDetailView,
        "patch": WebhookUpdateView,
        "delete": WebhookDeleteView,
    }
    get = WebhookDetailView.get
    patch = WebhookUpdateView.patch
    delete = WebhookDeleteView.delete


class DeliveryListView(APIView):
    @extend_schema(
        tags=TAG,
        operation_id="webhook_delivery_list",
        summary="List a webhook's deliveries, newest first",
        parameters=PAGE_PARAMETERS,
        responses={
            200: page_serializer("WebhookDeliveryPage", DeliverySerializer(many=True)),
            **_errors(bad_request="limit or cursor is invalid.", not_found="Unknown webhook."),
        },
    )
    def get(self, request: Request, webhook_id: UUID) -> Response:
        deliveries = selectors.delivery_list(
            user_id=request_user_id(request), webhook_id=webhook_id
        )
        paginator = NewestFirstPagination()
        page = paginator.paginate_queryset(deliveries, request, view=self)
        return paginator.get_paginated_response(DeliverySerializer(page, many=True).data)


class DeliveryDetailView(APIView):
    @extend_schema(
        tags=TAG,
        operation_id="webhook_delivery_get",
        summary="Read a delivery with its attempts",
        responses={
            200: DeliveryDetailSerializer,
            **_errors(not_found="Unknown webhook or delivery."),
        },
    )
    def get(self, request: Request, webhook_id: UUID, delivery_id: UUID) -> Response:
        delivery = selectors.delivery_get(
            user_id=request_user_id(request), webhook_id=webhook_id, delivery_id=delivery_id
        )
        return Response(DeliveryDetailSerializer(delivery).data)


class DeliveryRedeliverView(APIView):
    """Send a delivered or failed delivery again, now, with the same webhook-id."""

    @extend_schema(
        tags=TAG,
        operation_id="webhook_delivery_redeliver",
        summary="Redeliver a delivery",
        request=None,
        responses={
            202: DeliverySerializer,
            **_errors(
                not_found="Unknown webhook or delivery.",
                conflict="delivery_pending: it has a job already (details: next_attempt_at).",
            ),
        },
    )
    @idempotent
    def post(self, request: Request, webhook_id: UUID, delivery_id: UUID) -> Response:
        delivery = services.webhook_delivery_redeliver(
            user_id=request_user_id(request), webhook_id=webhook_id, delivery_id=delivery_id
        )
        return Response(DeliverySerializer(delivery).data, status=status.HTTP_202_ACCEPTED)

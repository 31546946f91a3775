from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import ApiPrincipal


class MeView(APIView):
    """Who the caller is: the tenant the request acts for and the key it used."""

    class OutputSerializer(serializers.Serializer):
        user_id = serializers.CharField()
        key_name = serializers.CharField()
        service = serializers.BooleanField()

        class Meta:
            ref_name = "MeOutput"

    @extend_schema(responses=OutputSerializer, operation_id="me", summary="Who the caller is")
    def get(self, request: Request) -> Response:
        principal: ApiPrincipal = request.user  # type: ignore[assignment]
        data = {
            "user_id": principal.user_id,
            "key_name": principal.key_name,
            "service": principal.is_service,
        }
        return Response(self.OutputSerializer(data).data)

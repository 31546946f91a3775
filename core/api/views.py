from __future__ import annotations

from typing import Any

from rest_framework import exceptions
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.views import APIView


class ApiNotFoundView(APIView):
    """Catch-all under ``/api/`` so unknown routes get the JSON error shape, not an HTML page."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]
    schema = None

    def _not_found(self, request: Request, *args: Any, **kwargs: Any) -> None:
        raise exceptions.NotFound(f"No API route matches {request.path!r}.")

    get = post = put = patch = delete = _not_found

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from django.http import HttpRequest, HttpResponseBase
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


class MethodRoutedView(APIView):
    """One URL serving several operations, each an ``APIView`` of its own (``operations``, by
    HTTP method): Django resolves a URL to one view whatever the method, so this one hands
    Django's request, not yet wrapped by DRF, to the operation's view, which then authenticates,
    parses and answers as if the URL had routed to it. HEAD goes to the GET operation.

    Subclasses also lend themselves the operations' handlers (``get = DetailView.get``): the
    OpenAPI generator and the Allow header read a URL's methods from its view's handlers. (No
    docstring on a subclass: the schema would show it as the operations' description.)"""

    operations: ClassVar[dict[str, type[APIView]]] = {}
    _operation_views: ClassVar[dict[str, Callable[..., HttpResponseBase]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._operation_views = {method: view.as_view() for method, view in cls.operations.items()}

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        method = (request.method or "").lower()
        operation = self._operation_views.get("get" if method == "head" else method)
        if operation is None:
            # OPTIONS, and the 405 for any other method, in the API's error shape.
            return super().dispatch(request, *args, **kwargs)
        return operation(request, *args, **kwargs)

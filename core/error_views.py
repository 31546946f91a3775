"""Django's error pages in the API's JSON shape, for errors raised outside DRF views.

Django answers these itself (a suspicious request, a route nothing matches, an error in the
admin) with HTML pages by default; clients of this service parse JSON.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.csrf import csrf_failure as django_csrf_failure
from django.views.decorators.csrf import csrf_exempt

from core.api.exceptions import error_body


def bad_request(request: HttpRequest, exception: Exception) -> JsonResponse:
    return JsonResponse(
        error_body("bad_request", "The request could not be processed."), status=400
    )


def permission_denied(request: HttpRequest, exception: Exception) -> JsonResponse:
    return JsonResponse(error_body("permission_denied", "Permission denied."), status=403)


def page_not_found(request: HttpRequest, exception: Exception) -> JsonResponse:
    return JsonResponse(error_body("not_found", f"Nothing matches {request.path!r}."), status=404)


def server_error(request: HttpRequest) -> JsonResponse:
    return JsonResponse(error_body("internal_error", "An unexpected error occurred."), status=500)


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """A refused CSRF check: the admin's own page for a browser in the admin, JSON elsewhere."""
    if request.path.startswith("/admin/"):
        return django_csrf_failure(request, reason)
    return JsonResponse(
        error_body("csrf_failed", f"Cross-site request refused: {reason}"), status=403
    )


def method_not_allowed(request: HttpRequest, allowed: list[str]) -> JsonResponse:
    response = JsonResponse(
        error_body(
            "method_not_allowed",
            f"{request.method} is not allowed on {request.path}; use {', '.join(allowed)}.",
        ),
        status=405,
    )
    response["Allow"] = ", ".join(allowed)
    return response


def get_only(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """A plain view for GET and HEAD (probes, metrics): any other method is a JSON 405, never
    Django's HTML CSRF page (nothing here takes a form, so there is nothing to forge)."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.method not in ("GET", "HEAD"):
            return method_not_allowed(request, ["GET", "HEAD"])
        return view(request, *args, **kwargs)

    return csrf_exempt(wrapped)

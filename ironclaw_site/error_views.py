"""Django's error pages in the API's JSON shape, for errors raised outside DRF views.

Django answers these itself (a suspicious request, a route nothing matches, an error in the
admin) with HTML pages by default; clients of this service parse JSON.
"""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse

from ironclaw_site.api.exceptions import error_body


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

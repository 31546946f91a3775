from __future__ import annotations

import logging
from collections.abc import Callable

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse

from ironclaw_site.api.exceptions import database_unavailable_response, error_body
from ironclaw_site.database_breaker import failing_fast

logger = logging.getLogger(__name__)


class DatabaseUnavailableMiddleware:
    """Answer 503 JSON when the database cannot be reached, and JSON 500s under ``/api/``.

    DRF views handle their own errors; this catches what escapes elsewhere (the admin, a session
    lookup, ``/readyz``) so a database outage is never a 500 with a traceback. While the database
    is known to be down, a request's connection attempt fails at once (the breaker in
    ``ironclaw_site.database_breaker``), so that 503 takes milliseconds, not the pool timeout.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        with failing_fast():
            return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, OperationalError | InterfaceError):
            logger.warning("database unavailable: %s", exception)
            return database_unavailable_response()
        if request.path.startswith("/api/"):
            logger.exception("unhandled error in %s", request.path, exc_info=exception)
            return JsonResponse(
                error_body("internal_error", "An unexpected error occurred."), status=500
            )
        return None

from __future__ import annotations

import logging
from collections.abc import Callable

from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponse, JsonResponse

from ironclaw_site.api.exceptions import (
    database_unavailable_response,
    error_body,
    is_database_unavailable,
)
from ironclaw_site.database_breaker import failing_fast

logger = logging.getLogger(__name__)


class UnknownHostMiddleware:
    """Refuse a ``Host`` outside ALLOWED_HOSTS with a JSON 400 and one warning line.

    Left to Django, the first ``request.get_host()`` raises DisallowedHost deep in another
    middleware: an HTML 400 and an ERROR log with a full traceback for every probe a scanner sends.
    First in MIDDLEWARE, so nothing runs for a host this site does not serve.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            request.get_host()
        except DisallowedHost as error:
            logger.warning("refused a request for an unknown host: %s", error)
            refused = JsonResponse(
                error_body(
                    "unknown_host",
                    "This server does not serve the host named in the Host header.",
                ),
                status=400,
            )
            # Django's handler would log the 400 again ("Bad Request: <path>"); this is the line.
            refused._has_been_logged = True  # type: ignore[attr-defined]
            return refused
        return self.get_response(request)


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
        if is_database_unavailable(exception):
            logger.warning("database unavailable: %s", exception)
            return database_unavailable_response()
        if request.path.startswith("/api/"):
            logger.exception("unhandled error in %s", request.path, exc_info=exception)
            return JsonResponse(
                error_body("internal_error", "An unexpected error occurred."), status=500
            )
        return None

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponse, JsonResponse

from core.api.exceptions import (
    database_unavailable_response,
    error_body,
    is_database_unavailable,
)
from core.database_breaker import failing_fast
from core.log_context import REQUEST_ID_HEADER, log_context, request_id_accept
from core.metrics import REQUEST_DURATION, database_unavailable_record, method_label
from core.path_bytes import PATH_NOT_UTF8, PATH_NOT_UTF8_PROBLEM

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("ironclaw_site.access")

# The route label of a request that matched no URL pattern (a 404, or refused before routing).
UNMATCHED_ROUTE = "unmatched"


class RequestLogMiddleware:
    """Give each request an id, log one access line for it and time it by route.

    The id is the client's ``X-Request-Id`` when it is sane (see ``request_id_accept``), else a new
    one; it is returned in the response's ``X-Request-Id`` and every log line written during the
    request (and in the jobs it enqueues) carries it. First in MIDDLEWARE, so the time covers the
    others and even a refused host gets its line. Reads nothing from the database: the tenant is
    what authentication noted, never ``request.user``, which would load a session.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = request_id_accept(request.headers.get(REQUEST_ID_HEADER))
        # For lines Django writes about this request after its log context has ended.
        request.request_id = request_id  # type: ignore[attr-defined]
        started = time.perf_counter()
        with log_context(request_id=request_id):
            response = self.get_response(request)
            duration = time.perf_counter() - started
            match = request.resolver_match
            # The pattern, never the path: one series per route, whatever the ids in the URL.
            route = (match.route or match.view_name) if match else UNMATCHED_ROUTE
            REQUEST_DURATION.labels(
                route=route, method=method_label(request.method), status=str(response.status_code)
            ).observe(duration)
            duration_ms = round(duration * 1000, 1)
            access_logger.info(
                "%s %s %s %.1f ms",
                request.method,
                request.path,
                response.status_code,
                duration_ms,
                extra={
                    "method": request.method,
                    "route": route,
                    "status": response.status_code,
                    "duration_ms": duration_ms,
                },
            )
        response[REQUEST_ID_HEADER] = request_id
        return response


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


class PathNotUtf8Middleware:
    """Refuse a URL path that is not UTF-8 (as ``path_bytes_checked`` noted) with a JSON 400
    naming the path, on every route, before any view could read its lossy text."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.META.get(PATH_NOT_UTF8):
            return JsonResponse(
                error_body(
                    "invalid_path",
                    f"Invalid path: the URL path {PATH_NOT_UTF8_PROBLEM}.",
                    {"path": [PATH_NOT_UTF8_PROBLEM]},
                ),
                status=400,
            )
        return self.get_response(request)


class DatabaseUnavailableMiddleware:
    """Answer 503 JSON when the database cannot be reached, and JSON 500s under ``/api/``.

    DRF views handle their own errors; this catches what escapes elsewhere (the admin, a session
    lookup, ``/readyz``) so a database outage is never a 500 with a traceback. While the database
    is known to be down, a request's connection attempt fails at once (the breaker in
    ``core.database_breaker``), so that 503 takes milliseconds, not the pool timeout.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        with failing_fast():
            return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if is_database_unavailable(exception):
            database_unavailable_record(exception)
            logger.warning("database unavailable: %s", exception)
            return database_unavailable_response()
        if request.path.startswith("/api/"):
            logger.exception("unhandled error in %s", request.path, exc_info=exception)
            return JsonResponse(
                error_body("internal_error", "An unexpected error occurred."), status=500
            )
        return None

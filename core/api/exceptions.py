"""One exception handler for the API: every error is ``{"error": {code, message, details}}``."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import Http404, JsonResponse
from procrastinate.exceptions import ConnectorException, UniqueViolation
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_default_handler

from core.errors import ApplicationError, PayloadTooLarge, ServiceUnavailable
from core.metrics import database_unavailable_record

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = "1"


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}}}


def database_unavailable_response() -> JsonResponse:
    error = ServiceUnavailable()
    response = JsonResponse(error_body(error.code, error.message), status=error.status_code)
    response["Retry-After"] = RETRY_AFTER_SECONDS
    return response


def _drf_message_and_details(exc: drf_exceptions.APIException) -> tuple[str, Any]:
    detail = exc.detail
    if isinstance(exc, drf_exceptions.ValidationError):
        # Field errors keep DRF's {field: [messages]} shape so clients can show them per field.
        if isinstance(detail, dict):
            fields = ", ".join(str(name) for name in detail)
            return f"Invalid input: {fields}.", detail
        return "Invalid input.", {"non_field_errors": detail}
    return str(detail), {}


def _answered_out_of_step(error: BaseException | None) -> bool:
    """psycopg's InternalError for a command that got more results than it sent: the server (or
    PgBouncer in front of it) died mid-command and its error arrived with the answer, seen when
    the postmaster was killed behind PgBouncer. The connection is lost, not the statement wrong;
    every other InternalError (an aborted transaction, a server bug) stays a 500."""
    return (
        isinstance(error, psycopg.InternalError)
        and str(error).startswith("received ")
        and (" results from command " in str(error))
    )


def is_database_unavailable(exc: BaseException) -> bool:
    """A connection failure (pool timeout, server down or restarting), however it surfaces.

    Django raises its own OperationalError/InterfaceError; a job deferred through Procrastinate's
    Django connector surfaces as Procrastinate's ConnectorException caused by psycopg's error
    (seen when PostgreSQL was killed during a message's defer: it was a 500).
    """
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    if _answered_out_of_step(exc.__cause__):
        return True
    if isinstance(exc, ConnectorException) and not isinstance(exc, UniqueViolation):
        cause = exc.__cause__
        return isinstance(
            cause,
            OperationalError | InterfaceError | psycopg.OperationalError | psycopg.InterfaceError,
        )
    return False


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ApplicationError):
        application = Response(
            error_body(exc.code, exc.message, exc.details), status=exc.status_code
        )
        if exc.retry_after is not None:
            application["Retry-After"] = str(exc.retry_after)
        return application

    if is_database_unavailable(exc):
        # Pool exhausted (PoolTimeout), server down or restarting: the client should retry.
        database_unavailable_record(exc)
        logger.warning("database unavailable: %s", exc)
        unavailable = Response(
            error_body(ServiceUnavailable.code, ServiceUnavailable.default_message), status=503
        )
        unavailable["Retry-After"] = RETRY_AFTER_SECONDS
        return unavailable

    if isinstance(exc, RequestDataTooBig):
        # A body over DATA_UPLOAD_MAX_MEMORY_SIZE, raised while DRF parses it: a 413, not a 500.
        too_large = PayloadTooLarge()
        return Response(error_body(too_large.code, too_large.message), status=413)

    if isinstance(exc, Http404):
        exc = drf_exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = drf_exceptions.PermissionDenied()

    response: Response | None = drf_default_handler(exc, context)
    if response is None or not isinstance(exc, drf_exceptions.APIException):
        return response
    codes = exc.get_codes()
    code = codes if isinstance(codes, str) else exc.default_code
    message, details = _drf_message_and_details(exc)
    response.data = error_body(str(code), message, details)
    return response

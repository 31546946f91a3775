"""The application's error hierarchy.

Services raise these; ``core.api.exceptions.api_exception_handler`` turns each into
``{"error": {"code", "message", "details"}}`` with ``status_code``. Apps subclass them for their
own cases (``ConversationBusy(Conflict)``) instead of inventing new shapes.
"""

from __future__ import annotations

from typing import Any


class ApplicationError(Exception):
    status_code = 400
    code = "bad_request"
    default_message = "The request could not be processed."
    # Seconds a client should wait before retrying, sent as Retry-After; None sends no header.
    retry_after: int | None = None

    def __init__(self, message: str | None = None, *, details: dict[str, Any] | None = None):
        self.message = message or self.default_message
        self.details = details or {}
        super().__init__(self.message)


class InvalidInput(ApplicationError):
    status_code = 400
    code = "invalid"
    default_message = "The request is invalid."


class NotFound(ApplicationError):
    status_code = 404
    code = "not_found"
    default_message = "Not found."


class Conflict(ApplicationError):
    status_code = 409
    code = "conflict"
    default_message = "The request conflicts with the current state."


class Busy(Conflict):
    """A row lock was not granted within its timeout: the same request will likely pass soon."""

    code = "busy"
    default_message = "The resource is busy; retry shortly."
    retry_after = 1


class PayloadTooLarge(ApplicationError):
    status_code = 413
    code = "payload_too_large"
    default_message = "The request body is too large."


class RateLimited(ApplicationError):
    status_code = 429
    code = "rate_limited"
    default_message = "Too many requests; retry after the number of seconds in Retry-After."

    def __init__(
        self, message: str | None = None, *, retry_after: int, details: dict[str, Any] | None = None
    ):
        super().__init__(message, details=details)
        self.retry_after = retry_after


class ServiceUnavailable(ApplicationError):
    status_code = 503
    code = "database_unavailable"
    default_message = "The database is unavailable; retry shortly."
    retry_after = 1

"""The application's error hierarchy.

Services raise these; ``ironclaw_site.api.exceptions.api_exception_handler`` turns each into
``{"error": {"code", "message", "details"}}`` with ``status_code``. Apps subclass them for their
own cases (``ConversationBusy(Conflict)``) instead of inventing new shapes.
"""

from __future__ import annotations

from typing import Any


class ApplicationError(Exception):
    status_code = 400
    code = "bad_request"
    default_message = "The request could not be processed."

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


class PayloadTooLarge(ApplicationError):
    status_code = 413
    code = "payload_too_large"
    default_message = "The request body is too large."


class ServiceUnavailable(ApplicationError):
    status_code = 503
    code = "database_unavailable"
    default_message = "The database is unavailable; retry shortly."

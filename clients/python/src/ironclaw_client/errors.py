"""Typed exceptions for the API's error responses ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

from typing import Any


class IronclawError(Exception):
    """Base of every error this package raises."""


class InvalidArgument(IronclawError, ValueError):
    """Refused by the client before anything was sent: an argument the API cannot take as meant
    (a document path with ``.`` or ``..`` segments, a tenant name with line breaks)."""


class TransportError(IronclawError):
    """The server could not be reached, or the connection broke before an answer arrived."""


class ApiError(IronclawError):
    """An error response. ``code`` is the API's machine-readable code (``thread_not_found``)."""

    def __init__(
        self,
        *,
        status: int,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}
        self.retry_after = retry_after


class ValidationError(ApiError):
    """400: a field or parameter is invalid; ``details`` names it."""


class AuthenticationError(ApiError):
    """401: no key, an unknown key or a revoked key."""


class PermissionDenied(ApiError):
    """403: the key may not do this (a tenant key naming another tenant)."""


class NotFound(ApiError):
    """404: unknown, or another tenant's (the API never confirms that it exists)."""


class Conflict(ApiError):
    """409: the request conflicts with the current state (lease not held, outcome recorded)."""


class Busy(Conflict):
    """409 ``*_busy``: a row lock was not granted in time, or ``idempotency_in_progress``: the
    first request with this idempotency key still runs. The same request will likely pass."""


class PayloadTooLarge(ApiError):
    """413: the content is over the server's size limit."""


class RateLimited(ApiError):
    """429: the key or tenant is over its rate limit; ``retry_after`` says when to come back."""


class Unavailable(ApiError):
    """503: the database is unreachable or the server's connection pool is exhausted."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: ValidationError,
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    429: RateLimited,
    503: Unavailable,
}


def error_for(
    status: int, body: Any, *, retry_after: float | None = None, fallback_text: str = ""
) -> ApiError:
    """The exception for an error response (any body: a proxy's HTML page is not JSON)."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = str(error.get("code", "error"))
        message = str(error.get("message", ""))
        details = error.get("details") if isinstance(error.get("details"), dict) else {}
    else:
        code, message, details = f"http_{status}", fallback_text[:500], {}
    cls = _BY_STATUS.get(status, ApiError)
    # idempotency_in_progress: the first request with this key still runs; the repeat will be
    # answered with its response.
    if status == 409 and (code.endswith("_busy") or code == "idempotency_in_progress"):
        cls = Busy
    return cls(status=status, code=code, message=message, details=details, retry_after=retry_after)

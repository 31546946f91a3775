"""The error shape every API answers with, as an OpenAPI component."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter
from rest_framework import serializers


class ErrorSerializer(serializers.Serializer):
    class ErrorBodySerializer(serializers.Serializer):
        code = serializers.CharField()
        message = serializers.CharField()
        details = serializers.DictField()

    error = ErrorBodySerializer()


# Answers any authenticated operation can give, whatever its view: they come from authentication,
# the body parser and the database layer, so no view's own ``responses`` lists them.
COMMON_ERROR_RESPONSES = {
    "400": "Invalid input; also a service key without a valid `X-User-Id`.",
    "401": "No key, a wrong or revoked key, or a malformed `Authorization` header.",
    "403": "A tenant key sending another tenant's `X-User-Id`.",
    "408": "The request (headers and body) was not received within `WEB_REQUEST_TIMEOUT`.",
    "431": "The request line and headers are over `WEB_MAX_HEADER_BYTES`.",
    "503": "The database is unreachable or the connection pool is exhausted (with `Retry-After`).",
}
BODY_ERROR_RESPONSES = {"413": "The request body is over the configured limit."}

IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
IDEMPOTENCY_KEY_PARAMETER = OpenApiParameter(
    IDEMPOTENCY_KEY_HEADER,
    str,
    OpenApiParameter.HEADER,
    required=False,
    description="1-255 printable ASCII characters, new for each logical request (a UUID). A "
    "repeat with the same key and body within `IDEMPOTENCY_TTL_HOURS` does nothing and gets "
    "the first response back, with `Idempotent-Replayed: true`; while the first is still "
    "running, the repeat waits for it. Only successful responses are kept.",
)
# Answers of an operation that takes the header, beside its own.
IDEMPOTENCY_ERROR_RESPONSES = {
    "409": "`idempotency_in_progress`: a request with this `Idempotency-Key` is still running "
    "after `IDEMPOTENCY_WAIT_SECONDS` (with `Retry-After`).",
    "422": "`idempotency_key_reused`: this `Idempotency-Key` was sent with another method, path "
    "or body.",
}


def add_common_error_responses(
    result: dict[str, Any], generator: Any, request: Any, public: bool
) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: document the errors every operation can answer.

    A view's own description of a status (say, which fields a 400 names) is kept.
    """
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path_item in result.get("paths", {}).values():
        for operation in path_item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            statuses = dict(COMMON_ERROR_RESPONSES)
            if not operation.get("security"):
                del statuses["401"], statuses["403"]
            if "requestBody" in operation:
                statuses.update(BODY_ERROR_RESPONSES)
            responses = operation["responses"]
            for status, description in statuses.items():
                responses.setdefault(status, {"content": error, "description": description})
            if any(
                parameter.get("in") == "header" and parameter.get("name") == IDEMPOTENCY_KEY_HEADER
                for parameter in operation.get("parameters", [])
            ):
                for status, description in IDEMPOTENCY_ERROR_RESPONSES.items():
                    if status in responses:
                        responses[status]["description"] += f" Or {description}"
                    else:
                        responses[status] = {"content": error, "description": description}
            operation["responses"] = dict(sorted(responses.items()))
    return result

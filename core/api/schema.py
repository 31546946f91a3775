"""The error shape every API answers with, as an OpenAPI component."""

from __future__ import annotations

from typing import Any

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
            operation["responses"] = dict(sorted(responses.items()))
    return result

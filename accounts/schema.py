"""OpenAPI description of bearer-key authentication, picked up by drf-spectacular."""

from __future__ import annotations

import copy
from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension

from accounts.authentication import USER_ID_HEADER
from accounts.tenancy import MAX_USER_ID_LENGTH


class BearerKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.BearerKeyAuthentication"
    name = "bearerKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key from `manage.py create_api_key`. Service keys also send "
            "`X-User-Id: <tenant>` on every request.",
        }


def document_rate_limits(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """drf-spectacular post-processing hook: every keyed operation may answer 429."""
    too_many = {
        "description": "rate_limited: over RATE_LIMIT_PER_MINUTE for the key or "
        "RATE_LIMIT_TENANT_PER_MINUTE for the tenant.",
        "headers": {
            "Retry-After": {
                "description": "Seconds until the limit lets a request through again.",
                "schema": {"type": "integer", "minimum": 1},
            }
        },
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            if any("bearerKey" in scheme for scheme in operation.get("security", [])):
                operation.setdefault("responses", {})["429"] = too_many
    return result


def document_tenant_header(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """drf-spectacular post-processing hook: every keyed operation takes an optional
    ``X-User-Id`` header, read by the authentication class rather than by any view."""
    header = {
        "in": "header",
        "name": USER_ID_HEADER,
        "required": False,
        "description": "The tenant the request acts for. Required with a service key (except "
        "on `threads/next`, where leaving it out serves every tenant); a tenant key may omit "
        "it, and naming another tenant with one is a 403. Sent once: a repeated header arrives "
        "comma-joined, and a user id contains no comma (400).",
        "schema": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_USER_ID_LENGTH,
            "pattern": "^[^,]*$",
        },
    }
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            if not any("bearerKey" in scheme for scheme in operation.get("security", [])):
                continue
            parameters = operation.setdefault("parameters", [])
            if not any(
                parameter.get("in") == "header" and parameter.get("name") == USER_ID_HEADER
                for parameter in parameters
            ):
                parameters.append(copy.deepcopy(header))
    return result

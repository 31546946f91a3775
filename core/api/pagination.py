"""Limit/offset pages for the API's lists (the workspace's folder list, tree and versions)."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request

MAX_PAGE_LIMIT = 1000
# Far beyond any row count, and small enough that offset + limit stays a Postgres bigint.
MAX_PAGE_OFFSET = 2**62


def query_integer(request: Request, name: str, *, minimum: int, maximum: int) -> int:
    """The query parameter ``name`` as an integer in range, or a 400 naming it."""
    raw = request.query_params[name]
    try:
        value = int(raw)
    except ValueError:
        raise serializers.ValidationError({name: ["A valid integer is required."]}) from None
    if not minimum <= value <= maximum:
        raise serializers.ValidationError(
            {name: [f"Ensure this value is between {minimum} and {maximum}."]}
        )
    return value


class StrictLimitOffsetPagination(LimitOffsetPagination):
    """DRF's limit/offset, but strict: a limit or offset that is not an integer in range is a 400
    naming it. DRF's own silently falls back to the default, and passes any limit through to SQL,
    where ``offset + limit`` beyond a bigint was a 500.
    """

    max_limit = MAX_PAGE_LIMIT

    def get_limit(self, request: Request) -> int | None:
        if self.limit_query_param not in request.query_params:
            return self.default_limit
        return query_integer(request, self.limit_query_param, minimum=1, maximum=MAX_PAGE_LIMIT)

    def get_offset(self, request: Request) -> int:
        if self.offset_query_param not in request.query_params:
            return 0
        return query_integer(request, self.offset_query_param, minimum=0, maximum=MAX_PAGE_OFFSET)

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters: list[dict[str, Any]] = super().get_schema_operation_parameters(view)
        bounds = {
            self.limit_query_param: {"minimum": 1, "maximum": MAX_PAGE_LIMIT},
            self.offset_query_param: {"minimum": 0, "maximum": MAX_PAGE_OFFSET},
        }
        for parameter in parameters:
            parameter["schema"].update(bounds.get(parameter["name"], {}))
        return parameters

"""Cursor pagination shared by every API package: one query a page (no COUNT), stable while new
rows arrive, and a malformed cursor is a 400 naming ``cursor``."""

from __future__ import annotations

import datetime
from typing import Any

from django.utils.dateparse import parse_datetime
from rest_framework import serializers
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import Cursor, CursorPagination

from core.api.pagination import query_integer


def page_serializer(name: str, item: serializers.Serializer) -> type[serializers.Serializer]:
    """The OpenAPI shape of a cursor-paginated list of ``item``."""
    return type(
        name,
        (serializers.Serializer,),
        {
            "next": serializers.URLField(allow_null=True),
            "previous": serializers.URLField(allow_null=True),
            "results": item,
        },
    )


def _aware_datetime(position: str) -> datetime.datetime:
    parsed = parse_datetime(position)
    if parsed is None or parsed.tzinfo is None:
        raise ValueError(position)
    return parsed


def _seq(position: str) -> int:
    return int(position)


class CheckedCursorPagination(CursorPagination):
    """A cursor whose position does not fit the ordering column is a 400 naming ``cursor``.

    Subclasses set ``ordering`` and ``parse_position`` for its first column.

    DRF puts the decoded position straight into the page query, so a hand-made cursor such as
    ``p=abc`` on an integer or timestamp column used to escape as a 500.
    """

    page_size_query_param = "limit"
    max_page_size = 1000
    # Parses the first ordering column's position, raising ValueError when it does not fit.
    parse_position: staticmethod[[str], Any]

    def get_page_size(self, request: Any) -> int:
        # DRF falls back to the default page size for a limit it cannot use (-1, 0, "ten"),
        # so a client asking for something else silently gets 50 rows.
        if self.page_size_query_param not in request.query_params:
            assert self.page_size is not None  # PAGE_SIZE is always set (settings.py)
            return self.page_size
        return query_integer(
            request, self.page_size_query_param, minimum=1, maximum=self.max_page_size
        )

    def decode_cursor(self, request: Any) -> Cursor | None:
        try:
            cursor = super().decode_cursor(request)
            if cursor is not None and cursor.position is not None:
                self.parse_position(str(cursor.position))
        except (NotFound, ValueError):
            raise ValidationError({"cursor": [self.invalid_cursor_message]}) from None
        return cursor


class NewestFirstPagination(CheckedCursorPagination):
    """Newest first; ``id`` breaks ties between rows created in the same microsecond."""

    ordering = ("-created_at", "-id")
    parse_position = staticmethod(_aware_datetime)


class SeqPagination(CheckedCursorPagination):
    """In ascending ``seq`` (a per-parent sequence number, such as a conversation's entries)."""

    ordering = ("seq",)
    parse_position = staticmethod(_seq)

"""The API's JSON parser."""

from __future__ import annotations

from typing import Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser


class SafeJSONParser(JSONParser):
    """DRF's JSON parser, but a body nested too deep for Python's decoder is a 400, not a 500.

    ``json.loads`` raises RecursionError (not ValueError, which DRF turns into a parse error)
    for a body such as 100,000 ``[``: small enough to pass every size limit.
    """

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - the body is nested too deeply.") from None

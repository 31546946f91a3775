"""What a document may hold: its hash and the checks on text, size and metadata."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from django.conf import settings

from workspace.errors import DocumentTooLarge, InvalidContent
from workspace.metadata import metadata_problems


def content_hash(content: str) -> str:
    return "sha256:" + hashlib.sha256(content.encode("utf-8")).hexdigest()


def check_text(value: str, *, field: str) -> None:
    if "\x00" in value:
        raise InvalidContent(
            f"{field} must not contain NUL characters.", details={field: ["contains NUL (\\u0000)"]}
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidContent(
            f"{field} must be valid Unicode.", details={field: ["contains unpaired surrogates"]}
        ) from None


def check_size(content: str) -> None:
    limit = settings.WORKSPACE_MAX_DOCUMENT_BYTES
    size = len(content.encode("utf-8"))
    if size > limit:
        raise DocumentTooLarge(
            f"The document would be {size} bytes; the limit is {limit}.",
            details={"size": size, "limit": limit},
        )


def check_metadata(metadata: dict[str, Any]) -> None:
    if not isinstance(metadata, dict):
        raise InvalidContent(
            "metadata must be a JSON object.", details={"metadata": ["not an object"]}
        )
    try:
        encoded = json.dumps(metadata, ensure_ascii=False)
        encoded.encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError):
        raise InvalidContent(
            "metadata must be JSON with valid Unicode.", details={"metadata": ["not valid JSON"]}
        ) from None
    if "\x00" in encoded or "\\u0000" in encoded:
        # jsonb cannot store NUL in strings.
        raise InvalidContent(
            "metadata must not contain NUL characters.", details={"metadata": ["contains NUL"]}
        )
    problems = metadata_problems(metadata)
    if problems:
        raise InvalidContent(
            f"metadata has values of the wrong type: {', '.join(problems)}.",
            details={"metadata": problems},
        )

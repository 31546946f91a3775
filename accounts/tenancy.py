"""Validation of tenant identifiers (``user_id``), shared by keys, headers and services."""

from __future__ import annotations

from core.text import has_control_characters

MAX_USER_ID_LENGTH = 255


def user_id_problem(value: str) -> str | None:
    """Why ``value`` is not a usable user_id, or None when it is."""
    if not value or not value.strip():
        return "must not be empty"
    if value != value.strip():
        return "must not start or end with whitespace"
    if len(value) > MAX_USER_ID_LENGTH:
        return f"must be at most {MAX_USER_ID_LENGTH} characters"
    if has_control_characters(value):
        return "must not contain control characters"
    if "," in value:
        # HTTP joins a repeated header's values with commas (RFC 9110 section 5.3): X-User-Id
        # "bob, alice" may be two headers, and a user id with a comma could not be told apart.
        return "must not contain a comma"
    return None

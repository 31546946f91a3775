"""Checks on identifier-like text shared by every app (user ids, worker ids, scopes, paths)."""

from __future__ import annotations

import unicodedata

# Cc: C0/C1 controls (NUL, newline, ESC, ...); Cf: invisible format characters (zero-width
# joiners, bidi overrides). Either makes two values that print alike but never compare equal.
_INVISIBLE = frozenset({"Cc", "Cf"})
_CONTROLS = frozenset({"Cc"})


def has_control_characters(value: str, *, include_format: bool = True) -> bool:
    """True when ``value`` holds a control character (and, by default, an invisible format one)."""
    if value.isprintable():
        # Printable text (checked in C) holds neither category: the common case, at once.
        return False
    categories = _INVISIBLE if include_format else _CONTROLS
    return any(unicodedata.category(char) in categories for char in value)

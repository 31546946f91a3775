"""How the admin shows ids, links, durations and long text, the same on every page."""

from __future__ import annotations

import datetime
from typing import Any

from django.urls import reverse
from django.utils.html import format_html
from django.utils.http import urlencode
from django.utils.safestring import SafeString, mark_safe

SHORT_ID_LENGTH = 8


def short_id(value: Any) -> SafeString:
    """The first characters of an id, the whole id in the title: a UUID column stays one line."""
    if value is None:
        return mark_safe("-")
    text = str(value)
    return format_html('<span title="{}">{}</span>', text, text[:SHORT_ID_LENGTH])


def change_link(url_name: str, pk: Any, text: Any = None) -> SafeString:
    """A link to a row's admin page, labelled by its short id unless ``text`` is given."""
    if pk is None:
        return mark_safe("-")
    url = reverse(url_name, args=[pk])
    return format_html('<a href="{}">{}</a>', url, short_id(pk) if text is None else text)


def changelist_url(url_name: str, **filters: Any) -> str:
    """A changelist filtered by query parameters (field lookups or list filter parameters)."""
    url = reverse(url_name)
    return f"{url}?{urlencode(filters)}" if filters else url


def duration_text(duration: datetime.timedelta | None) -> str:
    """A duration for people: "850 ms", "1.5 s", "42 s", "3 min 5 s", "2 h 4 min", "3 d 2 h"."""
    if duration is None:
        return "-"
    seconds = duration.total_seconds()
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    if seconds < 1:
        return f"{sign}{seconds * 1000:.0f} ms"
    if seconds < 10:
        return f"{sign}{seconds:.1f} s"
    if seconds < 60:
        return f"{sign}{seconds:.0f} s"
    minutes, second = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{sign}{minutes} min {second} s"
    hours, minute = divmod(minutes, 60)
    if hours < 24:
        return f"{sign}{hours} h {minute} min"
    days, hour = divmod(hours, 24)
    return f"{sign}{days} d {hour} h"


def truncated(text: str, length: int) -> str:
    return text if len(text) <= length else text[: length - 1] + "…"

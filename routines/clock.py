"""The scheduler's clock: the system's, or in tests and rehearsals the time held by a file."""

from __future__ import annotations

import datetime

from django.conf import settings
from django.utils import timezone


def scheduler_now() -> datetime.datetime:
    """``ROUTINE_CLOCK_FILE``'s ISO 8601 time when the setting names a non-empty file, else
    now. Read on every call, so a test moves every worker's clock by rewriting one file."""
    path = settings.ROUTINE_CLOCK_FILE
    if path is not None:
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            text = ""
        if text:
            moment = datetime.datetime.fromisoformat(text)
            if moment.tzinfo is None:
                raise ValueError(f"{path} holds {text!r}, a time without a UTC offset")
            return moment
    return timezone.now()

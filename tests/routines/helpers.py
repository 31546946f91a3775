"""Routines and the scheduler's clock, as the tests set them up."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from routines import services
from routines.models import Routine

UTC = datetime.UTC
# A Monday, far from any daylight-saving change.
T0 = datetime.datetime(2026, 6, 1, 9, 0, tzinfo=UTC)


def minutes(count: float) -> datetime.timedelta:
    return datetime.timedelta(minutes=count)


def clock_set(path: Path, moment: datetime.datetime) -> None:
    """Move the scheduler's clock (ROUTINE_CLOCK_FILE) of every process reading ``path``;
    written then renamed, so a reader never sees half a time."""
    partial = path.with_suffix(".partial")
    partial.write_text(moment.isoformat())
    partial.replace(path)


def routine_make(user_id: str = "alice", **fields: Any) -> Routine:
    values: dict[str, Any] = {"name": "summary", "cron": "* * * * *", "message": "summarise"}
    values.update(fields)
    return services.routine_create(user_id=user_id, **values)

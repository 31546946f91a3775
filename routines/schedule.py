"""A routine's schedule: a five-field cron expression (or a nickname) in an IANA time zone, and
its slots as UTC instants.

Slots are wall-clock times in the routine's zone (croniter, given an aware start, walks wall
time). Across daylight-saving changes:
- spring forward: a slot in the skipped hour fires at the first instant after the gap (a daily
  02:30 in New York fires at 03:00 EDT on the day clocks jump from 02:00 to 03:00);
- fall back: croniter gives a fixed-hour slot twice (01:30 EDT, then 01:30 EST); a schedule
  whose hour field names hours fires once, at the first, while one whose hour field is a
  wildcard (hourly, every 15 minutes) keeps firing by real time through the repeated hour.
"""

from __future__ import annotations

import datetime
import functools
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from croniter import CroniterBadDateError, CroniterError, croniter

from core.errors import InvalidInput

NICKNAMES = frozenset(
    {"@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@annually", "@midnight"}
)
CRON_FIELDS = 5
DEFAULT_TIMEZONE = "UTC"
# A search for the next or previous slot gives up after this many candidates croniter returns:
# only the fall-back skip takes more than one, at most one per minute of the repeated wall time
# (an hour in most zones, two where clocks once fell back by two hours).
_MAX_CANDIDATES = 200


def _cron_problem(problem: str) -> InvalidInput:
    return InvalidInput(f"cron {problem}.", details={"cron": [problem]})


def cron_check(cron: str) -> str:
    """The expression, stripped, if it is five cron fields or a nickname; else InvalidInput
    naming ``cron`` with the reason."""
    expression = " ".join(cron.split())
    if expression.startswith("@"):
        if expression.lower() not in NICKNAMES:
            raise _cron_problem(f"nickname must be one of {', '.join(sorted(NICKNAMES))}")
        return expression.lower()
    fields = len(expression.split(" ")) if expression else 0
    if fields > CRON_FIELDS:
        raise _cron_problem(
            f"has {fields} fields; a schedule finer than a minute (a seconds field) is refused: "
            "use five fields (minute hour day-of-month month day-of-week)"
        )
    if fields < CRON_FIELDS:
        raise _cron_problem(
            f"has {fields} fields; use five (minute hour day-of-month month day-of-week)"
        )
    try:
        schedule = croniter(expression, datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC))
        # An expression that parses may still never match (February 30th).
        schedule.get_next(datetime.datetime)
    except CroniterBadDateError:
        raise _cron_problem("never matches a date (such as February 30th)") from None
    except CroniterError as error:
        raise _cron_problem(f"is invalid: {error}") from None
    return expression


@functools.cache
def _zone_names() -> frozenset[str]:
    return frozenset(available_timezones())


def timezone_check(name: str) -> ZoneInfo:
    """The zone named ``name`` (IANA, such as Europe/Berlin), or InvalidInput naming
    ``timezone``."""
    try:
        # The IANA names only: not "localtime" (whatever the machine's zone is) nor a path.
        if name not in _zone_names() or name == "localtime":
            raise ValueError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        problem = "must be an IANA time zone name such as UTC or Europe/Berlin"
        raise InvalidInput(f"timezone {problem}.", details={"timezone": [problem]}) from None


def _hour_is_wildcard(cron: str) -> bool:
    return bool(croniter(cron).expanded[1] == ["*"])


def _is_repeated_wall_time(slot: datetime.datetime, zone: ZoneInfo) -> bool:
    """The slot is the second occurrence of a wall time that fall-back repeats."""
    local = slot.astimezone(zone)
    return local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()


def _slot_search(
    cron: str, zone: ZoneInfo, start: datetime.datetime, *, forward: bool
) -> datetime.datetime:
    schedule = croniter(cron, start.astimezone(zone))
    skip_repeated = not _hour_is_wildcard(cron)
    for _ in range(_MAX_CANDIDATES):
        found = (
            schedule.get_next(datetime.datetime)
            if forward
            else schedule.get_prev(datetime.datetime)
        )
        candidate = found.astimezone(datetime.UTC)
        if not (skip_repeated and _is_repeated_wall_time(candidate, zone)):
            return candidate
    raise AssertionError(f"no slot of {cron!r} near {start.isoformat()}")


def next_slot(cron: str, timezone: str, after: datetime.datetime) -> datetime.datetime:
    """The first slot strictly after ``after`` (aware), as an aware UTC datetime."""
    if after.tzinfo is None:
        raise ValueError("after must be an aware datetime")
    return _slot_search(cron, ZoneInfo(timezone), after, forward=True)


def previous_slot(cron: str, timezone: str, before: datetime.datetime) -> datetime.datetime:
    """The last slot strictly before ``before`` (aware), as an aware UTC datetime."""
    if before.tzinfo is None:
        raise ValueError("before must be an aware datetime")
    return _slot_search(cron, ZoneInfo(timezone), before, forward=False)

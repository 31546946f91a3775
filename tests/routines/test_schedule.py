"""Slots of cron schedules in a time zone, across daylight-saving changes, and what is refused."""

from __future__ import annotations

import datetime

import pytest

from core.errors import InvalidInput
from routines.schedule import cron_check, next_slot, timezone_check

UTC = datetime.UTC


def _slots(cron: str, zone: str, after: datetime.datetime, count: int) -> list[str]:
    slots = []
    for _ in range(count):
        after = next_slot(cron, zone, after)
        assert after.tzinfo == UTC
        slots.append(after.strftime("%m-%d %H:%M"))
    return slots


def test_a_daily_slot_in_the_spring_forward_gap_fires_at_the_first_instant_after_it() -> None:
    slots = _slots(
        "30 2 * * *", "America/New_York", datetime.datetime(2026, 3, 6, 12, tzinfo=UTC), 3
    )

    # 02:30 EST (07:30Z); on 03-08 02:30 does not exist: 03:00 EDT (07:00Z); then 02:30 EDT.
    assert slots == ["03-07 07:30", "03-08 07:00", "03-09 06:30"]


def test_a_daily_slot_in_the_repeated_hour_of_fall_back_fires_once_at_the_first() -> None:
    slots = _slots(
        "30 1 * * *", "America/New_York", datetime.datetime(2026, 10, 31, 12, tzinfo=UTC), 3
    )

    # 01:30 EDT (05:30Z) on 11-01 and not 01:30 EST (06:30Z) too.
    assert slots == ["11-01 05:30", "11-02 06:30", "11-03 06:30"]


def test_every_fifteen_minutes_follows_real_time_through_fall_back() -> None:
    slots = _slots(
        "*/15 * * * *", "America/New_York", datetime.datetime(2026, 11, 1, 5, 0, tzinfo=UTC), 8
    )

    # Both 01:xx hours (EDT then EST): every 15 minutes of real time, no gap and no repeat.
    assert slots == [
        "11-01 05:15", "11-01 05:30", "11-01 05:45", "11-01 06:00",
        "11-01 06:15", "11-01 06:30", "11-01 06:45", "11-01 07:00",
    ]  # fmt: skip


def test_every_fifteen_minutes_follows_real_time_through_spring_forward() -> None:
    slots = _slots(
        "*/15 * * * *", "America/New_York", datetime.datetime(2026, 3, 8, 6, 30, tzinfo=UTC), 4
    )

    # 01:45 EST is 06:45Z and the next quarter, 03:00 EDT, is 07:00Z: 02:xx never exists.
    assert slots == ["03-08 06:45", "03-08 07:00", "03-08 07:15", "03-08 07:30"]


def test_hourly_fires_in_both_repeated_hours() -> None:
    slots = _slots(
        "@hourly", "America/New_York", datetime.datetime(2026, 11, 1, 4, 30, tzinfo=UTC), 3
    )

    assert slots == ["11-01 05:00", "11-01 06:00", "11-01 07:00"]


def test_berlin_daily_slot_across_both_changes() -> None:
    spring = _slots(
        "30 2 * * *", "Europe/Berlin", datetime.datetime(2026, 3, 28, 12, tzinfo=UTC), 2
    )
    autumn = _slots(
        "30 2 * * *", "Europe/Berlin", datetime.datetime(2026, 10, 24, 12, tzinfo=UTC), 2
    )

    # 2026-03-29 02:30 does not exist in Berlin (03:00 CEST = 01:00Z); on 10-25 02:30 happens
    # twice and fires at the first (CEST, 00:30Z).
    assert spring == ["03-29 01:00", "03-30 00:30"]
    assert autumn == ["10-25 00:30", "10-26 01:30"]


def test_berlin_every_fifteen_minutes_through_fall_back() -> None:
    slots = _slots(
        "*/15 * * * *", "Europe/Berlin", datetime.datetime(2026, 10, 25, 0, 30, tzinfo=UTC), 6
    )

    assert slots == [
        "10-25 00:45",
        "10-25 01:00",
        "10-25 01:15",
        "10-25 01:30",
        "10-25 01:45",
        "10-25 02:00",
    ]


def test_next_slot_is_strictly_after_and_in_utc() -> None:
    after = datetime.datetime(
        2026, 1, 1, 9, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=1))
    )

    assert next_slot("0 9 * * *", "Europe/Berlin", after) == datetime.datetime(
        2026, 1, 2, 8, 0, tzinfo=UTC
    )


@pytest.mark.parametrize(
    "nickname", ["@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@annually", "@midnight"]
)
def test_nicknames_are_accepted(nickname: str) -> None:
    assert cron_check(nickname) == nickname


def test_expressions_are_normalised() -> None:
    assert cron_check("  0   9 * *  1-5 ") == "0 9 * * 1-5"
    assert cron_check("@Daily") == "@daily"


@pytest.mark.parametrize("expression", ["* * * * * *", "*/5 * * * * *", "0 0 * * * * 2030"])
def test_sub_minute_schedules_are_refused(expression: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        cron_check(expression)

    assert "finer than a minute" in refused.value.details["cron"][0]


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("61 * * * *", "out of range"),
        ("* * *", "has 3 fields"),
        ("", "has 0 fields"),
        ("@reboot", "nickname must be one of"),
        ("*/0 * * * *", "step '0'"),
        ("0 0 30 2 *", "never matches"),
    ],
)
def test_invalid_expressions_are_refused_with_the_reason(expression: str, reason: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        cron_check(expression)

    assert reason in refused.value.details["cron"][0]


@pytest.mark.parametrize(
    "name",
    [
        "Mars/Olympus",
        "",
        "utc",
        " UTC",
        "../etc/passwd",
        "/etc/localtime",
        "localtime",
        "posix/Europe/Paris",
    ],
)
def test_unknown_time_zones_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        timezone_check(name)

    assert list(refused.value.details) == ["timezone"]


def test_known_time_zones_are_accepted() -> None:
    assert str(timezone_check("America/New_York")) == "America/New_York"
    assert str(timezone_check("UTC")) == "UTC"

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest

from apps.reporting.periods import (
    PeriodError,
    UtcDays,
    local_days_are_utc,
    periods_overlap,
    resolve_period,
    utc_days,
)

LA = ZoneInfo("America/Los_Angeles")
# 2026-11-23 06:30 UTC is still the 22nd, 22:30, in Los Angeles (UTC-8).
NOW = datetime(2026, 11, 23, 6, 30, tzinfo=UTC)


def test_today_runs_from_local_midnight_and_compares_with_yesterday_so_far():
    period = resolve_period("today", zone=LA, now=NOW)

    assert period.start == datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
    assert period.end == NOW
    assert period.previous_start == datetime(2026, 11, 21, 8, 0, tzinfo=UTC)
    assert period.previous_end == datetime(2026, 11, 22, 6, 30, tzinfo=UTC)
    assert period.local_days() == [date(2026, 11, 22)]


def test_today_in_utc_is_another_day():
    period = resolve_period("today", zone=ZoneInfo("UTC"), now=NOW)

    assert period.start == datetime(2026, 11, 23, tzinfo=UTC)


def test_the_last_seven_days_include_today_and_compare_with_the_seven_before():
    period = resolve_period("7d", zone=ZoneInfo("UTC"), now=NOW)

    assert period.start == datetime(2026, 11, 17, tzinfo=UTC)
    assert period.previous_start == datetime(2026, 11, 10, tzinfo=UTC)
    assert period.previous_end == datetime(2026, 11, 16, 6, 30, tzinfo=UTC)
    assert len(period.local_days()) == 7


def test_this_month_so_far_against_a_shorter_last_month_stops_at_its_end():
    now = datetime(2026, 3, 31, 12, tzinfo=UTC)

    period = resolve_period("this_month", zone=ZoneInfo("UTC"), now=now)

    assert period.start == datetime(2026, 3, 1, tzinfo=UTC)
    assert period.previous_start == datetime(2026, 2, 1, tzinfo=UTC)
    assert period.previous_end == datetime(2026, 3, 1, tzinfo=UTC)


def test_last_month_is_whole_local_months_across_a_daylight_saving_change():
    period = resolve_period("last_month", zone=LA, now=datetime(2026, 12, 5, tzinfo=UTC))

    # November 2026 in Los Angeles: starts in daylight time (UTC-7), ends in standard (UTC-8).
    assert period.start == datetime(2026, 11, 1, 7, 0, tzinfo=UTC)
    assert period.end == datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    assert period.previous_start == datetime(2026, 10, 1, 7, 0, tzinfo=UTC)
    assert period.previous_end == period.start
    assert len(period.local_days()) == 30


def test_last_month_in_january_is_december():
    period = resolve_period(
        "last_month", zone=ZoneInfo("UTC"), now=datetime(2027, 1, 10, tzinfo=UTC)
    )

    assert (period.start, period.end) == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )


def test_custom_days_are_inclusive_and_compare_with_as_many_days_before():
    period = resolve_period(
        "custom", zone=ZoneInfo("UTC"), now=NOW, start=date(2026, 11, 1), end=date(2026, 11, 10)
    )

    assert (period.start, period.end) == (
        datetime(2026, 11, 1, tzinfo=UTC),
        datetime(2026, 11, 11, tzinfo=UTC),
    )
    assert period.previous_start == datetime(2026, 10, 22, tzinfo=UTC)


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        (None, date(2026, 11, 1), "both"),
        (date(2026, 11, 2), date(2026, 11, 1), "after the last day"),
        (date(2020, 1, 1), date(2026, 11, 1), "at most"),
    ],
)
def test_impossible_custom_periods_say_why(start, end, message):
    with pytest.raises(PeriodError, match=message):
        resolve_period("custom", zone=ZoneInfo("UTC"), now=NOW, start=start, end=end)


def test_an_unknown_period_is_refused():
    with pytest.raises(PeriodError):
        resolve_period("fortnight", zone=ZoneInfo("UTC"), now=NOW)


# Cutting a period for the rollups -------------------------------------------------------------


def test_a_period_is_cut_into_whole_utc_days_and_its_edges():
    start, end = datetime(2026, 11, 1, 12, tzinfo=UTC), datetime(2026, 11, 4, 6, tzinfo=UTC)

    days = utc_days(start, end)

    assert (days.first_day, days.end_day) == (date(2026, 11, 2), date(2026, 11, 4))
    assert days.edges == (
        (start, datetime(2026, 11, 2, tzinfo=UTC)),
        (datetime(2026, 11, 4, tzinfo=UTC), end),
    )


def test_whole_days_have_no_edges_and_a_short_period_is_one_edge():
    midnight = datetime(2026, 11, 1, tzinfo=UTC)
    in_paris = datetime(2026, 11, 1, 13, tzinfo=ZoneInfo("Europe/Paris"))

    assert utc_days(midnight, midnight.replace(day=3)) == UtcDays(
        date(2026, 11, 1), date(2026, 11, 3), ()
    )
    assert utc_days(in_paris, in_paris.replace(hour=20)) == UtcDays(
        None, None, ((in_paris.astimezone(UTC), in_paris.replace(hour=20).astimezone(UTC)),)
    )
    assert utc_days(midnight, midnight) == UtcDays(None, None, ())


def test_local_days_are_utc_days_only_at_offset_zero_all_year():
    start, end = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)

    assert local_days_are_utc(ZoneInfo("UTC"), start, end)
    assert local_days_are_utc(ZoneInfo("Africa/Abidjan"), start, end)
    # At offset 0 in November, but not in summer.
    assert not local_days_are_utc(ZoneInfo("Europe/London"), start, end)
    assert not local_days_are_utc(LA, start, end)


def test_periods_overlap_when_they_share_an_instant():
    a, b, c = (datetime(2026, 11, day, tzinfo=UTC) for day in (1, 2, 3))

    assert periods_overlap((b, c), (a, c))
    assert not periods_overlap((b, c), (a, b))  # [a, b) ends where [b, c) starts
    assert not periods_overlap((a, c), (b, b))  # an empty period shares nothing

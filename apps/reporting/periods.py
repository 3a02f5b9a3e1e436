"""The periods dashboards show: today, the last 7 or 30 days, this month, last month or custom
days, counted in the organization's time zone, each with the period it is compared against.

A period is a half-open interval of aware datetimes [start, end). A period still running (today,
this month, the last N days) ends now and is compared with the same stretch of time before it,
so "today so far" is never set against a whole day.

Reports read a period as whole UTC days (summed from daily rollups) and the partial days at its
edges (summed from events): ``utc_days`` cuts it so, ``local_days_are_utc`` says whether a zone's
days are UTC days (whether rollups can stand for its local days at all).
"""

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

PERIOD_CHOICES = [
    ("today", "Today"),
    ("7d", "Last 7 days"),
    ("30d", "Last 30 days"),
    ("this_month", "This month"),
    ("last_month", "Last month"),
    ("custom", "Custom"),
]
DEFAULT_PERIOD = "30d"
MAX_CUSTOM_DAYS = 731


class PeriodError(ValueError):
    """A period that cannot be shown; the message is for the person who chose it."""


@dataclass(frozen=True)
class Period:
    start: datetime
    end: datetime
    previous_start: datetime
    previous_end: datetime
    zone: ZoneInfo

    def local_days(self) -> list[date]:
        """Every local calendar day the period touches, in order."""
        first = self.start.astimezone(self.zone).date()
        last = (self.end - timedelta(microseconds=1)).astimezone(self.zone).date()
        return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def _midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time.min, tzinfo=zone)


def _month_start(day: date) -> date:
    return day.replace(day=1)


def _previous_month_start(day: date) -> date:
    return _month_start(_month_start(day) - timedelta(days=1))


def resolve_period(
    name: str,
    *,
    zone: ZoneInfo,
    now: datetime,
    start: date | None = None,
    end: date | None = None,
) -> Period:
    """The period called ``name``; ``start`` and ``end`` (inclusive local days) for custom."""
    today = now.astimezone(zone).date()
    if name == "today":
        begin = _midnight(today, zone)
        return _running(begin, now, _midnight(today - timedelta(days=1), zone), zone)
    if name in ("7d", "30d"):
        days = int(name[:-1])
        begin = _midnight(today - timedelta(days=days - 1), zone)
        return _running(begin, now, _midnight(today - timedelta(days=2 * days - 1), zone), zone)
    if name == "this_month":
        begin = _midnight(_month_start(today), zone)
        previous_begin = _midnight(_previous_month_start(today), zone)
        return _running(begin, now, previous_begin, zone, cap=begin)
    if name == "last_month":
        this_month = _month_start(today)
        last_month = _previous_month_start(today)
        return Period(
            start=_midnight(last_month, zone),
            end=_midnight(this_month, zone),
            previous_start=_midnight(_previous_month_start(last_month), zone),
            previous_end=_midnight(last_month, zone),
            zone=zone,
        )
    if name == "custom":
        if start is None or end is None:
            raise PeriodError("Choose both a first and a last day.")
        if start > end:
            raise PeriodError("The first day is after the last day.")
        if (end - start).days + 1 > MAX_CUSTOM_DAYS:
            raise PeriodError(f"Choose at most {MAX_CUSTOM_DAYS} days.")
        length = (end - start).days + 1
        return Period(
            start=_midnight(start, zone),
            end=_midnight(end + timedelta(days=1), zone),
            previous_start=_midnight(start - timedelta(days=length), zone),
            previous_end=_midnight(start, zone),
            zone=zone,
        )
    raise PeriodError(f"Unknown period {name!r}.")


def _running(
    begin: datetime,
    now: datetime,
    previous_begin: datetime,
    zone: ZoneInfo,
    cap: datetime | None = None,
) -> Period:
    """A period from ``begin`` to now, compared with as much time from ``previous_begin`` (never
    past ``cap``: this month so far against last month, which may be shorter)."""
    previous_end = previous_begin + (now - begin)
    if cap is not None:
        previous_end = min(previous_end, cap)
    return Period(
        start=begin, end=now, previous_start=previous_begin, previous_end=previous_end, zone=zone
    )


@dataclass(frozen=True)
class UtcDays:
    """[start, end) as whole UTC days [first_day, end_day) and the partial days at its edges."""

    first_day: date | None  # None: no whole day
    end_day: date | None  # exclusive
    edges: tuple[tuple[datetime, datetime], ...]


def utc_days(start: datetime, end: datetime) -> UtcDays:
    """[start, end) cut into the whole UTC days it holds and the instants before and after them
    (none, one or two edges; the whole period is one edge when it holds no whole day)."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    if start >= end:
        return UtcDays(None, None, ())
    first_whole = start.date() if start.time() == time.min else start.date() + timedelta(days=1)
    end_whole = end.date()
    if first_whole >= end_whole:
        return UtcDays(None, None, ((start, end),))
    edges = []
    head_end = datetime.combine(first_whole, time.min, tzinfo=UTC)
    if start < head_end:
        edges.append((start, head_end))
    tail_start = datetime.combine(end_whole, time.min, tzinfo=UTC)
    if tail_start < end:
        edges.append((tail_start, end))
    return UtcDays(first_whole, end_whole, tuple(edges))


def local_days_are_utc(zone: ZoneInfo, start: datetime, end: datetime) -> bool:
    """Whether local days in ``zone`` are UTC days throughout the period (UTC itself, or a zone
    at offset 0 with no daylight saving)."""
    moments = (
        start,
        end,
        datetime(start.year, 1, 1, tzinfo=UTC),
        datetime(start.year, 7, 1, tzinfo=UTC),
    )
    return all(moment.astimezone(zone).utcoffset() == timedelta(0) for moment in moments)


def periods_overlap(
    current: tuple[datetime, datetime], previous: tuple[datetime, datetime]
) -> bool:
    """Whether two [start, end) periods share an instant (an empty ``previous`` shares none)."""
    return current[0] < previous[1] and previous[0] < current[1] and previous[0] < previous[1]

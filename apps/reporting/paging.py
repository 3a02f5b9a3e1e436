"""Keyset pagination, for the dashboard's events page and the API's cursor pagination alike.

A page holds the rows after a position in a total order (e.g. (timestamp, id)), found with a
keyset condition the database answers by seeking along its index, instead of counting past an
OFFSET: a walk meets each row exactly once however many rows share a timestamp, and a late page
costs what the first one does. A position is made of the whole order, so every row has one.

Each caller writes positions into its own URLs (the dashboard as ``after``/``before`` with
``NewestFirst.position_text``, the API inside DRF's opaque ``cursor``), and answers a malformed one
its own way; what a row's position is, how one read back from a client is checked, and the
condition that seeks past it are defined here once.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db.models import Q, QuerySet

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Page:
    """A page's rows in the order's direction, and whether rows lie beyond either end."""

    rows: list
    has_next: bool
    has_previous: bool


class Keyset:
    """A total order as two (field, ascending) pairs, the second unique, and its positions as
    JSON-safe values."""

    fields: tuple[tuple[str, bool], tuple[str, bool]]

    def position_of(self, row) -> list:
        """The row's place in the order, as values a client may carry and send back."""
        raise NotImplementedError

    def position_from(self, values) -> tuple:
        """Values from a client read back as a position for the keyset condition; raises
        ValueError or TypeError when they are not one (malformed or tampered)."""
        raise NotImplementedError

    def ordering(self, *, forward: bool = True) -> list[str]:
        return [("" if ascending == forward else "-") + name for name, ascending in self.fields]

    def seek(self, queryset: QuerySet, position: tuple, *, forward: bool = True) -> QuerySet:
        """Rows strictly after ``position`` in the walk's direction, as a keyset condition (the
        first field bounded inclusively as well, so an index range scan serves it)."""
        (first, first_up), (second, second_up) = self.fields
        after_first = "gt" if first_up == forward else "lt"
        after_second = "gt" if second_up == forward else "lt"
        bound = "gte" if after_first == "gt" else "lte"
        return queryset.filter(**{f"{first}__{bound}": position[0]}).filter(
            Q(**{f"{first}__{after_first}": position[0]})
            | Q(**{f"{second}__{after_second}": position[1]})
        )

    def page(
        self,
        queryset: QuerySet,
        *,
        position: tuple | None = None,
        forward: bool = True,
        size: int,
    ) -> Page:
        """The ``size`` rows after ``position`` (from the start without one), or with
        ``forward=False`` the ``size`` rows before it, in the order either way; one query.
        A page reached by walking back always has a next page (the one walked from)."""
        queryset = queryset.order_by(*self.ordering(forward=forward))
        if position is not None:
            queryset = self.seek(queryset, position, forward=forward)
        rows = list(queryset[: size + 1])
        more = len(rows) > size
        rows = rows[:size]
        if forward:
            return Page(rows=rows, has_next=more, has_previous=position is not None)
        rows.reverse()
        return Page(rows=rows, has_next=True, has_previous=more)


def _micros(timestamp: datetime) -> int:
    """Microseconds since the epoch, exactly (no float on the way)."""
    delta = timestamp - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


class NewestFirst(Keyset):
    """Events newest first, ties on the timestamp by id, newest first (``events_filtered``'s
    order). A position is [microseconds since the epoch, id]: exact to the microsecond."""

    fields = (("timestamp", False), ("id", False))

    def position_of(self, row) -> list[int]:
        return [_micros(row.timestamp), row.pk]

    def position_from(self, values) -> tuple[datetime, int]:
        micros, pk = values
        if type(micros) is not int or type(pk) is not int:
            raise TypeError("cursor position")
        try:
            return EPOCH + timedelta(microseconds=micros), pk
        except OverflowError as error:
            raise ValueError("cursor position") from error

    def position_text(self, row) -> str:
        """The position as "<micros>.<id>", for a query string."""
        return "{}.{}".format(*self.position_of(row))

    def position_from_text(self, value: str) -> tuple[datetime, int]:
        """``position_text`` read back; raises ValueError when it is not one."""
        micros, _, pk = value.partition(".")
        return self.position_from([int(micros), int(pk)])


EVENTS = NewestFirst()

"""The rollup counters: their one definition, with its SQL, ORM and Python renderings side by side.

Every rollup (``DailyRollup``, ``OrganizationDailyRollup``, ``PropertyDailyRollup``) keeps these
counters over the events it covers, stored in the fields of ``models.UsageSums``
(``ROLLUP_COUNTERS`` lists them in order):

- ``requests``: every event.
- ``errors``: events answered with a status >= 400 (``ERROR_STATUS``), or that Costr or the
  upstream broke off (an outcome in ``contract.ERROR_OUTCOMES``: ``upstream_error``,
  ``upstream_disconnected``, ``costr_error``). A client that stopped reading
  (``client_disconnected``) with a successful status is no error: the provider served it and
  bills it.
- the six token counts (``contract.TOKEN_FIELDS``): their sums, a count reported as null adding 0.
- ``cost_usd``: the sum of the events' costs, an unpriced event adding 0.
- ``unpriced_requests``: events whose usage is known but has no price (``price_source``
  ``unpriced``, cost null), exactly as filtering events by ``price_source="unpriced"`` counts
  them.
- ``usage_unknown_requests``: billable events that succeeded without readable usage
  (``price_source`` ``usage_unknown``, cost null). Flagged apart from unpriced ones; events the
  provider bills nothing for (``no_usage``, cost 0) are neither.
- ``latency_ms_sum``: the sum of the latencies.
- ``ttfb_ms_sum`` and ``ttfb_count``: the sum of the times to first byte, and how many events had
  one, so ``ttfb_ms_sum / ttfb_count`` is an honest average.

``OrganizationDailyRollup`` also keeps a latency histogram: ``LATENCY_BUCKETS[i]`` counts the
events whose latency is in [``LATENCY_BOUNDS_MS[i]``, ``LATENCY_BOUNDS_MS[i + 1]``), the last
bucket also every latency at or above its upper bound.

The renderings, which must agree (``apps/usage/tests/test_counters.py`` holds them to it):

- SQL (``SQL_COUNTERS``, ``SQL_LATENCY_HISTOGRAM``): aggregate select lists over rows with the
  events' columns, for the PostgreSQL writer's ``INSERT … SELECT`` into each rollup.
- Python (``COUNTED_FIELDS``, ``counters_of``, ``counters_add``, ``latency_bucket``): one event's
  contribution and its addition to a key's sums, for the SQLite writer and property rebuilds.
- ORM (``rollup_aggregates``, ``latency_histogram_aggregates``): aggregates over ``UsageEvent``,
  for rebuilds and for the partial days a report reads from events.
- ``Counters``: the counters as one Python value, which reports add rows up into.

Adding a counter: a field on ``UsageSums`` (with its migration) and a line in each rendering here.
Changing the histogram's bounds invalidates stored histograms: add buckets only with the model's
fields, a migration and ``rebuild_rollups``.
"""

from bisect import bisect_right
from dataclasses import dataclass, field, fields
from decimal import Decimal
from itertools import pairwise
from typing import Self

from django.db.models import Count, Q, Sum
from django.db.models.functions import Coalesce

from apps.usage.metering.contract import ERROR_OUTCOMES, TOKEN_FIELDS
from apps.usage.models import PriceSource, UsageSums

ROLLUP_COUNTERS = [f.name for f in UsageSums._meta.local_fields]

# A status from this one up makes a request an error, whatever its outcome.
ERROR_STATUS = 400

# The histogram's bucket bounds, in ms. Roughly log-spaced: fine where most requests are (tens of
# ms to seconds), coarse for the long tail of reasoning models and long streams.
LATENCY_BOUNDS_MS = (
    0,
    25,
    50,
    100,
    200,
    400,
    700,
    1_000,
    1_500,
    2_500,
    4_000,
    7_000,
    12_000,
    25_000,
    60_000,
    150_000,
    600_000,
)
# The ``OrganizationDailyRollup`` fields holding the buckets.
LATENCY_BUCKETS = [f"latency_bucket_{i:02d}" for i in range(len(LATENCY_BOUNDS_MS) - 1)]


# SQL. The names are the events' columns (and the PostgreSQL writer's staging table's); the
# literals are the constants above, never anything from outside.

_SQL = {
    "requests": "count(*)",
    "errors": (
        f'count(*) FILTER (WHERE "status" >= {ERROR_STATUS} OR "outcome" IN ('
        + ", ".join(f"'{outcome}'" for outcome in ERROR_OUTCOMES)
        + "))"
    ),
    **{name: f'coalesce(sum("{name}"), 0)' for name in TOKEN_FIELDS},
    "cost_usd": 'coalesce(sum("cost_usd"), 0)',
    "unpriced_requests": f"count(*) FILTER (WHERE \"price_source\" = '{PriceSource.UNPRICED}')",
    "usage_unknown_requests": (
        f"count(*) FILTER (WHERE \"price_source\" = '{PriceSource.USAGE_UNKNOWN}')"
    ),
    "latency_ms_sum": 'sum("latency_ms")',
    "ttfb_ms_sum": 'coalesce(sum("ttfb_ms"), 0)',
    "ttfb_count": 'count("ttfb_ms")',
}
# The counters as aggregates, in ``ROLLUP_COUNTERS`` order (a counter without one fails here).
SQL_COUNTERS = ", ".join(_SQL[name] for name in ROLLUP_COUNTERS)
# The histogram's buckets as aggregates, in ``LATENCY_BUCKETS`` order.
SQL_LATENCY_HISTOGRAM = ", ".join(
    f'count(*) FILTER (WHERE "latency_ms" >= {low}'
    + (f' AND "latency_ms" < {high})' if index < len(LATENCY_BUCKETS) - 1 else ")")
    for index, (low, high) in enumerate(pairwise(LATENCY_BOUNDS_MS))
)


# Python.

# The event fields the counters are computed from, in ``counters_of``'s order.
COUNTED_FIELDS = (
    "status",
    "outcome",
    *TOKEN_FIELDS,
    "cost_usd",
    "price_source",
    "latency_ms",
    "ttfb_ms",
)
_LATENCY_SUM = ROLLUP_COUNTERS.index("latency_ms_sum")


def counters_of(status, outcome, *rest) -> list:
    """One event's contribution to the counters, in ``ROLLUP_COUNTERS`` order, from its
    ``COUNTED_FIELDS``."""
    tokens, (cost, source, latency, ttfb) = rest[:-4], rest[-4:]
    return [
        1,
        1 if status >= ERROR_STATUS or outcome in ERROR_OUTCOMES else 0,
        *(value or 0 for value in tokens),
        Decimal(0) if cost is None else cost,
        1 if source == PriceSource.UNPRICED else 0,
        1 if source == PriceSource.USAGE_UNKNOWN else 0,
        latency,
        ttfb or 0,
        0 if ttfb is None else 1,
    ]


def latency_bucket(latency_ms: int) -> int:
    """The histogram bucket a latency falls in."""
    return min(max(bisect_right(LATENCY_BOUNDS_MS, latency_ms) - 1, 0), len(LATENCY_BUCKETS) - 1)


def counters_add(sums: dict, key: tuple, counted: list, *, histogram: bool = False) -> None:
    """Add one event's ``counters_of`` to the sums kept for ``key`` (``ROLLUP_COUNTERS`` order,
    then with ``histogram`` the ``LATENCY_BUCKETS``)."""
    total = sums.get(key)
    if total is None:
        total = sums[key] = [0] * (len(counted) + (len(LATENCY_BUCKETS) if histogram else 0))
    for position, value in enumerate(counted):
        total[position] += value
    if histogram:
        total[len(counted) + latency_bucket(counted[_LATENCY_SUM])] += 1


# ORM.


def rollup_aggregates() -> dict:
    """The counters as aggregates over ``UsageEvent`` rows, named as the rollups' fields."""
    zero = 0
    return {
        "requests": Count("id"),
        "errors": Count("id", filter=Q(status__gte=ERROR_STATUS) | Q(outcome__in=ERROR_OUTCOMES)),
        **{name: Coalesce(Sum(name), zero) for name in TOKEN_FIELDS},
        "unpriced_requests": Count("id", filter=Q(price_source=PriceSource.UNPRICED)),
        "usage_unknown_requests": Count("id", filter=Q(price_source=PriceSource.USAGE_UNKNOWN)),
        "cost_usd": Coalesce(
            Sum("cost_usd"), Decimal(0), output_field=UsageSums._meta.get_field("cost_usd")
        ),
        "latency_ms_sum": Coalesce(Sum("latency_ms"), zero),
        "ttfb_ms_sum": Coalesce(Sum("ttfb_ms"), zero),
        "ttfb_count": Count("ttfb_ms"),
    }


def latency_histogram_aggregates() -> dict:
    """The histogram's buckets as aggregates over ``UsageEvent`` rows, named as the fields."""
    last = len(LATENCY_BUCKETS) - 1
    aggregates = {}
    for index, name in enumerate(LATENCY_BUCKETS):
        condition = Q(latency_ms__gte=LATENCY_BOUNDS_MS[index])
        if index < last:
            condition &= Q(latency_ms__lt=LATENCY_BOUNDS_MS[index + 1])
        aggregates[name] = Count("id", filter=condition)
    return aggregates


# A Python value.


@dataclass
class Counters:
    """The counters as one value: rows read from rollups or aggregated from events (keyed by the
    counters' names) added up, or one part taken from another."""

    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: Decimal = field(default_factory=Decimal)
    unpriced_requests: int = 0
    usage_unknown_requests: int = 0
    latency_ms_sum: int = 0
    ttfb_ms_sum: int = 0
    ttfb_count: int = 0

    def add(self, values: "dict | Counters") -> Self:
        """Add a row (a mapping keyed by the counters' names; a None adds 0) or other counters."""
        for f in fields(self):
            amount = values[f.name] if isinstance(values, dict) else getattr(values, f.name)
            setattr(self, f.name, getattr(self, f.name) + (amount or 0))
        return self

    def subtract(self, values: "Counters") -> Self:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) - getattr(values, f.name))
        return self

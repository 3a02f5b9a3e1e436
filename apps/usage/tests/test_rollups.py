"""Daily rollups kept in step with events by the writer: what each counter counts, and that a
replayed or raced batch is counted once."""

import threading
import time
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from django.db import close_old_connections, connection

from apps.usage.metering.events import usage_events_write
from apps.usage.models import (
    DailyRollup,
    OrganizationDailyRollup,
    PropertyDailyRollup,
    UsageEvent,
)
from apps.usage.rollups import rollups_rebuild_day
from apps.usage.tests.test_rollups_by_model_and_property import rollup_rows
from apps.usage.tests.test_writer import _record

pytestmark = pytest.mark.django_db

M = Decimal(1_000_000)
# gpt-4o-mini: $0.15 input, $0.075 cached input, $0.60 output per million.
MINI_1200_1000_300 = (200 * Decimal("0.15") + 1000 * Decimal("0.075") + 300 * Decimal("0.6")) / M


def _rollup(org, **key):
    return DailyRollup.objects.for_org(org).get(**key)


def _rollup_values(org):
    return sorted(
        DailyRollup.objects.for_org(org).values_list(
            "day",
            "customer",
            "provider",
            "model",
            "requests",
            "errors",
            "input_tokens",
            "cached_input_tokens",
            "cache_write_tokens",
            "cache_write_1h_tokens",
            "output_tokens",
            "reasoning_tokens",
            "cost_usd",
            "unpriced_requests",
            "latency_ms_sum",
            "ttfb_ms_sum",
            "ttfb_count",
        )
    )


def test_counters_sum_the_days_events_and_count_nulls_as_zero(org):
    usage_events_write(
        [
            _record(org, "r1", reasoning_tokens=40, latency_ms=20, ttfb_ms=10),
            _record(
                org,
                "r2",
                input_tokens=100,
                cached_input_tokens=None,
                cache_write_tokens=None,
                output_tokens=50,
                reasoning_tokens=None,
                latency_ms=30,
                ttfb_ms=None,
            ),
            # An upstream error without usage: a request and an error, tokens unknown, billed
            # nothing (no_usage): neither unpriced nor usage-unknown.
            _record(
                org,
                "r3",
                status=429,
                input_tokens=None,
                cached_input_tokens=None,
                cache_write_tokens=None,
                output_tokens=None,
                reasoning_tokens=None,
                latency_ms=5,
                ttfb_ms=4,
            ),
        ]
    )

    rollup = _rollup(org, customer="acme", model="gpt-4o-mini")
    assert rollup.day == date(2026, 11, 2)
    assert (rollup.provider, rollup.requests, rollup.errors) == ("openai", 3, 1)
    assert (rollup.input_tokens, rollup.cached_input_tokens, rollup.output_tokens) == (
        1300,
        1000,
        350,
    )
    assert (rollup.cache_write_tokens, rollup.cache_write_1h_tokens) == (0, 0)
    assert rollup.reasoning_tokens == 40
    # r2: 100 uncached in, 50 out.
    assert rollup.cost_usd == MINI_1200_1000_300 + (100 * Decimal("0.15") + 50 * Decimal("0.6")) / M
    assert (rollup.unpriced_requests, rollup.usage_unknown_requests) == (0, 0)
    assert (rollup.latency_ms_sum, rollup.ttfb_ms_sum, rollup.ttfb_count) == (55, 14, 2)


def test_rows_are_keyed_by_utc_day_customer_provider_and_model(org, other_org):
    usage_events_write(
        [
            _record(org, "k1"),
            _record(org, "k2", customer=None),
            _record(org, "k3", customer="globex"),
            _record(org, "k4", model="gpt-4o"),
            _record(org, "k5", provider="anthropic", model="claude-haiku-4-5"),
            # 23:30 in New York on the 2nd is the 3rd in UTC.
            _record(org, "k6", timestamp="2026-11-02T23:30:00-05:00"),
            _record(other_org, "k7"),
        ]
    )

    keys = sorted(
        DailyRollup.objects.for_org(org).values_list("day", "customer", "provider", "model")
    )
    assert keys == [
        (date(2026, 11, 2), "", "openai", "gpt-4o-mini"),
        (date(2026, 11, 2), "acme", "anthropic", "claude-haiku-4-5"),
        (date(2026, 11, 2), "acme", "openai", "gpt-4o"),
        (date(2026, 11, 2), "acme", "openai", "gpt-4o-mini"),
        (date(2026, 11, 2), "globex", "openai", "gpt-4o-mini"),
        (date(2026, 11, 3), "acme", "openai", "gpt-4o-mini"),
    ]
    assert DailyRollup.objects.for_org(other_org).get().requests == 1


def test_an_unknown_model_counts_as_unpriced_and_adds_no_cost(org):
    usage_events_write(
        [_record(org, "u1", model="ft:private"), _record(org, "u2", model="ft:private")]
    )

    rollup = _rollup(org, model="ft:private")
    assert (rollup.requests, rollup.unpriced_requests, rollup.cost_usd) == (2, 2, Decimal(0))
    assert rollup.input_tokens == 2400


@pytest.mark.parametrize(
    ("status", "outcome", "is_error"),
    [
        (200, "ok", False),
        (200, "client_disconnected", False),
        (200, "upstream_disconnected", True),
        (200, "costr_error", True),
        (502, "upstream_error", True),
        (400, "ok", True),
        (500, "ok", True),
    ],
)
def test_what_counts_as_an_error(org, status, outcome, is_error):
    usage_events_write([_record(org, "e1", status=status, outcome=outcome)])

    assert _rollup(org, customer="acme").errors == int(is_error)


def test_a_replayed_batch_leaves_the_rollups_unchanged(org):
    batch = [_record(org, f"rp{n}", output_tokens=n) for n in range(20)]
    assert usage_events_write(batch) == 20
    before = _rollup_values(org)

    assert usage_events_write(batch) == 0
    assert usage_events_write([*batch[5:], _record(org, "rp_new")]) == 1

    after = _rollup_values(org)
    assert after != before
    rollup = _rollup(org, customer="acme")
    assert rollup.requests == 21 == UsageEvent.objects.for_org(org).count()
    assert rollup.output_tokens == sum(range(20)) + 300


def test_a_record_repeated_within_one_batch_counts_once(org):
    assert usage_events_write([_record(org, "dup"), _record(org, "dup", output_tokens=9)]) == 1

    assert _rollup(org, customer="acme").requests == 1
    assert UsageEvent.objects.for_org(org).get().output_tokens == 300


@pytest.mark.django_db(transaction=True)
def test_two_writers_racing_on_the_same_records_count_each_once(org):
    """Two threads, two connections, overlapping batches at the same moment: on PostgreSQL the
    unique index makes one wait for the other; on SQLite the database lock does."""
    shared = [_record(org, f"race{n}", output_tokens=n + 1) for n in range(300)]
    mine = [_record(org, f"a{n}") for n in range(50)]
    theirs = [_record(org, f"b{n}") for n in range(70)]
    start = threading.Barrier(2)
    stored, errors = [], []

    def write(batch):
        try:
            start.wait()
            stored.append(usage_events_write(batch))
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)
        finally:
            close_old_connections()
            connection.close()

    threads = [
        threading.Thread(target=write, args=(shared + mine,)),
        threading.Thread(target=write, args=(list(reversed(shared)) + theirs,)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert sum(stored) == 420
    rollup = _rollup(org, customer="acme")
    assert rollup.requests == 420 == UsageEvent.objects.for_org(org).count()
    assert rollup.output_tokens == sum(range(1, 301)) + 120 * 300


def test_a_rebuilt_day_equals_what_the_writer_summed(org):
    usage_events_write(
        [
            _record(org, "b1"),
            _record(org, "b2", status=500, input_tokens=None, output_tokens=None, ttfb_ms=None),
            _record(org, "b3", customer=None, model="ft:private"),
            _record(org, "b4", provider="anthropic", model="claude-sonnet-4-5"),
            _record(org, "b5", timestamp=datetime(2026, 11, 3, 1, tzinfo=UTC).isoformat()),
        ]
    )
    written = _rollup_values(org)
    written_by_model = rollup_rows(OrganizationDailyRollup, org)
    written_by_property = rollup_rows(PropertyDailyRollup, org)

    # 2 November: 3 customer/model rows, 3 model rows, 1 property value (feature=chat);
    # 3 November: one of each.
    assert rollups_rebuild_day(organization=org, day=date(2026, 11, 2)) == 3 + 3 + 1
    assert rollups_rebuild_day(organization=org, day=date(2026, 11, 3)) == 1 + 1 + 1

    assert _rollup_values(org) == written
    assert rollup_rows(OrganizationDailyRollup, org) == written_by_model
    assert rollup_rows(PropertyDailyRollup, org) == written_by_property


@pytest.mark.django_db(transaction=True)
def test_a_rebuild_racing_the_writer_neither_double_counts_nor_misses(org):
    """The writer adds batches to a day while that day is rebuilt again and again from its
    events; at the end the rollup is the sum of the events. Without the organization's rollup
    lock (PostgreSQL), a writer committing between a rebuild's read and write is counted twice
    or not at all."""
    day = date(2026, 11, 2)
    done = threading.Event()
    errors = []

    def write():
        try:
            for batch in range(40):
                usage_events_write(
                    [_record(org, f"w{batch}_{n}", output_tokens=n + 1) for n in range(25)]
                )
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)
        finally:
            done.set()
            connection.close()

    def rebuild():
        try:
            while not done.is_set():
                rollups_rebuild_day(organization=org, day=day)
                if connection.vendor == "sqlite":
                    # SQLite's writers queue for one lock: a rebuild that never lets go would
                    # starve the writer.
                    time.sleep(0.002)
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=write), threading.Thread(target=rebuild)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    rollup = _rollup(org, customer="acme")
    assert rollup.requests == 1000 == UsageEvent.objects.for_org(org).count()
    assert rollup.output_tokens == 40 * sum(range(1, 26))
    assert rollup.cost_usd == sum(
        UsageEvent.objects.for_org(org).values_list("cost_usd", flat=True), Decimal(0)
    )

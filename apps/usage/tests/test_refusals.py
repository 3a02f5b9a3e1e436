"""Requests refused before forwarding, counted per organization, day, status and code."""

from datetime import date

import pytest

from apps.usage.metering.events import refusals_record
from apps.usage.models import RefusalCount

pytestmark = pytest.mark.django_db


def _counts(org):
    return sorted(RefusalCount.objects.for_org(org).values_list("day", "status", "code", "count"))


def test_counts_are_added_per_org_day_status_and_code(org, other_org):
    added = refusals_record(
        [
            {
                "org_slug": org.slug,
                "day": "2026-11-02",
                "status": 401,
                "code": "bad_token",
                "count": 3,
            },
            {
                "org_slug": org.slug,
                "day": "2026-11-02",
                "status": 401,
                "code": "bad_token",
                "count": 2,
            },
            {
                "org_slug": org.slug,
                "day": "2026-11-02",
                "status": 413,
                "code": "too_large",
                "count": 1,
            },
            {
                "org_slug": org.slug,
                "day": "2026-11-03",
                "status": 401,
                "code": "bad_token",
                "count": 4,
            },
            {
                "org_slug": other_org.slug,
                "day": "2026-11-02",
                "status": 403,
                "code": "scope",
                "count": 7,
            },
        ]
    )

    assert added == 17
    assert _counts(org) == [
        (date(2026, 11, 2), 401, "bad_token", 5),
        (date(2026, 11, 2), 413, "too_large", 1),
        (date(2026, 11, 3), 401, "bad_token", 4),
    ]
    assert _counts(other_org) == [(date(2026, 11, 2), 403, "scope", 7)]


def test_a_second_report_adds_to_the_first(org):
    item = {"org_slug": org.slug, "day": "2026-11-02", "status": 400, "code": "no_key", "count": 2}

    refusals_record([item])
    refusals_record([item, {**item, "count": 5}])

    assert _counts(org) == [(date(2026, 11, 2), 400, "no_key", 9)]


def test_unknown_organizations_are_dropped_and_the_rest_kept(org):
    added = refusals_record(
        [
            {
                "org_slug": "no-such-org",
                "day": "2026-11-02",
                "status": 401,
                "code": "x",
                "count": 9,
            },
            {"org_slug": org.slug, "day": "2026-11-02", "status": 401, "code": "x", "count": 1},
        ]
    )

    assert added == 1
    assert RefusalCount.objects.unscoped(reason="test: nothing else was stored").count() == 1


def test_nothing_to_record(org):
    assert refusals_record([]) == 0
    assert (
        refusals_record(
            [{"org_slug": "gone", "day": "2026-11-02", "status": 401, "code": "x", "count": 1}]
        )
        == 0
    )
    assert _counts(org) == []

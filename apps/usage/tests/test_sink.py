"""The in-process sink: records handed over are all written, once, and flush() waits for them."""

import pytest

from apps.usage import sink
from apps.usage.models import UsageEvent
from apps.usage.tests.test_writer import _record

# The writer thread uses its own connection: it only sees committed rows.
pytestmark = pytest.mark.django_db(transaction=True)


def test_every_record_handed_over_is_written_once_by_the_time_flush_returns(org):
    for index in range(50):
        sink.emit(_record(org, f"req_sink_{index}"))

    assert sink.flush(timeout=10)

    stored = UsageEvent.objects.for_org(org).values_list("request_id", flat=True)
    assert sorted(stored) == sorted(f"req_sink_{index}" for index in range(50))


def test_flush_with_nothing_pending_returns_at_once_and_again_after_more_work(org):
    assert sink.flush(timeout=10)

    sink.emit(_record(org, "req_late"))
    assert sink.flush(timeout=10)
    assert sink.flush(timeout=10)

    assert UsageEvent.objects.for_org(org).filter(request_id="req_late").count() == 1

"""Usage records as the proxy hands them to the sink, for tests that store usage through the real
writer (so events, customers and rollups are all written as in production)."""

import itertools
from datetime import UTC, datetime

from apps.usage.metering.contract import TOKEN_FIELDS
from apps.usage.metering.events import usage_events_write

_ids = itertools.count(1)

# Every token count null, as in a record whose provider reported no usage: **NO_TOKENS over
# usage_record's counts.
NO_TOKENS = dict.fromkeys(TOKEN_FIELDS)


def usage_record(organization, **overrides) -> dict:
    return {
        "request_id": f"req_test_{next(_ids)}",
        "organization_id": organization.pk,
        "token_id": None,
        "timestamp": datetime(2026, 11, 2, 12, 0, tzinfo=UTC).isoformat(),
        "provider": "openai",
        "endpoint": "chat",
        "model": "gpt-4o-mini",
        "requested_model": "gpt-4o-mini",
        "customer": "acme",
        "properties": {},
        "status": 200,
        "stream": False,
        "outcome": "ok",
        "input_tokens": 1000,
        "cached_input_tokens": 0,
        "cache_write_tokens": 0,
        "cache_write_1h_tokens": None,
        "output_tokens": 100,
        "reasoning_tokens": 0,
        "service_tier": "",
        "raw_usage": {"prompt_tokens": 1000, "completion_tokens": 100},
        "latency_ms": 20,
        "ttfb_ms": 10,
        "overhead_ms": 0.4,
        **overrides,
    }


def store_usage(organization, **overrides) -> dict:
    """Write one record through the writer and return it."""
    record = usage_record(organization, **overrides)
    usage_events_write([record])
    return record

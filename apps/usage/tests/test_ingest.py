"""``POST /api/v1/ingest/``: usage an SDK reports for calls it made straight to the provider."""

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import OperationalError, connection
from genai_prices import Usage, calc_price

from apps.keys import keycache, services
from apps.usage.models import Customer, PriceOverride, UsageEvent

pytestmark = pytest.mark.django_db

URL = "/api/v1/ingest/"
COST_PLACES = Decimal("0.000000000001")


@pytest.fixture(autouse=True)
def _fresh_cache():
    keycache._drop_local(None)
    yield
    keycache._drop_local(None)


@pytest.fixture
def ingest_token(org):
    created = services.proxy_token_create(
        organization=org, name="sdk", scopes=["ingest"], actor=None
    )
    return created


@pytest.fixture
def post(client, ingest_token):
    def send(body, token=ingest_token.plaintext, **extra):
        data = body if isinstance(body, str | bytes) else json.dumps(body)
        return client.post(
            URL,
            data,
            content_type=extra.pop("content_type", "application/json"),
            HTTP_AUTHORIZATION=f"Bearer {token}",
            **extra,
        )

    return send


def _when(**delta) -> datetime:
    return datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1, **delta)


def _event(event_id="evt-1", **overrides):
    return {
        "event_id": event_id,
        "timestamp": _when().isoformat().replace("+00:00", "Z"),
        "provider": "openai",
        "model": "gpt-4o-mini",
        "endpoint": "chat",
        "customer": "acme",
        "properties": {"feature": "summaries"},
        "status": 200,
        "input_tokens": 1200,
        "cached_input_tokens": 1000,
        "output_tokens": 300,
        "latency_ms": 840,
        **overrides,
    }


def _catalog_cost(model, provider, when, **usage) -> Decimal:
    """What genai-prices itself says, asked directly."""
    price = calc_price(Usage(**usage), model, provider_id=provider, genai_request_timestamp=when)
    return Decimal(price.total_price).quantize(COST_PLACES)


# --- Accepted --------------------------------------------------------------------------------


def test_a_valid_batch_is_stored_priced_by_costr_and_answered_200(post, org, ingest_token):
    anthropic_at = _when(minutes=5)
    events = [
        _event("a"),
        _event(
            "b",
            provider="anthropic",
            model="claude-sonnet-4-5",
            endpoint="messages",
            customer="globex",
            timestamp=anthropic_at.isoformat(),
            input_tokens=5000,
            cached_input_tokens=2000,
            cache_write_tokens=1000,
            cache_write_1h_tokens=400,
            output_tokens=800,
            reasoning_tokens=300,
        ),
    ]

    response = post({"events": events})

    assert response.status_code == 200, response.content
    assert response.json() == {"accepted": 2, "duplicates": 0, "rejected": []}
    stored = {e.requested_model: e for e in UsageEvent.objects.for_org(org)}
    openai = stored["gpt-4o-mini"]
    # gpt-4o-mini: 200 uncached at $0.15, 1000 cached at $0.075, 300 out at $0.60 per million.
    assert openai.cost_usd == Decimal("0.000285")
    assert openai.cost_usd == _catalog_cost(
        "gpt-4o-mini",
        "openai",
        openai.timestamp,
        input_tokens=1200,
        cache_read_tokens=1000,
        output_tokens=300,
    )
    assert (openai.price_source, openai.outcome, openai.endpoint) == ("catalog", "ok", "chat")
    assert (openai.status, openai.latency_ms, openai.stream) == (200, 840, False)
    assert openai.customer.external_id == "acme"
    assert openai.properties == {"feature": "summaries"}
    assert openai.token_id == ingest_token.token.pk
    claude = stored["claude-sonnet-4-5"]
    assert claude.timestamp == anthropic_at
    assert claude.cost_usd == _catalog_cost(
        "claude-sonnet-4-5",
        "anthropic",
        anthropic_at,
        input_tokens=5000,
        cache_read_tokens=2000,
        cache_write_tokens=1000,
        cache_write_1h_tokens=400,
        output_tokens=800,
    )
    assert (claude.cache_write_1h_tokens, claude.reasoning_tokens) == (400, 300)
    assert set(Customer.objects.for_org(org).values_list("external_id", flat=True)) == {
        "acme",
        "globex",
    }


def test_optional_fields_take_their_defaults(post, org):
    minimal = {
        "event_id": "m",
        "timestamp": _when().isoformat(),
        "provider": "google",
        "model": "gemini-2.5-flash",
        "input_tokens": None,
        "output_tokens": None,
    }

    assert post({"events": [minimal]}).status_code == 200

    event = UsageEvent.objects.for_org(org).get()
    assert (event.endpoint, event.status, event.outcome, event.latency_ms) == (
        "other",
        200,
        "ok",
        0,
    )
    assert (event.customer, event.properties) == (None, {})
    # No usage on the default endpoint, `other`, which the provider bills nothing for.
    assert (event.cost_usd, event.price_source) == (Decimal(0), "no_usage")


def test_an_error_status_is_recorded_as_an_upstream_error(post, org):
    post(
        {
            "events": [
                _event(status=429, input_tokens=None, cached_input_tokens=None, output_tokens=None)
            ]
        }
    )

    assert UsageEvent.objects.for_org(org).get().outcome == "upstream_error"


def test_an_override_of_the_org_prices_ingested_events(post, org):
    PriceOverride.objects.create(
        organization=org,
        model_pattern="gpt-4o*",
        valid_from=_when(days=2),
        input_per_mtok=Decimal("1"),
        output_per_mtok=Decimal("2"),
    )

    post({"events": [_event(cached_input_tokens=None)]})

    event = UsageEvent.objects.for_org(org).get()
    assert (event.cost_usd, event.price_source) == (Decimal("0.0018"), "override")


def test_an_event_keeps_the_source_it_names_and_is_ingest_by_default(post, org):
    response = post({"events": [_event("a"), _event("b", source="sdk_fallback")]})

    assert response.json()["accepted"] == 2
    stored = sorted(UsageEvent.objects.for_org(org).values_list("source", flat=True))
    assert stored == ["ingest", "sdk_fallback"]


# --- Idempotency -----------------------------------------------------------------------------


def test_an_event_sent_again_in_a_later_batch_is_a_duplicate_stored_once(post, org):
    assert post({"events": [_event("a"), _event("b")]}).json()["accepted"] == 2

    response = post({"events": [_event("b"), _event("c")]})

    assert response.status_code == 200
    assert response.json() == {"accepted": 1, "duplicates": 1, "rejected": []}
    assert UsageEvent.objects.for_org(org).count() == 3


def test_the_same_event_id_from_two_orgs_makes_two_events(post, org, other_org):
    theirs = services.proxy_token_create(
        organization=other_org, name="sdk", scopes=["ingest"], actor=None
    )

    mine = post({"events": [_event("shared-id")]})
    other = post({"events": [_event("shared-id")]}, token=theirs.plaintext)

    assert mine.json()["accepted"] == other.json()["accepted"] == 1
    assert UsageEvent.objects.for_org(org).count() == 1
    assert UsageEvent.objects.for_org(other_org).count() == 1


def test_an_event_id_repeated_within_a_batch_is_rejected_after_its_first(post, org):
    response = post({"events": [_event("x"), _event("y"), _event("x", model="gpt-4o")]})

    assert response.status_code == 207
    assert response.json()["rejected"] == [
        {
            "index": 2,
            "event_id": "x",
            "errors": {"event_id": ["Repeats the event_id of events[0]."]},
        }
    ]
    models = sorted(UsageEvent.objects.for_org(org).values_list("requested_model", flat=True))
    assert models == ["gpt-4o-mini", "gpt-4o-mini"]


# --- Rejected --------------------------------------------------------------------------------


def test_some_rejected_is_207_with_indexes_and_errors_and_the_rest_stored(post, org):
    events = [
        _event("ok-1"),
        _event("bad-provider", provider="mistral"),
        _event("ok-2"),
        _event("bad-tokens", input_tokens=-1, output_tokens="12"),
        "not an object",
        None,
    ]

    response = post({"events": events})

    assert response.status_code == 207
    body = response.json()
    assert (body["accepted"], body["duplicates"]) == (2, 0)
    assert [(r["index"], r["event_id"]) for r in body["rejected"]] == [
        (1, "bad-provider"),
        (3, "bad-tokens"),
        (4, None),
        (5, None),
    ]
    assert set(body["rejected"][0]["errors"]) == {"provider"}
    assert set(body["rejected"][1]["errors"]) == {"input_tokens", "output_tokens"}
    assert set(body["rejected"][2]["errors"]) == {"non_field_errors"}
    assert set(body["rejected"][3]["errors"]) == {"non_field_errors"}
    assert UsageEvent.objects.for_org(org).count() == 2


def test_none_valid_is_400_with_the_counts_and_an_error_and_nothing_stored(post, org):
    response = post({"events": [_event(provider="x"), _event("b", model="")]})

    assert response.status_code == 400
    body = response.json()
    assert (body["accepted"], body["duplicates"]) == (0, 0)
    assert [r["index"] for r in body["rejected"]] == [0, 1]
    assert body["error"]["code"] == "invalid"
    assert not UsageEvent.objects.for_org(org).exists()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"event_id": ""}, "event_id"),
        ({"event_id": "x" * 65}, "event_id"),
        ({"event_id": 12}, "event_id"),
        ({"provider": "OpenAI"}, "provider"),
        ({"model": "   "}, "model"),
        ({"model": "m" * 256}, "model"),
        ({"endpoint": "images"}, "endpoint"),
        ({"customer": "c" * 256}, "customer"),
        ({"customer": 42}, "customer"),
        ({"status": 99}, "status"),
        ({"status": "200"}, "status"),
        ({"latency_ms": -1}, "latency_ms"),
        ({"latency_ms": 1.5}, "latency_ms"),
        ({"input_tokens": True}, "input_tokens"),
        ({"input_tokens": 1200.0}, "input_tokens"),
        ({"input_tokens": 10**13}, "input_tokens"),
        ({"output_tokens": "300"}, "output_tokens"),
        ({"reasoning_tokens": -5}, "reasoning_tokens"),
        ({"timestamp": "yesterday"}, "timestamp"),
        ({"timestamp": 1767225600}, "timestamp"),
        ({"timestamp": "2026-11-20T10:00:00"}, "timestamp"),
        ({"timestamp": "2026-11-20"}, "timestamp"),
        ({"timestamp": "0001-01-01T00:00:00+14:00"}, "timestamp"),
        ({"properties": ["a"]}, "properties"),
        ({"properties": {"n": 1}}, "properties"),
        ({"properties": {"": "x"}}, "properties"),
        ({"properties": {"k": "v" * 256}}, "properties"),
        # Names as the proxy takes them from X-Costr-Property-* headers: at most 64 characters.
        ({"properties": {"n" * 65: "v"}}, "properties"),
        ({"properties": {f"k{i}": "v" for i in range(21)}}, "properties"),
        ({"properties": {"k": "a\x00b"}}, "properties"),
        ({"model": "gpt\x00"}, "model"),
        ({"source": ""}, "source"),
        ({"source": "s" * 33}, "source"),
        ({"source": "sdk fallback"}, "source"),
        ({"source": 7}, "source"),
        ({"source": "proxy"}, "source"),
    ],
)
def test_each_field_is_checked(post, org, changes, field):
    response = post({"events": [_event(**changes)]})

    assert response.status_code == 400, response.content
    assert list(response.json()["rejected"][0]["errors"]) == [field]
    assert not UsageEvent.objects.for_org(org).exists()


@pytest.mark.parametrize("missing", ["event_id", "timestamp", "provider", "model", "input_tokens"])
def test_required_fields_are_required(post, missing):
    event = _event()
    del event[missing]

    response = post({"events": [event]})

    assert response.json()["rejected"][0]["errors"] == {missing: ["This field is required."]}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        (
            {"input_tokens": 1000, "cached_input_tokens": 800, "cache_write_tokens": 300},
            "input_tokens",
        ),
        ({"input_tokens": None, "cached_input_tokens": 10}, "input_tokens"),
        ({"cache_write_tokens": 100, "cache_write_1h_tokens": 101}, "cache_write_1h_tokens"),
        ({"cache_write_1h_tokens": 5}, "cache_write_1h_tokens"),
        ({"output_tokens": 10, "reasoning_tokens": 11}, "output_tokens"),
    ],
)
def test_token_counts_follow_the_usage_event_conventions(post, changes, field):
    response = post({"events": [_event(**changes)]})

    assert response.status_code == 400
    assert list(response.json()["rejected"][0]["errors"]) == [field]


def test_counts_at_the_limits_of_the_conventions_are_accepted(post, org):
    event = _event(
        input_tokens=1000,
        cached_input_tokens=700,
        cache_write_tokens=300,
        cache_write_1h_tokens=300,
        output_tokens=50,
        reasoning_tokens=50,
    )

    assert post({"events": [event]}).status_code == 200


def test_a_cost_from_the_client_is_refused_with_the_reason(post, org):
    response = post({"events": [_event(cost_usd="0.01"), _event("b", colour="red")]})

    assert response.status_code == 400
    first, second = response.json()["rejected"]
    assert "prices usage itself" in first["errors"]["cost_usd"][0]
    assert second["errors"] == {"colour": ["Unknown field."]}


def test_timestamps_must_lie_within_retention_and_not_in_the_future(post, org):
    org.retention_days = 7
    org.save(update_fields=["retention_days"])
    now = datetime.now(UTC)
    events = [
        _event("old", timestamp=(now - timedelta(days=7, minutes=1)).isoformat()),
        _event("kept", timestamp=(now - timedelta(days=6, hours=23)).isoformat()),
        _event("skewed", timestamp=(now + timedelta(minutes=2)).isoformat()),
        _event("future", timestamp=(now + timedelta(minutes=10)).isoformat()),
        _event("offset", timestamp=(now - timedelta(hours=2)).astimezone().isoformat()),
    ]

    response = post({"events": events})

    assert response.status_code == 207
    rejected = {r["event_id"]: r["errors"] for r in response.json()["rejected"]}
    assert rejected == {
        "old": {"timestamp": ["Older than this organization's retention of 7 days."]},
        "future": {"timestamp": ["Lies in the future."]},
    }
    assert UsageEvent.objects.for_org(org).count() == 3


def test_a_lone_surrogate_is_rejected_not_a_server_error(post, org):
    event = json.dumps(_event()).replace('"acme"', '"\\ud800"')
    body = '{"events": [' + event + "]}"

    response = post(body)

    assert response.status_code == 400
    assert list(response.json()["rejected"][0]["errors"]) == ["customer"]


# --- Malformed requests ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        "",
        "{",
        "not json",
        "[]",
        '"events"',
        "null",
        "42",
        "{}",
        '{"events": null}',
        '{"events": {}}',
        '{"events": "x"}',
        '{"events": []}',
        '{"events": [NaN]}',
        '{"events": [{"input_tokens": Infinity}]}',
        "[" * 100_000 + "]" * 100_000,
        '{"events": ' + "[" * 50_000 + "]" * 50_000 + "}",
        b'{"events": ["\xff\xfe"]}',
    ],
)
def test_malformed_bodies_are_400_in_the_error_shape(post, org, body):
    response = post(body)

    assert response.status_code == 400, response.content[:300]
    error = response.json()["error"]
    assert error["code"] in ("parse_error", "invalid")
    assert error["message"]
    assert not UsageEvent.objects.for_org(org).exists()


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("application/json; charset=utf-16", 400),
        ("application/json; charset=utf-32", 400),
        ("application/json; charset=no-such-codec", 200),
        ("text/plain", 415),
        ("", 415),
    ],
)
def test_odd_content_types_never_fail_the_server(client, org, ingest_token, content_type, status):
    body = json.dumps({"events": [_event()]}).encode()

    response = client.generic(
        "POST",
        URL,
        body,
        content_type=content_type,
        HTTP_AUTHORIZATION=f"Bearer {ingest_token.plaintext}",
    )

    assert response.status_code == status, response.content
    if status >= 400:
        assert response.json()["error"]["code"] in ("parse_error", "unsupported_media_type")


def test_a_client_that_accepts_no_json_gets_406_in_json(post, org):
    response = post({"events": [_event()]}, HTTP_ACCEPT="text/html")

    assert response.status_code == 406
    assert response.json()["error"]["code"] == "not_acceptable"
    assert not UsageEvent.objects.for_org(org).exists()


def test_more_than_500_events_is_400_and_nothing_is_stored(post, org):
    response = post({"events": [_event(f"e{i}") for i in range(501)]})

    assert response.status_code == 400
    assert response.json()["error"]["details"]["events"]
    assert not UsageEvent.objects.for_org(org).exists()


def test_500_events_are_accepted(post, org):
    response = post({"events": [_event(f"e{i}") for i in range(500)]})

    assert response.json() == {"accepted": 500, "duplicates": 0, "rejected": []}
    assert UsageEvent.objects.for_org(org).count() == 500


def test_an_oversized_body_is_413(post, org):
    response = post({"events": [_event()]}, CONTENT_LENGTH=str(9 * 1024 * 1024))

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_a_database_failure_is_503_and_nothing_is_stored(post, org):
    def refuse_event_inserts(execute, sql, params, many, context):
        if sql.lstrip().upper().startswith("INSERT") and "usage_usageevent" in sql:
            raise OperationalError("server closed the connection unexpectedly")
        return execute(sql, params, many, context)

    with connection.execute_wrapper(refuse_event_inserts):
        response = post({"events": [_event("a", customer="brand-new")]})

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "database_unavailable"
    assert not UsageEvent.objects.for_org(org).exists()
    assert not Customer.objects.for_org(org).filter(external_id="brand-new").exists()


def test_usage_details_are_stored_and_priced(post, org):
    """whisper-1 at $0.36 per audio hour; gpt-4o-transcribe at $2.50 text in, $6 audio in, $10
    out (1000 in, 800 of them audio, 100 out)."""
    events = [
        _event(
            "whisper",
            model="whisper-1",
            endpoint="transcriptions",
            input_tokens=None,
            cached_input_tokens=None,
            output_tokens=None,
            usage_details={"audio_seconds": 90.5},
        ),
        _event(
            "transcribe",
            model="gpt-4o-transcribe",
            endpoint="transcriptions",
            input_tokens=1000,
            cached_input_tokens=None,
            output_tokens=100,
            usage_details={"input_audio_tokens": 800},
        ),
    ]

    assert post({"events": events}).status_code == 200

    stored = {
        event.model: (event.usage_details, event.cost_usd, event.price_source)
        for event in UsageEvent.objects.for_org(org)
    }
    assert stored == {
        "whisper-1": (
            {"audio_seconds": 90.5},
            Decimal("0.36") * Decimal("90.5") / 3600,
            "catalog",
        ),
        "gpt-4o-transcribe": (
            {"input_audio_tokens": 800},
            (200 * Decimal("2.5") + 800 * 6 + 100 * 10) / Decimal(1_000_000),
            "catalog",
        ),
    }


@pytest.mark.parametrize(
    ("details", "message"),
    [
        ({"audio_minutes": 2}, "audio_minutes: Unknown usage detail; the known ones are"),
        ({"input_characters": "1000"}, "input_characters: An integer from 0 to"),
        ({"input_audio_tokens": 10.0}, "input_audio_tokens: An integer from 0 to"),
        ({"output_audio_tokens": -1}, "output_audio_tokens: An integer from 0 to"),
        ({"audio_seconds": True}, "audio_seconds: A number of seconds from 0 to"),
        ({"audio_seconds": 10**13}, "audio_seconds: A number of seconds from 0 to"),
        ([60], "usage_details is a JSON object, or null."),
        ({"input_audio_tokens": 1201}, "input_audio_tokens is a share of input_tokens"),
        ({"output_audio_tokens": 301}, "output_audio_tokens is a share of output_tokens"),
        (
            {"input_audio_tokens": 900, "cache_audio_read_tokens": 901},
            "cache_audio_read_tokens is a share of input_audio_tokens",
        ),
        ({"cache_audio_read_tokens": 5}, "cache_audio_read_tokens is a share of input_audio"),
    ],
)
def test_bad_usage_details_are_refused_with_the_reason(post, org, details, message):
    """The event (1200 in, 1000 of them cached, 300 out) is rejected, with the reason under
    ``usage_details``; nothing is stored."""
    response = post({"events": [_event(usage_details=details)]})

    assert response.status_code == 400
    errors = response.json()["rejected"][0]["errors"]
    assert list(errors) == ["usage_details"]
    assert any(text.startswith(message) for text in errors["usage_details"]), errors
    assert not UsageEvent.objects.for_org(org).exists()

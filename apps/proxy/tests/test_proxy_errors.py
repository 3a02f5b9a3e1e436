"""What the client sees when Costr refuses a request or the upstream fails.

Costr's own refusals must look like the provider's own errors, so each SDK raises the error it
always raises, and carry ``X-Costr-Error`` so a client can tell them apart and fall back. They
forward nothing and record nothing. Upstream errors are the provider's business: they pass
through byte for byte and are recorded like any other answer. An upstream Costr cannot reach is
answered 502/504, marked, and recorded with outcome ``upstream_error``.
"""

import json
import socket
import time
from datetime import timedelta

import anthropic
import httpx
import openai
import pytest
from django.utils import timezone
from google.genai import errors as genai_errors
from google.genai import types

from apps.keys import keycache, services
from apps.keys.models import ProxyToken
from apps.usage.models import UsageEvent

PROVIDERS = ("openai", "anthropic", "google")
MESSAGES = [{"role": "user", "content": "Hi"}]
# Where each provider's SDK sends a plain generation call, on the upstream and below
# /p/<org>/<provider> alike.
GENERATE_PATH = {
    "openai": "/v1/chat/completions",
    "anthropic": "/v1/messages",
    "google": "/v1beta/models/gemini-2.5-flash:generateContent",
}
GENERATE_BODY = {
    "openai": {"model": "gpt-4o-mini", "messages": MESSAGES},
    "anthropic": {"model": "claude-haiku-4-5", "max_tokens": 16, "messages": MESSAGES},
    "google": {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]},
}
SDK_ERRORS = {
    ("openai", 400): openai.BadRequestError,
    ("openai", 401): openai.AuthenticationError,
    ("openai", 403): openai.PermissionDeniedError,
    ("anthropic", 400): anthropic.BadRequestError,
    ("anthropic", 401): anthropic.AuthenticationError,
    ("anthropic", 403): anthropic.PermissionDeniedError,
}
ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    413: "request_too_large",
}
GOOGLE_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    413: "INVALID_ARGUMENT",
    502: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def _sdk_call(sdk, provider: str, base_url: str, credential: str, headers=None):
    """One minimal call through the official SDK, without retries; the error it raised."""
    headers = headers or {}
    try:
        if provider == "openai":
            sdk.openai(base_url, credential).chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, extra_headers=headers
            )
        elif provider == "anthropic":
            sdk.anthropic(base_url, credential).messages.create(
                model="claude-haiku-4-5", max_tokens=16, messages=MESSAGES, extra_headers=headers
            )
        else:
            sdk.google(base_url, credential).models.generate_content(
                model="gemini-2.5-flash",
                contents="Hi",
                config=types.GenerateContentConfig(http_options=types.HttpOptions(headers=headers)),
            )
    except Exception as error:
        return error
    return None


def _credential_headers(provider: str, credential: str) -> dict[str, str]:
    if provider == "openai":
        return {"authorization": f"Bearer {credential}"}
    if provider == "anthropic":
        return {"x-api-key": credential, "anthropic-version": "2023-06-01"}
    return {"x-goog-api-key": credential}


def _raw_generate(http, proxy, provider: str, credential: str | None, **kwargs) -> httpx.Response:
    """The same call as ``_sdk_call``, by hand, for control over every header and byte."""
    headers = _credential_headers(provider, credential) if credential else {}
    headers.update(kwargs.pop("headers", {}))
    if "content" not in kwargs:
        kwargs["json"] = GENERATE_BODY[provider]
    url = f"{proxy.base}/{provider}{GENERATE_PATH[provider]}"
    return http.post(url, headers=headers, **kwargs)


def _assert_costr_headers(headers, code: str) -> None:
    assert headers["x-costr-error"] == code
    assert headers["x-costr-request-id"].startswith("req_")
    assert float(headers["x-costr-overhead-ms"]) >= 0


def _assert_shape(provider: str, status: int, code: str, body: dict) -> None:
    """Costr's error body in the provider's own error JSON shape."""
    if provider == "openai":
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert body["error"]["code"] == code and body["error"]["message"]
    elif provider == "anthropic":
        assert body["type"] == "error"
        assert body["error"]["type"] == ANTHROPIC_TYPES.get(status, body["error"]["type"])
        assert body["error"]["message"]
    else:
        error = body["error"]
        assert (error["code"], error["status"]) == (status, GOOGLE_STATUSES[status])
        assert error["details"][0]["reason"] == code and error["message"]


def _assert_sdk_refused(provider: str, error: Exception | None, status: int, code: str) -> None:
    """The SDK raised its usual error for ``status``, and the answer is marked as Costr's."""
    if provider == "google":
        assert isinstance(error, genai_errors.ClientError), repr(error)
        assert error.code == status
        body = error.details
    else:
        assert type(error) is SDK_ERRORS[provider, status], repr(error)
        assert error.status_code == status
        body = error.response.json()
    _assert_shape(provider, status, code, body)
    _assert_costr_headers(error.response.headers, code)


def _assert_nothing_forwarded_or_recorded(http, proxy, *organizations, recorded_before=0):
    """The fake saw nothing, and no event exists for the refused request.

    Events are written after the response, so absence is proven with a sentinel request sent
    afterwards: the single usage writer stores records in the order they were handed over, so
    once the sentinel's event is stored, a refusal's event would be stored too.
    """
    assert proxy.fake.requests == []
    sentinel = http.get(
        f"{proxy.url('openai')}/models", headers={"authorization": f"Bearer {proxy.token}"}
    )
    assert sentinel.status_code == 200
    events = proxy.events(expected=recorded_before + 1)
    assert len(events) == recorded_before + 1
    assert events[-1].request_id == sentinel.headers["x-costr-request-id"]
    for organization in organizations:
        assert not UsageEvent.objects.for_org(organization).exists()


# ---------------------------------------------------------------------------------------------
# Tokens


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_request_without_any_credential_is_refused_401(http, proxy, provider):
    response = _raw_generate(http, proxy, provider, None)

    assert response.status_code == 401
    _assert_shape(provider, 401, "missing_token", response.json())
    _assert_costr_headers(response.headers, "missing_token")
    _assert_nothing_forwarded_or_recorded(http, proxy)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_provider_key_instead_of_a_costr_token_is_refused_401(sdk, http, proxy, provider):
    error = _sdk_call(sdk, provider, proxy.url(provider), proxy.fake.keys[provider])

    _assert_sdk_refused(provider, error, 401, "invalid_token")
    _assert_nothing_forwarded_or_recorded(http, proxy)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_unknown_costr_token_is_refused_401(sdk, http, proxy, provider):
    error = _sdk_call(sdk, provider, proxy.url(provider), "costr_" + "x" * 43)

    _assert_sdk_refused(provider, error, 401, "invalid_token")
    _assert_nothing_forwarded_or_recorded(http, proxy)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_revoked_token_is_refused_at_once(
    sdk, http, proxy, provider, django_capture_on_commit_callbacks
):
    created = services.proxy_token_create(
        organization=proxy.organization, name="soon revoked", scopes=["proxy"], actor=None
    )
    assert _sdk_call(sdk, provider, proxy.url(provider), created.plaintext) is None  # now cached
    proxy.fake.clear()
    with django_capture_on_commit_callbacks(execute=True):
        services.proxy_token_revoke(token=created.token, actor=None)

    error = _sdk_call(sdk, provider, proxy.url(provider), created.plaintext)

    _assert_sdk_refused(provider, error, 401, "invalid_token")
    # The call made before the revocation is the one event besides the sentinel's.
    _assert_nothing_forwarded_or_recorded(http, proxy, recorded_before=1)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_expired_token_is_refused_401(sdk, http, proxy, provider):
    created = services.proxy_token_create(
        organization=proxy.organization,
        name="expiring",
        scopes=["proxy"],
        expires_at=timezone.now() + timedelta(days=1),
        actor=None,
    )
    ProxyToken.objects.for_org(proxy.organization).filter(pk=created.token.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    keycache.invalidate_organization(proxy.organization.pk)

    error = _sdk_call(sdk, provider, proxy.url(provider), created.plaintext)

    _assert_sdk_refused(provider, error, 401, "invalid_token")
    _assert_nothing_forwarded_or_recorded(http, proxy)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_valid_token_of_another_organization_is_refused_401(
    sdk, http, proxy, provider, make_organization
):
    other, created = make_organization()
    own_base = proxy.url(provider).replace(proxy.organization.slug, other.slug)
    assert _sdk_call(sdk, provider, own_base, created.plaintext) is None  # it works for its own org
    proxy.fake.clear()

    error = _sdk_call(sdk, provider, proxy.url(provider), created.plaintext)

    _assert_sdk_refused(provider, error, 401, "invalid_token")
    _assert_nothing_forwarded_or_recorded(http, proxy)
    assert len(UsageEvent.objects.for_org(other)) == 1  # only the call to its own org


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_token_without_the_proxy_scope_is_refused_403(sdk, http, proxy, provider):
    created = services.proxy_token_create(
        organization=proxy.organization, name="reporting", scopes=["read", "ingest"], actor=None
    )

    error = _sdk_call(sdk, provider, proxy.url(provider), created.plaintext)

    _assert_sdk_refused(provider, error, 403, "token_scope")
    _assert_nothing_forwarded_or_recorded(http, proxy)


# ---------------------------------------------------------------------------------------------
# Requests Costr cannot or will not forward


@pytest.mark.parametrize("provider", PROVIDERS)
def test_no_provider_key_configured_is_refused_400(sdk, http, proxy, provider, make_organization):
    keyless, created = make_organization(providers=())
    base = proxy.url(provider).replace(proxy.organization.slug, keyless.slug)

    error = _sdk_call(sdk, provider, base, created.plaintext)

    _assert_sdk_refused(provider, error, 400, "no_provider_key")
    _assert_nothing_forwarded_or_recorded(http, proxy, keyless)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_body_declared_over_the_limit_is_refused_413(http, proxy, settings, provider):
    settings.COSTR_PROXY_MAX_BODY_BYTES = 1000

    response = _raw_generate(http, proxy, provider, proxy.token, content=b"x" * 1001)

    assert response.status_code == 413
    _assert_shape(provider, 413, "body_too_large", response.json())
    _assert_costr_headers(response.headers, "body_too_large")
    _assert_nothing_forwarded_or_recorded(http, proxy)


def test_a_chunked_body_over_the_limit_is_refused_413(http, proxy, settings):
    settings.COSTR_PROXY_MAX_BODY_BYTES = 1000

    response = _raw_generate(http, proxy, "openai", proxy.token, content=iter([b"x" * 600] * 2))

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "body_too_large"
    _assert_costr_headers(response.headers, "body_too_large")
    _assert_nothing_forwarded_or_recorded(http, proxy)


def test_a_chunked_body_that_outgrows_the_limit_while_streaming_upstream_is_refused_413(
    http, proxy, settings
):
    """Past the inspection size the body streams on to the upstream as it arrives; when it
    then crosses the limit the upstream request is abandoned, never completed."""
    settings.COSTR_PROXY_INSPECT_BYTES = 100
    settings.COSTR_PROXY_MAX_BODY_BYTES = 1000

    def slowly():
        # Parts that arrive one by one, so the first alone passes the inspection size.
        for _ in range(10):
            yield b"x" * 150
            time.sleep(0.02)

    response = _raw_generate(http, proxy, "openai", proxy.token, content=slowly())

    assert response.status_code == 413
    _assert_costr_headers(response.headers, "body_too_large")
    # The upstream may have seen a beginning, never a whole request.
    assert all(len(seen.body) <= 1000 for seen in proxy.fake.requests)
    proxy.fake.clear()
    _assert_nothing_forwarded_or_recorded(http, proxy)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_customer_id_over_255_characters_is_refused_400(sdk, http, proxy, provider):
    error = _sdk_call(
        sdk, provider, proxy.url(provider), proxy.token, {"X-Costr-Customer": "c" * 256}
    )

    _assert_sdk_refused(provider, error, 400, "invalid_customer")
    _assert_nothing_forwarded_or_recorded(http, proxy)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_more_than_20_properties_are_refused_400(sdk, http, proxy, provider):
    headers = {f"X-Costr-Property-P{i}": str(i) for i in range(21)}

    error = _sdk_call(sdk, provider, proxy.url(provider), proxy.token, headers)

    _assert_sdk_refused(provider, error, 400, "too_many_properties")
    _assert_nothing_forwarded_or_recorded(http, proxy)


def test_a_255_character_customer_and_20_properties_are_accepted_and_recorded(sdk, proxy):
    customer = "c" * 255
    headers = {"X-Costr-Customer": customer}
    headers |= {f"X-Costr-Property-P{i}": str(i) for i in range(20)}

    assert _sdk_call(sdk, "openai", proxy.url("openai"), proxy.token, headers) is None

    [event] = proxy.events()
    assert event.customer.external_id == customer
    assert event.properties == {f"p{i}": str(i) for i in range(20)}
    assert not any(name.startswith(b"x-costr-") for name, _ in proxy.fake.last_request.headers)


def test_refused_requests_are_counted_per_organization_and_code(http, proxy, settings):
    """No usage event, but a count the dashboard shows: one per refused request that proved
    it is the organization's (a valid token of it), by the status and the X-Costr-Error code it
    was answered with. A forwarded request adds none, and neither do requests with no token,
    a bad one, or another organization's: anyone can send those to any /p/<org>/, so counting
    them would let anyone inflate any organization's count."""
    from apps.usage.metering import sink
    from apps.usage.models import RefusalCount

    assert _raw_generate(http, proxy, "openai", proxy.token).status_code == 200
    answers = [
        _raw_generate(http, proxy, "openai", "costr_not-a-token"),
        _raw_generate(http, proxy, "anthropic", "costr_not-a-token"),
        _raw_generate(http, proxy, "google", None),
        _raw_generate(http, proxy, "openai", proxy.token, headers={"x-costr-customer": "c" * 256}),
        http.request(
            "PUT",
            f"{proxy.url('openai')}/chat/completions",
            headers={"authorization": f"Bearer {proxy.token}"},
        ),
    ]
    settings.COSTR_PROXY_MAX_BODY_BYTES = 10
    answers.append(_raw_generate(http, proxy, "openai", proxy.token))
    assert sink.flush(timeout=10)

    answered = sorted((a.status_code, a.headers["x-costr-error"]) for a in answers)
    assert answered == [
        (400, "invalid_customer"),
        (401, "invalid_token"),
        (401, "invalid_token"),
        (401, "missing_token"),
        (405, "method_not_allowed"),
        (413, "body_too_large"),
    ]
    counts = {
        (row.status, row.code): row.count
        for row in RefusalCount.objects.for_org(proxy.organization)
    }
    assert counts == {
        (400, "invalid_customer"): 1,
        (405, "method_not_allowed"): 1,
        (413, "body_too_large"): 1,
    }


def test_an_unknown_provider_segment_is_404_and_forwards_nothing(http, proxy):
    for path in ("/azure/v1/models", "", "/"):
        response = http.get(proxy.base + path, headers={"authorization": f"Bearer {proxy.token}"})

        assert response.status_code == 404, path
        _assert_costr_headers(response.headers, "unknown_provider")
    _assert_nothing_forwarded_or_recorded(http, proxy)


# ---------------------------------------------------------------------------------------------
# Upstream errors


@pytest.mark.parametrize("status", [429, 500])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_upstream_error_passes_through_unchanged_and_is_recorded(http, proxy, provider, status):
    knobs = {"x-fake-status": str(status)}
    fake = proxy.fake
    direct = http.post(
        fake.url + GENERATE_PATH[provider],
        headers=_credential_headers(provider, fake.keys[provider]) | knobs,
        json=GENERATE_BODY[provider],
    )
    fake.clear()

    response = _raw_generate(http, proxy, provider, proxy.token, headers=knobs)

    assert response.status_code == direct.status_code == status
    assert response.content == direct.content
    assert response.headers.get("retry-after") == direct.headers.get("retry-after")
    assert response.headers.get("retry-after") == ("1" if status == 429 else None)
    assert response.headers["content-type"] == direct.headers["content-type"]
    assert "x-costr-error" not in response.headers
    [event] = proxy.events()
    # The provider answered an error: recorded as one (DESIGN.md, "Usage event").
    assert (event.status, event.outcome) == (status, "upstream_error")
    assert event.request_id == response.headers["x-costr-request-id"]
    assert (event.input_tokens, event.output_tokens) == (None, None)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_provider_error_whose_body_is_cut_is_still_an_upstream_error(http, proxy, provider):
    """The error status outranks the broken transfer: the request failed at the provider
    either way. The client's connection still breaks, as for any cut body."""
    knobs = {"x-fake-status": "503", "x-fake-cut-after": "1"}

    with pytest.raises(httpx.RemoteProtocolError):
        _raw_generate(http, proxy, provider, proxy.token, headers=knobs)

    [event] = proxy.events()
    assert (event.status, event.outcome) == (503, "upstream_error")


def test_an_sdk_rate_limit_error_is_recorded_as_an_upstream_error(sdk, proxy):
    client = sdk.openai(proxy.url("openai"), proxy.token)

    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Hi"}],
            extra_headers={"x-fake-status": "429"},
        )

    [event] = proxy.events()
    assert (event.status, event.outcome, event.model) == (429, "upstream_error", "gpt-4o-mini")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_unreachable_upstream_is_502_marked_and_recorded(http, proxy, settings, provider):
    setattr(settings, f"COSTR_UPSTREAM_{provider.upper()}", f"http://127.0.0.1:{_closed_port()}")

    response = _raw_generate(http, proxy, provider, proxy.token)

    assert response.status_code == 502
    _assert_shape(provider, 502, "upstream_unreachable", response.json())
    _assert_costr_headers(response.headers, "upstream_unreachable")
    [event] = proxy.events()
    assert (event.status, event.outcome) == (502, "upstream_error")
    assert event.request_id == response.headers["x-costr-request-id"]


@pytest.mark.parametrize(
    "knob",
    [
        "x-fake-first-byte-delay-ms",  # no response headers in time
        "x-fake-stall-ms",  # headers, then no body in time
    ],
)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_upstream_timeout_is_504_marked_and_recorded(http, proxy, settings, provider, knob):
    settings.COSTR_UPSTREAM_READ_TIMEOUT = 0.2

    response = _raw_generate(http, proxy, provider, proxy.token, headers={knob: "1500"})

    assert response.status_code == 504
    _assert_shape(provider, 504, "upstream_timeout", response.json())
    _assert_costr_headers(response.headers, "upstream_timeout")
    [event] = proxy.events()
    assert (event.status, event.outcome) == (504, "upstream_error")
    assert event.request_id == response.headers["x-costr-request-id"]
    assert json.loads(proxy.fake.last_request.body) == GENERATE_BODY[provider]


# ---------------------------------------------------------------------------------------------
# Costr's own failures


def test_a_costr_failure_before_forwarding_is_500_marked_and_forwards_nothing(
    http, proxy, monkeypatch
):
    def broken_vault(*args, **kwargs):
        raise RuntimeError("the vault is broken")

    monkeypatch.setattr(keycache, "provider_key_plaintext", broken_vault)

    response = _raw_generate(http, proxy, "anthropic", proxy.token)

    assert response.status_code == 500
    assert response.json()["error"]["type"] == "api_error"
    _assert_costr_headers(response.headers, "costr_error")
    monkeypatch.undo()
    _assert_nothing_forwarded_or_recorded(http, proxy)


def test_a_costr_failure_mid_stream_breaks_the_connection_and_still_records(
    http, proxy, monkeypatch
):
    from apps.proxy.providers.openai import UsageChunkFilter

    feed = UsageChunkFilter.feed
    fed = []

    def failing_feed(self, chunk):
        fed.append(chunk)
        if len(fed) > 2:
            raise RuntimeError("the filter is broken")
        return feed(self, chunk)

    monkeypatch.setattr(UsageChunkFilter, "feed", failing_feed)
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}

    with (
        pytest.raises(httpx.RemoteProtocolError),
        http.stream(
            "POST",
            f"{proxy.url('openai')}/chat/completions",
            # Spaced out, so the stream reaches Costr in several reads (it joins what arrived
            # together) and the filter fails after the response has started.
            headers=_credential_headers("openai", proxy.token) | {"x-fake-delay-ms": "5"},
            json=body,
        ) as response,
    ):
        assert response.status_code == 200
        response.read()

    [event] = proxy.events()
    assert (event.status, event.outcome) == (200, "costr_error")

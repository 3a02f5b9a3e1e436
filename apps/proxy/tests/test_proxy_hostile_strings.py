"""Hostile strings from one organization never lose, delay or corrupt another's usage
(DESIGN.md, Promises 6 and 10, and "Limits").

A model name with a lone surrogate escape (``"\\ud800"``, which no UTF-8 encoder takes) or a
NUL (which PostgreSQL refuses in text and JSON), in the request body and so in the fake
provider's answer, which reports the model it was asked for; customer and property headers
with bytes that are not UTF-8. Each request is still forwarded and recorded as exactly one
event with the strings cleaned (U+FFFD in place of what cannot be stored), and another
organization's ordinary request, sent after them, is recorded unaffected. Run on SQLite and,
with ``DATABASE_URL`` set, on PostgreSQL.
"""

import json

REPLACED = "\ufffd"


def test_hostile_strings_are_recorded_cleaned_and_never_cost_another_tenant(
    http, proxy, make_organization
):
    headers = {
        "authorization": f"Bearer {proxy.token}",
        "content-type": "application/json",
        "x-costr-customer": b"acme\xff\xfe-1",
        "X-Costr-Property-Feature": b"chat\xc3\x28",
    }
    openai_body = json.dumps({"model": "gpt-\ud800x\u0000", "messages": [{"role": "user"}]})
    anthropic_body = json.dumps(
        {"model": "\u0000claude\udfff", "max_tokens": 8, "messages": [{"role": "user"}]}
    )
    assert "\\ud800" in openai_body and "\\u0000" in openai_body  # escaped, as a client sends it

    answers = [
        http.post(f"{proxy.url('openai')}/chat/completions", headers=headers, content=openai_body),
        http.post(
            f"{proxy.url('anthropic')}/v1/messages",
            headers=headers | {"anthropic-version": "2023-06-01"},
            content=anthropic_body,
        ),
        # Gemini names the model in the path; %00 decodes to a NUL.
        http.post(
            f"{proxy.url('google')}/v1beta/models/gem%00ini:generateContent",
            headers={"x-goog-api-key": proxy.token, "x-costr-customer": b"\x80"},
            json={"contents": [{"parts": [{"text": "Hi"}]}]},
        ),
    ]
    other, created = make_organization()
    neighbour = http.post(
        f"{proxy.url('openai').replace(proxy.organization.slug, other.slug)}/chat/completions",
        headers={
            "authorization": f"Bearer {created.plaintext}",
            "x-costr-customer": "globex",
            "x-costr-property-feature": "search",
        },
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]},
    )

    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert neighbour.status_code == 200
    # Forwarded byte for byte: the hostile model reached the provider as the client sent it.
    assert [request.body for request in proxy.fake.requests[:2]] == [
        openai_body.encode(),
        anthropic_body.encode(),
    ]

    events = {event.request_id: event for event in proxy.events(expected=3)}
    assert len(events) == 3
    openai_event, anthropic_event, google_event = (
        events[answer.headers["x-costr-request-id"]] for answer in answers
    )
    assert openai_event.model == openai_event.requested_model == f"gpt-{REPLACED}x{REPLACED}"
    assert anthropic_event.model == f"{REPLACED}claude{REPLACED}"
    assert anthropic_event.requested_model == f"{REPLACED}claude{REPLACED}"
    assert google_event.requested_model == f"gem{REPLACED}ini"
    for event in (openai_event, anthropic_event):
        assert event.customer.external_id == f"acme{REPLACED}{REPLACED}-1"
        assert event.properties == {"feature": f"chat{REPLACED}("}
        assert event.input_tokens is not None
    assert google_event.customer.external_id == REPLACED

    from apps.usage.models import UsageEvent

    [neighbour_event] = UsageEvent.objects.for_org(other)
    assert neighbour_event.request_id == neighbour.headers["x-costr-request-id"]
    assert (neighbour_event.model, neighbour_event.outcome) == ("gpt-4o-mini", "ok")
    assert neighbour_event.customer.external_id == "globex"
    assert neighbour_event.properties == {"feature": "search"}
    assert neighbour_event.input_tokens is not None

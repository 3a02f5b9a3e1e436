"""The OpenAPI document at /api/v1/schema/ and the docs page drawn from it."""

import json
import re
from datetime import timedelta

import pytest
import schemathesis
import yaml
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from django.utils import timezone
from drf_spectacular.validation import validate_schema
from hypothesis import HealthCheck, settings

from apps.billing.tests import conftest as billing_fixtures

# The billing suite's fixtures: the fake Stripe account of its factories, connected and synced.
connected = billing_fixtures.connected
costr_customers = billing_fixtures.costr_customers
stripe_account = billing_fixtures.stripe_account
stripe_key = billing_fixtures.stripe_key

pytestmark = pytest.mark.django_db

METHODS = ("get", "post", "put", "patch", "delete")


@pytest.fixture
def document(client):
    response = client.get("/api/v1/schema/")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/vnd.oai.openapi+json")
    return json.loads(response.content)


def test_the_schema_is_a_valid_openapi_3_document(document):
    # drf-spectacular ships the OpenAPI 3.0 JSON Schema; a document that breaks it raises.
    validate_schema(document)
    assert document["openapi"].startswith("3.")
    assert document["info"]["title"] == "Costr API"


def test_the_schema_declares_bearer_tokens_and_ingest_needs_one(document):
    schemes = document["components"]["securitySchemes"]
    bearer = [
        name for name, s in schemes.items() if (s["type"], s.get("scheme")) == ("http", "bearer")
    ]
    assert bearer == ["costrToken"]

    ingest = document["paths"]["/api/v1/ingest/"]["post"]
    assert ingest["security"] == [{"costrToken": []}]
    assert ingest["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/IngestBatchRequest"
    )


def test_the_schema_names_the_session_rule_and_the_error_shape(document):
    description = document["info"]["description"]
    assert "?org=<slug>" in description
    assert '{"error": {"code"' in description


def test_every_error_response_has_the_error_shape(document):
    error_schemas = {"#/components/schemas/Error", "#/components/schemas/IngestFailure"}
    for route, item in document["paths"].items():
        for method in METHODS:
            if method not in item:
                continue
            for status, response in item[method]["responses"].items():
                if int(status) < 400:
                    continue
                ref = response["content"]["application/json"]["schema"]["$ref"]
                assert ref in error_schemas, (route, method, status)
                schema = document["components"]["schemas"][ref.rsplit("/", 1)[-1]]
                assert "error" in schema["properties"], (route, method, status)


def test_the_ingest_event_schema_lists_the_contracts_fields(document):
    event = document["components"]["schemas"]["IngestEventRequest"]

    assert set(event["properties"]) == {
        "event_id",
        "timestamp",
        "provider",
        "model",
        "endpoint",
        "customer",
        "properties",
        "status",
        "input_tokens",
        "cached_input_tokens",
        "cache_write_tokens",
        "cache_write_1h_tokens",
        "output_tokens",
        "reasoning_tokens",
        "usage_details",
        "latency_ms",
        "source",
    }
    assert set(event["required"]) == {
        "event_id",
        "timestamp",
        "provider",
        "model",
        "input_tokens",
        "output_tokens",
    }


def test_the_schema_is_public_and_ignores_credentials(client):
    response = client.get("/api/v1/schema/", HTTP_AUTHORIZATION="Bearer costr_unknown")

    assert response.status_code == 200


def test_the_schema_is_also_served_as_yaml(client):
    response = client.get("/api/v1/schema/", {"format": "yaml"})

    assert response.status_code == 200
    assert yaml.safe_load(response.content)["paths"]["/api/v1/ingest/"]["post"]


def test_the_docs_page_is_drawn_from_the_schema_and_loads_nothing_from_elsewhere(client, document):
    response = client.get("/api/v1/docs/")

    assert response.status_code == 200
    page = response.content.decode()
    for route, item in document["paths"].items():
        for method in METHODS:
            if method in item:
                assert f"{method.upper()} {route}" in page
    for field in document["components"]["schemas"]["IngestEventRequest"]["properties"]:
        assert f"<code>{field}</code>" in page
    references = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert references
    outside = [r for r in references if not r.startswith(("/", "#"))]
    assert outside == []


# --- Property-based: schemathesis against the running app -------------------------------------
#
# Schemathesis reads the OpenAPI document from the app itself (in process, through WSGI: no
# network), generates requests from it, valid and invalid, for every operation, sends them with a
# real token to an organization with real data, and checks each answer: never a 500, a status
# the document lists, a body and headers that match what it declares.

API = schemathesis.openapi.from_wsgi("/api/v1/schema/", get_wsgi_application())
# Bounded, so the suite stays quick; each operation also gets schemathesis's boundary cases.
EXAMPLES = 30


@pytest.fixture
def live_api(org, admin, connected, costr_customers, settings):
    """``org`` with traffic (odd customer ids and properties among it), Stripe revenue synced
    from the fake Stripe, and a token that may read and ingest."""
    from apps.keys import keycache, services
    from apps.usage.tests.factories import store_usage

    # Schemathesis sends a bad token with many of an operation's examples, all from one address
    # within seconds: past the invalid-token throttle they would be 429s, not the 401s checked.
    settings.COSTR_THROTTLE_INVALID_TOKENS_PER_ADDRESS = "100000/minute"
    keycache._drop_local(None)
    # As Django's test client does: a request's end would otherwise close the connection that
    # holds the test's transaction.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    for n, customer in enumerate(["alice", "cus_Bob0001", "dave", "team/a b", "ünï", None]):
        store_usage(
            org,
            customer=customer,
            model=["gpt-4o-mini", "claude-x", ""][n % 3],
            properties={"feature": f"f{n % 2}"} if n % 2 else {},
            timestamp=(timezone.now() - timedelta(days=n, hours=n)).isoformat(),
        )
        store_usage(org, customer=customer, timestamp=f"2026-01-{10 + n}T12:00:00+00:00")
    created = services.proxy_token_create(
        organization=org, name="schemathesis", scopes=["read", "ingest"], actor=None
    )
    yield {"Authorization": f"Bearer {created.plaintext}"}
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)
    keycache._drop_local(None)


@API.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_every_operation_answers_as_the_schema_says(case, live_api):
    # Every check but "schema-valid requests are accepted": what makes an opaque cursor valid,
    # or start come before end, is beyond what OpenAPI can say, and those 400s are right.
    case.call_and_validate(
        headers=live_api, excluded_checks=[schemathesis.checks.positive_data_acceptance]
    )


REPORTING = {
    "/api/v1/events/": (
        "UsageEventPage",
        {"start", "end", "customer", "provider", "model", "status", "outcome"},
    ),
    "/api/v1/reports/spend/": ("SpendReport", {"start", "end", "group_by"}),
    "/api/v1/customers/": ("CustomerPage", {"start", "end"}),
    "/api/v1/customers/{external_id}/": ("Customer", {"start", "end", "external_id"}),
}


@pytest.mark.parametrize("route", REPORTING)
def test_each_reporting_operation_declares_its_parameters_and_answers(document, route):
    component, parameters = REPORTING[route]
    operation = document["paths"][route]["get"]

    declared = {p["name"]: p for p in operation["parameters"]}
    assert parameters | {"org"} <= set(declared)
    assert all(p.get("description") for p in declared.values()), route
    assert operation["security"] == [{"costrToken": []}, {"cookieAuth": []}]
    ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok["$ref"] == f"#/components/schemas/{component}"
    assert {"400", "401", "403", "404"} <= set(operation["responses"])


def test_the_list_operations_are_cursor_paginated(document):
    for route, page in (
        ("/api/v1/events/", "UsageEventPage"),
        ("/api/v1/customers/", "CustomerPage"),
    ):
        names = {p["name"] for p in document["paths"][route]["get"]["parameters"]}
        assert {"cursor", "page_size"} <= names
        schema = document["components"]["schemas"][page]
        assert set(schema["required"]) == {"next", "previous", "results"}


def test_property_filters_are_described_in_the_events_operation(document):
    assert "`property.<name>`" in document["paths"]["/api/v1/events/"]["get"]["description"]


def test_the_usage_event_schema_lists_the_contracts_fields(document):
    event = document["components"]["schemas"]["UsageEvent"]

    assert list(event["properties"]) == [
        "id",
        "request_id",
        "timestamp",
        "provider",
        "endpoint",
        "model",
        "requested_model",
        "customer",
        "properties",
        "status",
        "stream",
        "outcome",
        "source",
        "input_tokens",
        "cached_input_tokens",
        "cache_write_tokens",
        "cache_write_1h_tokens",
        "output_tokens",
        "reasoning_tokens",
        "usage_details",
        "service_tier",
        "cost_usd",
        "price_source",
        "latency_ms",
        "ttfb_ms",
        "overhead_ms",
    ]
    assert set(event["required"]) == set(event["properties"])


def test_money_is_a_decimal_string_everywhere(document):
    schemas = document["components"]["schemas"]
    money = [
        ("UsageEvent", "cost_usd"),
        ("SpendRow", "cost_usd"),
        ("SpendFigures", "cost_usd"),
        ("Customer", "cost_usd"),
        ("Customer", "margin_usd"),
        ("Customer", "margin_pct"),
        ("Revenue", "gross"),
        ("Revenue", "net"),
    ]
    for component, field in money:
        assert schemas[component]["properties"][field]["type"] == "string", (component, field)
        assert schemas[component]["properties"][field]["format"] == "decimal", (component, field)


def test_the_spend_report_and_customer_have_the_contracts_fields(document):
    schemas = document["components"]["schemas"]
    figures = [
        "requests",
        "input_tokens",
        "cached_input_tokens",
        "cache_write_tokens",
        "output_tokens",
        "reasoning_tokens",
        "cost_usd",
        "unpriced_requests",
        "usage_unknown_requests",
    ]

    assert list(schemas["SpendReport"]["properties"]) == [
        "group_by",
        "start",
        "end",
        "rows",
        "total",
    ]
    assert list(schemas["SpendRow"]["properties"]) == ["key", *figures]
    assert list(schemas["SpendFigures"]["properties"]) == figures
    assert list(schemas["Customer"]["properties"]) == [
        "external_id",
        "name",
        "stripe_customer_id",
        "requests",
        "cost_usd",
        "unpriced_requests",
        "usage_unknown_requests",
        "revenue",
        "margin_usd",
        "margin_pct",
    ]
    assert list(schemas["Revenue"]["properties"]) == ["currency", "gross", "net"]


def test_schemathesis_reads_every_operation_of_the_document():
    operations = [result.ok() for result in API.get_all_operations()]

    assert sorted(f"{o.method.upper()} {o.path}" for o in operations) == [
        "DELETE /api/v1/budgets/{budget_id}/",
        "DELETE /api/v1/webhooks/{webhook_id}/",
        "GET /api/v1/budgets/",
        "GET /api/v1/budgets/{budget_id}/",
        "GET /api/v1/customers/",
        "GET /api/v1/customers/{external_id}/",
        "GET /api/v1/events/",
        "GET /api/v1/reports/spend/",
        "GET /api/v1/webhooks/",
        "GET /api/v1/webhooks/{webhook_id}/",
        "PATCH /api/v1/budgets/{budget_id}/",
        "POST /api/v1/budgets/",
        "POST /api/v1/ingest/",
        "POST /api/v1/webhooks/",
    ]

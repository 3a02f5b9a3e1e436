"""The OpenAPI document at /api/v1/schema/ and the docs page drawn from it."""

import json
import re

import pytest
import yaml
from drf_spectacular.validation import validate_schema

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
        "latency_ms",
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

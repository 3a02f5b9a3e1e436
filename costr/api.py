"""``/api/v1/``: the API's routes, its OpenAPI document and the docs page drawn from it.

The docs page is rendered on the server from the same OpenAPI document that ``schema/`` serves,
with no JavaScript: interactive viewers such as Swagger UI or Redoc load their code from a CDN
unless it is vendored, and Costr promises pages that work offline and fetch nothing from third
parties.
"""

import re

from django.http import JsonResponse
from django.shortcuts import render
from django.urls import path, re_path, register_converter
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_safe
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer, OpenApiYamlRenderer
from drf_spectacular.views import SpectacularAPIView

from apps.budgets import api_urls as budgets_api_urls
from apps.reporting.api import (
    CustomerDetailView,
    CustomerListView,
    EventListView,
    ExternalIdConverter,
    SpendReportView,
)
from apps.usage.api import IngestView

HTTP_METHODS = ("get", "post", "put", "patch", "delete")

register_converter(ExternalIdConverter, "api_external_id")


class SchemaView(SpectacularAPIView):
    """OpenAPI 3 as JSON by default (``?format=yaml`` or ``Accept: application/vnd.oai.openapi``
    for YAML). Public: the document describes the API and holds no data."""

    renderer_classes = [OpenApiJsonRenderer, OpenApiYamlRenderer]
    authentication_classes = []


CODE = re.compile(r"`([^`]+)`")
STRONG = re.compile(r"\*\*([^*]+)\*\*")


def _prose(text: str) -> SafeString:
    """The little Markdown the descriptions use (paragraphs, `code`, **bold**) as HTML, after
    escaping everything else."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", text.strip()):
        html = STRONG.sub(r"<strong>\1</strong>", CODE.sub(r"<code>\1</code>", escape(block)))
        paragraphs.append(f"<p>{html}</p>")
    return mark_safe("".join(paragraphs))  # noqa: S308 -- built from escaped text only


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _type_label(schema: dict) -> str:
    """A short human reading of a JSON schema: ``integer ≥ 0``, ``array of IngestEvent``…"""
    if "$ref" in schema:
        return _ref_name(schema["$ref"])
    for combiner in ("allOf", "oneOf", "anyOf"):
        if combiner in schema:
            joiner = " or " if combiner != "allOf" else " & "
            return joiner.join(_type_label(part) for part in schema[combiner])
    kind = schema.get("type", "any")
    if kind == "array":
        label = f"array of {_type_label(schema.get('items', {}))}"
    elif kind == "object" and "additionalProperties" in schema:
        extra = schema["additionalProperties"]
        label = f"object of {_type_label(extra) if isinstance(extra, dict) else 'any'}"
    else:
        label = kind
    if schema.get("format"):
        label += f" ({schema['format']})"
    if schema.get("enum"):
        label += ": " + " | ".join(str(v) for v in schema["enum"] if v is not None)
    bounds = [
        ("minimum", "≥"),
        ("maximum", "≤"),
        ("minLength", "length ≥"),
        ("maxLength", "length ≤"),
        ("minItems", "items ≥"),
        ("maxItems", "items ≤"),
    ]
    label += "".join(f", {sign} {schema[key]}" for key, sign in bounds if key in schema)
    if schema.get("nullable"):
        label += ", nullable"
    return label


def _fields(schema: dict) -> list[dict]:
    required = set(schema.get("required", []))
    return [
        {
            "name": name,
            "type": _type_label(prop),
            "ref": _ref_name(prop["$ref"]) if "$ref" in prop else "",
            "required": name in required,
            "description": _prose(prop.get("description", "")),
            "default": prop.get("default"),
        }
        for name, prop in schema.get("properties", {}).items()
    ]


def _body_schema(content: dict | None) -> dict:
    media = (content or {}).get("application/json") or next(iter((content or {}).values()), {})
    return media.get("schema", {})


def _operations(document: dict) -> list[dict]:
    operations = []
    for route, item in document.get("paths", {}).items():
        for method in HTTP_METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            request_schema = _body_schema(operation.get("requestBody", {}).get("content"))
            operations.append(
                {
                    "anchor": operation.get("operationId", f"{method}-{route}"),
                    "method": method.upper(),
                    "path": route,
                    "summary": operation.get("summary", ""),
                    "description": _prose(operation.get("description", "")),
                    "security": [name for need in operation.get("security", []) for name in need],
                    "parameters": [
                        {
                            "name": p["name"],
                            "in": p["in"],
                            "required": p.get("required", False),
                            "type": _type_label(p.get("schema", {})),
                            "description": _prose(p.get("description", "")),
                        }
                        for p in operation.get("parameters", [])
                    ],
                    "request": _type_label(request_schema) if request_schema else "",
                    "request_ref": _ref_name(request_schema.get("$ref", "")),
                    "responses": [
                        {
                            "status": code,
                            "description": _prose(response.get("description", "")),
                            "type": _type_label(_body_schema(response.get("content")))
                            if response.get("content")
                            else "",
                        }
                        for code, response in operation.get("responses", {}).items()
                    ],
                }
            )
    return operations


@require_safe
def docs(request):
    """The API reference, server-rendered from the OpenAPI document."""
    document = SchemaGenerator().get_schema(request=None, public=True)
    components = document.get("components", {})
    info = document.get("info", {})
    schemes = {
        name: {**scheme, "description": _prose(scheme.get("description", ""))}
        for name, scheme in components.get("securitySchemes", {}).items()
    }
    return render(
        request,
        "api/docs.html",
        {
            "info": info,
            "description": _prose(info.get("description", "")),
            "operations": _operations(document),
            "schemes": schemes,
            "schemas": [
                {"name": name, "fields": _fields(schema), "type": _type_label(schema)}
                for name, schema in components.get("schemas", {}).items()
            ],
        },
    )


@csrf_exempt
def not_found(request, rest=""):
    """Unknown ``/api/v1/`` paths answer in the API's error shape, not with an HTML page, for
    every method (exempt from the CSRF check, which would answer a POST with an HTML 403: it
    changes nothing)."""
    return JsonResponse(
        {
            "error": {
                "code": "not_found",
                "message": "No such endpoint. API paths end with a slash, e.g. /api/v1/ingest/; "
                "see /api/v1/docs/.",
            }
        },
        status=404,
    )


urlpatterns = [
    path("ingest/", IngestView.as_view(), name="api_ingest"),
    path("events/", EventListView.as_view(), name="api_events"),
    path("reports/spend/", SpendReportView.as_view(), name="api_spend"),
    path("customers/", CustomerListView.as_view(), name="api_customers"),
    path(
        "customers/<api_external_id:external_id>/",
        CustomerDetailView.as_view(),
        name="api_customer_detail",
    ),
    *budgets_api_urls.urlpatterns,
    path("schema/", SchemaView.as_view(), name="api_schema"),
    path("docs/", docs, name="api_docs"),
    # Last: anything else under /api/v1/, newlines included (``.*`` would leave a path with a
    # newline to Django's HTML 404 page).
    re_path(r"^(?P<rest>[\s\S]*)$", not_found),
]

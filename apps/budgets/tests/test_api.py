"""``/api/v1/budgets/`` through Django's test client with real tokens and sessions: who may read
and who may change (``read`` and ``manage`` scopes, member and admin roles), every refusal in
the API's error shape with nothing changed, another organization's budget as 404, figures from
real stored events and real store counters, pages like the other lists."""

import json
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.accounts.models import AuditEvent
from apps.budgets.models import Budget
from apps.budgets.services import budget_create
from apps.budgets.tests.budget_data import bearer, price, seed_counter, spend
from apps.keys import keycache
from apps.keys import services as keys

pytestmark = pytest.mark.django_db

LIST = "/api/v1/budgets/"
FIELDS = [
    "id",
    "scope",
    "customer",
    "token",
    "property_name",
    "property_value",
    "period",
    "limit_usd",
    "enforce",
    "fail_closed",
    "alert_thresholds",
    "spent_usd",
    "reserved_usd",
    "period_start",
    "period_end",
]


@pytest.fixture(autouse=True)
def _fresh_cache():
    keycache._drop_local(None)
    yield
    keycache._drop_local(None)


def _detail(budget) -> str:
    return f"{LIST}{budget.public_id}/"


def _budget(org, **fields):
    fields.setdefault("period", "month")
    fields.setdefault("limit_usd", "10")
    return budget_create(organization=org, actor=None, **fields)


def _send(client, method, url, body, headers):
    return getattr(client, method)(
        url, data=json.dumps(body), content_type="application/json", **headers
    )


def _error(response, status, code):
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body["error"]


def _rows(org):
    return sorted(Budget.objects.for_org(org).values_list())


# --- Who may do what ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["get", "post"])
def test_no_token_is_401_with_a_bearer_challenge(client, org, method):
    budget = _budget(org, scope="organization")

    for url in (LIST, _detail(budget)):
        response = getattr(client, method)(url)
        _error(response, 401, "not_authenticated")
        assert response["WWW-Authenticate"].startswith("Bearer")
    unknown = client.get(LIST, HTTP_AUTHORIZATION="Bearer costr_nobody-was-given-this")
    _error(unknown, 401, "invalid_token")


def test_a_read_token_lists_and_reads_but_cannot_change_anything(client, org):
    budget = _budget(org, scope="organization")
    headers = bearer(org, "read")
    before = _rows(org)

    assert client.get(LIST, **headers).status_code == 200
    assert client.get(_detail(budget), **headers).status_code == 200
    created = _send(
        client, "post", LIST, {"scope": "organization", "period": "day", "limit_usd": "1"}, headers
    )
    changed = _send(client, "patch", _detail(budget), {"limit_usd": "1"}, headers)
    deleted = client.delete(_detail(budget), **headers)

    for response in (created, changed, deleted):
        error = _error(response, 403, "token_scope")
        assert "manage" in error["message"]
    assert _rows(org) == before


@pytest.mark.parametrize("scope", ["proxy", "ingest", "manage"])
def test_a_token_without_read_cannot_list(client, org, scope):
    _budget(org, scope="organization")

    _error(client.get(LIST, **bearer(org, scope)), 403, "token_scope")


def test_a_manage_token_creates_changes_and_deletes(client, org):
    headers = bearer(org, "manage")

    created = _send(
        client,
        "post",
        LIST,
        {"scope": "customer", "customer": "acme", "period": "day", "limit_usd": "12.50"},
        headers,
    )

    assert created.status_code == 201, created.content
    body = created.json()
    assert list(body) == [*FIELDS, "top_customers"]
    budget = Budget.objects.for_org(org).get()
    assert body["id"] == budget.public_id
    assert (body["scope"], body["customer"], body["token"], body["period"]) == (
        "customer",
        "acme",
        None,
        "day",
    )
    assert (body["limit_usd"], body["enforce"], body["fail_closed"]) == ("12.5", True, False)
    assert body["alert_thresholds"] == [80, 100]
    assert (body["spent_usd"], body["reserved_usd"]) == ("0", "0")
    assert budget.limit_usd == Decimal("12.5")
    audit = AuditEvent.objects.for_org(org).get(action="budget.created")
    assert audit.actor is None and audit.target == budget.public_id

    changed = _send(
        client,
        "patch",
        _detail(budget),
        {"limit_usd": "20", "enforce": False, "alert_thresholds": [100, 50]},
        headers,
    )
    assert changed.status_code == 200, changed.content
    assert (changed.json()["limit_usd"], changed.json()["enforce"]) == ("20", False)
    assert changed.json()["alert_thresholds"] == [50, 100]
    budget.refresh_from_db()
    assert (budget.limit_usd, budget.enforce, budget.alert_thresholds) == (20, False, [50, 100])

    deleted = client.delete(_detail(budget), **headers)
    assert deleted.status_code == 204
    assert not Budget.objects.for_org(org).exists()
    assert AuditEvent.objects.for_org(org).filter(action="budget.deleted").count() == 1


def test_a_member_reads_with_a_session_but_only_an_admin_changes(client, org, member, admin):
    budget = _budget(org, scope="organization")
    before = _rows(org)
    client.force_login(member)

    assert client.get(LIST).status_code == 200
    refused = [
        _send(
            client,
            "post",
            LIST,
            {"scope": "customer", "customer": "x", "period": "day", "limit_usd": "1"},
            {},
        ),
        _send(client, "patch", _detail(budget), {"limit_usd": "1"}, {}),
        client.delete(_detail(budget)),
    ]
    for response in refused:
        _error(response, 403, "role")
    assert _rows(org) == before

    client.force_login(admin)
    created = _send(
        client,
        "post",
        LIST,
        {"scope": "each_customer", "period": "day", "limit_usd": "3", "fail_closed": True},
        {},
    )
    assert created.status_code == 201, created.content
    audit = AuditEvent.objects.for_org(org).get(
        action="budget.created", target=created.json()["id"]
    )
    assert audit.actor == admin


def test_another_organizations_budget_is_404_and_untouched(client, org, other_org):
    theirs = _budget(other_org, scope="customer", customer="secret-customer")
    before = _rows(other_org)
    headers = bearer(org, "read", "manage")

    for response in (
        client.get(_detail(theirs), **headers),
        _send(client, "patch", _detail(theirs), {"limit_usd": "1"}, headers),
        client.delete(_detail(theirs), **headers),
        client.get(f"{LIST}bud_doesnotexist/", **headers),
    ):
        _error(response, 404, "not_found")
    listed = client.get(LIST, **headers)
    assert listed.json()["results"] == []
    assert "secret-customer" not in listed.content.decode()
    assert _rows(other_org) == before


# --- Validation ---------------------------------------------------------------------------------

VALID = {"scope": "organization", "period": "month", "limit_usd": "10"}


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"scope": "planet"}, "scope", "Choose one of"),
        ({"period": "week"}, "period", "Choose one of"),
        ({"limit_usd": "0"}, "limit_usd", "more than $0"),
        ({"limit_usd": "-5"}, "limit_usd", "more than $0"),
        ({"limit_usd": "ten"}, "limit_usd", "in dollars"),
        ({"limit_usd": "1.0000001"}, "limit_usd", "6 decimal places"),
        ({"limit_usd": "1000000001"}, "limit_usd", "at most"),
        ({"limit_usd": [1]}, "limit_usd", "in dollars"),
        ({"enforce": "yes"}, "enforce", "true or false"),
        ({"fail_closed": 1}, "fail_closed", "true or false"),
        ({"alert_thresholds": "80"}, "alert_thresholds", "percentages"),
        ({"alert_thresholds": [0]}, "alert_thresholds", "from 1 to 1000"),
        ({"alert_thresholds": [1001]}, "alert_thresholds", "from 1 to 1000"),
        ({"alert_thresholds": [80.5]}, "alert_thresholds", "whole percentage"),
        ({"alert_thresholds": list(range(1, 12))}, "alert_thresholds", "up to 10"),
        ({"scope": "customer"}, "customer", "Name the customer"),
        ({"scope": "customer", "customer": "x" * 256}, "customer", "at most 255 characters"),
        ({"scope": "token", "token": "costr_nothere"}, "token", "active tokens"),
        ({"scope": "property", "property_value": "chat"}, "property_name", "X-Costr-Property"),
        ({"scope": "property", "property_name": "bad name!"}, "property_name", "letters"),
        ({"scope": "property", "property_name": "feature"}, "property_value", "Give the value"),
        ({"colour": "red"}, "colour", "Unknown field"),
    ],
)
def test_each_bad_field_is_a_400_naming_it_and_nothing_is_created(
    client, org, change, field, words
):
    body = {**VALID, **change}

    response = _send(client, "post", LIST, body, bearer(org, "manage"))

    error = _error(response, 400, "invalid")
    assert list(error["details"]) == [field]
    assert words in error["details"][field][0], error
    assert not Budget.objects.for_org(org).exists()


def test_a_second_budget_for_the_same_scope_and_period_is_refused(client, org):
    _budget(org, scope="organization", period="month")

    response = _send(client, "post", LIST, VALID, bearer(org, "manage"))

    assert "exists" in _error(response, 400, "invalid")["details"]["scope"][0]
    assert Budget.objects.for_org(org).count() == 1


def test_a_revoked_or_expired_tokens_prefix_cannot_be_budgeted(client, org):
    from datetime import timedelta

    from django.utils import timezone

    revoked = keys.proxy_token_create(organization=org, name="old", scopes=["proxy"], actor=None)
    keys.proxy_token_revoke(token=revoked.token, actor=None)
    expired = keys.proxy_token_create(
        organization=org,
        name="expired",
        scopes=["proxy"],
        actor=None,
        expires_at=timezone.now() + timedelta(seconds=1),
    )
    type(expired.token).objects.for_org(org).filter(pk=expired.token.pk).update(
        expires_at=timezone.now() - timedelta(days=1)
    )

    for created in (revoked, expired):
        response = _send(
            client,
            "post",
            LIST,
            {**VALID, "scope": "token", "token": created.token.prefix},
            bearer(org, "manage"),
        )
        _error(response, 400, "invalid")
    assert not Budget.objects.for_org(org).exists()


@pytest.mark.parametrize("body", [[VALID], "budget", None, 5])
def test_a_body_that_is_not_an_object_is_a_400(client, org, body):
    response = _send(client, "post", LIST, body, bearer(org, "manage"))

    _error(response, 400, "invalid")
    assert not Budget.objects.for_org(org).exists()


def test_malformed_json_is_a_400(client, org):
    response = client.post(
        LIST, data="{not json", content_type="application/json", **bearer(org, "manage")
    )

    _error(response, 400, "parse_error")


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"scope": "customer"}, "scope", "cannot change"),
        ({"customer": "globex"}, "customer", "cannot change"),
        ({"token": "costr_abc"}, "token", "cannot change"),
        ({"property_value": "x"}, "property_value", "cannot change"),
        ({"limit_usd": "0"}, "limit_usd", "more than $0"),
        ({"period": "year"}, "period", "Choose one of"),
        ({"enforce": None}, "enforce", "true or false"),
        ({"alert_thresholds": [5000]}, "alert_thresholds", "from 1 to 1000"),
        ({"id": "bud_mine"}, "id", "Unknown field"),
        ({}, "non_field_errors", "at least one field"),
    ],
)
def test_a_refused_change_is_a_400_and_changes_nothing(client, org, change, field, words):
    budget = _budget(org, scope="customer", customer="acme")
    before = _rows(org)

    response = _send(client, "patch", _detail(budget), change, bearer(org, "manage"))

    error = _error(response, 400, "invalid")
    assert words in error["details"][field][0], error
    assert _rows(org) == before
    assert not AuditEvent.objects.for_org(org).filter(action="budget.changed").exists()


def test_changing_the_period_onto_an_existing_budgets_is_refused(client, org):
    _budget(org, scope="customer", customer="acme", period="day")
    month = _budget(org, scope="customer", customer="acme", period="month")

    response = _send(client, "patch", _detail(month), {"period": "day"}, bearer(org, "manage"))

    assert "exists" in _error(response, 400, "invalid")["details"]["period"][0]
    month.refresh_from_db()
    assert month.period == "month"


# --- Figures ------------------------------------------------------------------------------------


def test_spent_comes_from_stored_events_and_each_customer_lists_its_customers(client, org):
    price(org)
    whole = _budget(org, scope="organization", limit_usd="100")
    each = _budget(org, scope="each_customer", limit_usd="4")
    spend(org, "3", customer="acme")
    spend(org, "1.25", customer="globex")
    headers = bearer(org, "read")

    listed = client.get(LIST, **headers).json()["results"]
    detail = client.get(_detail(each), **headers).json()

    by_id = {row["id"]: row for row in listed}
    assert (by_id[whole.public_id]["spent_usd"], by_id[whole.public_id]["reserved_usd"]) == (
        "4.25",
        "0",
    )
    assert (by_id[each.public_id]["spent_usd"], by_id[each.public_id]["reserved_usd"]) == (
        None,
        None,
    )
    assert "top_customers" not in by_id[each.public_id]
    assert detail["top_customers"] == [
        {"customer": "acme", "spent_usd": "3", "reserved_usd": "0", "percent": "75.0"},
        {"customer": "globex", "spent_usd": "1.25", "reserved_usd": "0", "percent": "31.3"},
    ]


def test_spent_and_reserved_are_live_from_the_store(client, org):
    price(org)
    budget = _budget(org, scope="customer", customer="acme", period="day", limit_usd="5")
    spend(org, "1", customer="acme")
    seed_counter(org, budget, "2", reserved="0.4")

    body = client.get(_detail(budget), **bearer(org, "read")).json()

    assert (body["spent_usd"], body["reserved_usd"]) == ("2", "0.4")


def test_the_period_is_the_organizations_calendar_day(client, org):
    from datetime import datetime
    from zoneinfo import ZoneInfo

    org.time_zone = "America/New_York"
    org.save()
    budget = _budget(org, scope="organization", period="day")

    body = client.get(_detail(budget), **bearer(org, "read")).json()

    start = datetime.fromisoformat(body["period_start"])
    end = datetime.fromisoformat(body["period_end"])
    local = start.astimezone(ZoneInfo("America/New_York"))
    assert (local.hour, local.minute) == (0, 0)
    assert body["period_start"].endswith(("-05:00", "-04:00"))
    assert end.astimezone(ZoneInfo("America/New_York")).date() > local.date()
    assert start <= datetime.now(ZoneInfo("UTC")) < end


def test_the_store_not_answering_gives_figures_from_the_events(client, org, settings):
    price(org)
    budget = _budget(org, scope="organization")
    spend(org, "2.5")
    settings.REDIS_URL = "redis://127.0.0.1:9/0"  # the discard port: nothing listens
    settings.COSTR_BUDGET_STORE_TIMEOUT_SECONDS = 0.2

    body = client.get(_detail(budget), **bearer(org, "read")).json()

    assert (body["spent_usd"], body["reserved_usd"]) == ("2.5", "0")


# --- Pages and queries --------------------------------------------------------------------------


def test_the_list_is_paginated_like_the_other_lists(client, org):
    made = [
        _budget(org, scope="customer", customer=f"c{n}", limit_usd=str(n + 1)) for n in range(5)
    ]
    headers = bearer(org, "read")

    seen, url = [], LIST + "?page_size=2"
    while url:
        page = client.get(url, **headers).json()
        assert set(page) == {"next", "previous", "results"}
        assert len(page["results"]) <= 2
        seen.extend(row["id"] for row in page["results"])
        url = page["next"]

    assert seen == [b.public_id for b in made]
    _error(client.get(LIST, {"page_size": "0"}, **headers), 400, "invalid")
    _error(client.get(LIST, {"page_size": "501"}, **headers), 400, "invalid")
    _error(client.get(LIST, {"cursor": "bm90IGEgY3Vyc29y"}, **headers), 400, "invalid")
    _error(client.get(LIST, {"cursor": "cD1ub3QtYS1kYXRl"}, **headers), 400, "invalid")


def test_the_list_reads_a_fixed_number_of_queries_when_the_store_holds_the_counters(client, org):
    headers = bearer(org, "read")
    client.get(LIST, **headers)  # the token is cached from here on

    def queries(count):
        for n in range(count):
            budget = _budget(org, scope="customer", customer=f"q{n}-{count}")
            seed_counter(org, budget, "1")
        with CaptureQueriesContext(connection) as captured:
            response = client.get(LIST, **headers)
        assert response.status_code == 200
        return len(captured)

    assert queries(1) == queries(6)


def test_the_openapi_document_describes_the_budget_operations(client):
    document = client.get("/api/v1/schema/").json()
    paths = document["paths"]

    assert set(paths["/api/v1/budgets/"]) >= {"get", "post"}
    assert set(paths["/api/v1/budgets/{budget_id}/"]) >= {"get", "patch", "delete"}
    schemas = document["components"]["schemas"]
    assert list(schemas["Budget"]["properties"]) == FIELDS
    assert list(schemas["BudgetDetail"]["properties"]) == [*FIELDS, "top_customers"]
    assert set(schemas["BudgetPage"]["required"]) == {"next", "previous", "results"}
    for field in ("limit_usd", "spent_usd", "reserved_usd"):
        assert schemas["Budget"]["properties"][field]["type"] == "string"
        assert schemas["Budget"]["properties"][field]["format"] == "decimal"
    create = paths["/api/v1/budgets/"]["post"]
    assert create["security"] == [{"costrToken": []}, {"cookieAuth": []}]
    assert {"201", "400", "401", "403"} <= set(create["responses"])
    assert "manage" in create["description"]
    assert "null" in paths["/api/v1/budgets/"]["get"]["description"]

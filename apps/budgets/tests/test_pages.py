"""The Budgets pages through Django's test client: the list with each budget's use, the empty
state, creating (scope by scope), changing and deleting with a confirmation, members read-only,
every form error on its field, another organization's budget 404, the banner when the budget
store does not answer, the period in the organization's zone."""

import re
from datetime import datetime
from html import unescape
from zoneinfo import ZoneInfo

import pytest
from django.urls import reverse

from apps.accounts.models import AuditEvent
from apps.budgets.models import Budget
from apps.budgets.services import budget_create
from apps.budgets.tests.budget_data import price, seed_counter, spend
from apps.keys import services as keys

pytestmark = pytest.mark.django_db


def _url(name, org, *args):
    return reverse(name, args=[org.slug, *args])


def _budget(org, **fields):
    fields.setdefault("period", "month")
    fields.setdefault("limit_usd", "10")
    return budget_create(organization=org, actor=None, **fields)


def _text(html: str, element_id: str) -> str:
    """What a reader sees inside the element with ``element_id``: tags dropped, spaces collapsed."""
    start = html.index(f'id="{element_id}"')
    start = html.index(">", start) + 1
    tag = re.search(r"<(\w+)[^>]*\bid=\"" + re.escape(element_id), html)[1]
    depth, position = 1, start
    for match in re.finditer(rf"<(/?){tag}\b", html[start:]):
        depth += -1 if match[1] else 1
        if depth == 0:
            position = start + match.start()
            break
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html[start:position])).split())


def _create(client, org, **fields):
    data = {
        "scope": "organization",
        "period": "month",
        "limit_usd": "50",
        "enforce": "true",
        "alert_thresholds": "80, 100",
        **fields,
    }
    return client.post(_url("budgets", org), data)


def test_the_empty_page_explains_budgets_and_offers_the_form(client, org, admin):
    client.force_login(admin)

    page = client.get(_url("budgets", org)).content.decode()

    empty = _text(page, "budgets-empty")
    assert "No budgets yet" in empty
    assert "429 budget_exceeded" in empty and "Thresholds" in empty
    assert 'id="create-budget"' in page
    assert f'href="{_url("budgets", org)}" aria-current="page">Budgets</a>' in page


def test_the_list_shows_each_budget_with_its_use(client, org, member):
    price(org)
    token = keys.proxy_token_create(organization=org, name="cron job", scopes=["proxy"], actor=None)
    _budget(org, scope="organization", limit_usd="100", alert_thresholds=[50, 90])
    acme = _budget(org, scope="customer", customer="acme", period="day", limit_usd="4")
    _budget(org, scope="token", token=token.token.prefix, enforce=False, fail_closed=True)
    _budget(org, scope="each_customer", period="day", limit_usd="2")
    spend(org, "3", customer="acme")
    spend(org, "1.5", customer="globex", token_id=token.token.pk)
    seed_counter(org, acme, "3.2", reserved="0.4")
    client.force_login(member)

    page = client.get(_url("budgets", org)).content.decode()

    rows = {b.public_id: _text(page, b.public_id) for b in Budget.objects.for_org(org)}
    texts = list(rows.values())
    org_row = next(t for t in texts if "whole organization" in t)
    assert "$100.00 $4.50 $0.00 4.5% Refuse 50%, 90%" in org_row
    assert "50%, 90%" in org_row
    assert "acme" in rows[acme.public_id]
    assert "$4.00 $3.20 $0.40 80.0%" in rows[acme.public_id]
    token_row = next(t for t in texts if "cron job" in t)
    assert f"cron job ({token.token.prefix}…)" in token_row
    assert "$1.50" in token_row and "Alert only" in token_row and "Fail-closed" in token_row
    each_row = next(t for t in texts if "Every customer" in t)
    # acme has a day budget of its own: globex is the highest under the default.
    assert "per customer" in each_row and "75.0% highest: globex, $1.50" in each_row
    assert 'id="store-unavailable"' not in page
    # A member reads, and is told who may change.
    assert 'id="create-budget"' not in page and "Only admins and owners" in page
    assert _url("budget_delete", org, acme.public_id) not in page


def test_the_period_is_shown_in_the_organizations_zone(client, org, member):
    org.time_zone = "Pacific/Kiritimati"  # UTC+14: its day is often a different date than UTC's
    org.save()
    _budget(org, scope="organization", period="day")
    today = datetime.now(ZoneInfo("Pacific/Kiritimati")).date()
    client.force_login(member)

    page = client.get(_url("budgets", org)).content.decode()

    assert f"{today:%b} {today.day}, {today.year}" in page
    assert "Pacific/Kiritimati" in page


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, {"scope": "organization", "customer": "", "token": None}),
        ({"scope": "customer", "customer": "acme"}, {"scope": "customer", "customer": "acme"}),
        (
            {"scope": "each_customer", "customer": "ignored"},
            {"scope": "each_customer", "customer": ""},
        ),
        (
            {"scope": "property", "property_name": "Feature", "property_value": "chat"},
            {"scope": "property", "property_name": "feature", "property_value": "chat"},
        ),
    ],
)
def test_an_admin_creates_a_budget_of_each_scope(client, org, admin, fields, expected):
    client.force_login(admin)

    response = _create(client, org, **fields)

    assert response.status_code == 302
    assert response["Location"] == _url("budgets", org)
    budget = Budget.objects.for_org(org).get()
    for name, value in expected.items():
        assert getattr(budget, name) == value, name
    assert (budget.period, budget.limit_usd, budget.enforce) == ("month", 50, True)
    assert budget.alert_thresholds == [80, 100]
    assert AuditEvent.objects.for_org(org).get(action="budget.created").actor == admin
    followed = client.get(response["Location"]).content.decode()
    assert "Budget created" in followed


def test_a_token_budget_is_chosen_by_name_and_prefix(client, org, admin):
    active = keys.proxy_token_create(organization=org, name="batch", scopes=["proxy"], actor=None)
    revoked = keys.proxy_token_create(organization=org, name="gone", scopes=["proxy"], actor=None)
    keys.proxy_token_revoke(token=revoked.token, actor=None)
    client.force_login(admin)

    page = client.get(_url("budgets", org)).content.decode()
    assert f'<option value="{active.token.prefix}">batch ({active.token.prefix}…)</option>' in page
    assert revoked.token.prefix not in page
    response = _create(
        client, org, scope="token", token=active.token.prefix, enforce="false", fail_closed="on"
    )

    assert response.status_code == 302
    budget = Budget.objects.for_org(org).get()
    assert (budget.token_id, budget.enforce, budget.fail_closed) == (active.token.pk, False, True)


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"scope": "planet"}, "scope", "Select a valid choice"),
        ({"period": "week"}, "period", "Select a valid choice"),
        ({"limit_usd": ""}, "limit_usd", "This field is required"),
        ({"limit_usd": "0"}, "limit_usd", "more than $0"),
        ({"limit_usd": "lots"}, "limit_usd", "in dollars"),
        ({"limit_usd": "0.0000001"}, "limit_usd", "6 decimal places"),
        ({"alert_thresholds": "eighty"}, "alert_thresholds", "Whole percentages"),
        ({"alert_thresholds": " , "}, "alert_thresholds", "at least one"),
        ({"alert_thresholds": "0, 100"}, "alert_thresholds", "from 1 to 1000"),
        ({"scope": "customer", "customer": ""}, "customer", "Name the customer"),
        ({"scope": "token", "token": ""}, "token", "active tokens"),
        ({"scope": "token", "token": "costr_forged"}, "token", "Select a valid choice"),
        (
            {"scope": "property", "property_name": "a b", "property_value": "x"},
            "property_name",
            "letters",
        ),
        ({"scope": "property", "property_name": "feature"}, "property_value", "Give the value"),
        ({"enforce": "maybe"}, "enforce", "Select a valid choice"),
    ],
)
def test_each_form_error_shows_on_its_field_and_creates_nothing(
    client, org, admin, fields, field, words
):
    client.force_login(admin)

    response = _create(client, org, **fields)

    assert response.status_code == 400
    form = response.context["form"]
    assert list(form.errors) == [field], form.errors
    assert words in form.errors[field][0]
    assert words in unescape(response.content.decode())
    assert not Budget.objects.for_org(org).exists()


def test_a_second_budget_for_the_same_target_and_period_is_refused(client, org, admin):
    _budget(org, scope="customer", customer="acme", period="day")
    client.force_login(admin)

    response = _create(client, org, scope="customer", customer="acme", period="day")

    assert response.status_code == 400
    assert "exists" in response.context["form"].errors["scope"][0]
    assert Budget.objects.for_org(org).count() == 1


def test_an_admin_changes_a_budget_on_its_page(client, org, admin):
    budget = _budget(org, scope="customer", customer="acme", period="day", limit_usd="5")
    client.force_login(admin)
    url = _url("budget", org, budget.public_id)

    page = client.get(url).content.decode()
    assert 'value="5"' in page and 'id="change-budget"' in page
    response = client.post(
        url,
        {
            "period": "month",
            "limit_usd": "75.5",
            "enforce": "false",
            "fail_closed": "on",
            "alert_thresholds": "50%, 100%, 120%",
            # A forged scope field is not part of the change form: ignored, the scope stays.
            "scope": "organization",
        },
    )

    assert response.status_code == 302 and response["Location"] == url
    budget.refresh_from_db()
    assert (budget.scope, budget.customer, budget.period) == ("customer", "acme", "month")
    assert (budget.limit_usd, budget.enforce, budget.fail_closed) == (75.5, False, True)
    assert budget.alert_thresholds == [50, 100, 120]
    assert AuditEvent.objects.for_org(org).get(action="budget.changed").actor == admin
    assert "Budget saved" in client.get(url).content.decode()


def test_a_refused_change_shows_the_error_and_the_budget_as_stored(client, org, admin):
    budget = _budget(org, scope="organization", limit_usd="5")
    client.force_login(admin)
    url = _url("budget", org, budget.public_id)

    response = client.post(
        url, {"period": "month", "limit_usd": "-1", "enforce": "true", "alert_thresholds": "80"}
    )

    assert response.status_code == 400
    assert "more than $0" in response.context["form"].errors["limit_usd"][0]
    assert _text(response.content.decode(), "card-limit").startswith("Limit $5.00")
    budget.refresh_from_db()
    assert budget.limit_usd == 5


def test_each_customer_page_lists_its_customers_nearest_the_cap(client, org, member):
    price(org)
    budget = _budget(org, scope="each_customer", limit_usd="4")
    spend(org, "3", customer="acme")
    spend(org, "1", customer="team/a b")
    client.force_login(member)

    page = client.get(_url("budget", org, budget.public_id)).content.decode()

    assert _text(page, "top-customers").endswith(
        "acme $3.00 $0.00 75.0% team/a b $1.00 $0.00 25.0%"
    )
    assert reverse("customer_detail", args=[org.slug, "team/a b"]) in page
    assert 'id="change-budget"' not in page


def test_delete_asks_first_then_deletes_on_post(client, org, admin):
    budget = _budget(org, scope="property", property_name="feature", property_value="chat")
    client.force_login(admin)
    url = _url("budget_delete", org, budget.public_id)

    confirm = client.get(url)
    assert confirm.status_code == 200
    assert "Delete the month budget of feature = chat?" in unescape(confirm.content.decode())
    assert Budget.objects.for_org(org).exists()
    response = client.post(url)

    assert response.status_code == 302 and response["Location"] == _url("budgets", org)
    assert not Budget.objects.for_org(org).exists()
    assert AuditEvent.objects.for_org(org).get(action="budget.deleted").actor == admin
    assert "Deleted the month budget of feature = chat" in unescape(
        client.get(response["Location"]).content.decode()
    )


def test_a_member_cannot_create_change_or_delete(client, org, member):
    budget = _budget(org, scope="organization", limit_usd="5")
    client.force_login(member)
    before = sorted(Budget.objects.for_org(org).values_list())

    responses = [
        _create(client, org, scope="customer", customer="acme"),
        client.post(
            _url("budget", org, budget.public_id),
            {"period": "day", "limit_usd": "1", "enforce": "true", "alert_thresholds": "80"},
        ),
        client.get(_url("budget_delete", org, budget.public_id)),
        client.post(_url("budget_delete", org, budget.public_id)),
    ]

    assert [r.status_code for r in responses] == [403, 403, 403, 403]
    assert sorted(Budget.objects.for_org(org).values_list()) == before
    assert client.get(_url("budget", org, budget.public_id)).status_code == 200


def test_another_organizations_budget_is_404_and_untouched(client, org, admin, other_org):
    theirs = _budget(other_org, scope="customer", customer="their-secret")
    client.force_login(admin)

    for response in (
        client.get(_url("budget", org, theirs.public_id)),
        client.post(
            _url("budget", org, theirs.public_id),
            {"period": "day", "limit_usd": "1", "enforce": "true", "alert_thresholds": "80"},
        ),
        client.get(_url("budget_delete", org, theirs.public_id)),
        client.post(_url("budget_delete", org, theirs.public_id)),
    ):
        assert response.status_code == 404
    assert "their-secret" not in client.get(_url("budgets", org)).content.decode()
    theirs.refresh_from_db()
    assert theirs.limit_usd == 10


def test_the_banner_says_when_the_budget_store_does_not_answer(client, org, member, settings):
    price(org)
    budget = _budget(org, scope="organization", limit_usd="10")
    spend(org, "2")
    settings.REDIS_URL = "redis://127.0.0.1:9/0"  # the discard port: nothing listens
    settings.COSTR_BUDGET_STORE_TIMEOUT_SECONDS = 0.2
    client.force_login(member)

    listing = client.get(_url("budgets", org)).content.decode()
    detail = client.get(_url("budget", org, budget.public_id)).content.decode()

    for page in (listing, detail):
        banner = _text(page, "store-unavailable")
        assert "not answering" in banner
        assert "forwarded unchecked unless the budget is fail-closed" in banner
    # The figures still show, from the stored events.
    assert "$2.00" in _text(listing, budget.public_id)

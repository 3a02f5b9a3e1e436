"""Who may read each reporting endpoint: a ``read`` token of the organization or a member's
session. Anyone else learns nothing: no token is 401 with a Bearer challenge, a token without
``read`` is 403, and another organization's token sees an empty organization (its own) or 404."""

from datetime import UTC, datetime
from urllib.parse import quote

import pytest

from apps.keys import services
from apps.usage.tests.factories import store_usage

pytestmark = pytest.mark.django_db

# group_by=customer: the spend report then names the customer, so the data is visible in it.
PERIOD = {"start": "2026-11-01", "end": "2026-11-30", "group_by": "customer"}
SECRET_CUSTOMER = "acme/secret plans é"
ENDPOINTS = {
    "events": "/api/v1/events/",
    "spend": "/api/v1/reports/spend/",
    "customers": "/api/v1/customers/",
    "customer": f"/api/v1/customers/{quote(SECRET_CUSTOMER, safe='')}/",
}


def bearer(org, *scopes):
    created = services.proxy_token_create(
        organization=org, name="api", scopes=list(scopes or ["read"]), actor=None
    )
    return {"HTTP_AUTHORIZATION": f"Bearer {created.plaintext}"}


@pytest.fixture
def traffic(org):
    """One request of ``org``'s secret customer, inside ``PERIOD``."""
    store_usage(
        org,
        customer=SECRET_CUSTOMER,
        model="secret-model",
        properties={"feature": "secret-feature"},
        timestamp=datetime(2026, 11, 2, 12, tzinfo=UTC).isoformat(),
    )
    return org


def assert_error(response, status, code):
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code
    assert body["error"]["message"]


def assert_nothing_of(response, org):
    """A 200 that holds nothing of ``org``'s data, or a 404."""
    text = response.content.decode()
    for secret in ("secret", "acme", org.slug):
        assert secret not in text, text


@pytest.mark.parametrize("name", ENDPOINTS)
def test_no_token_is_401_with_a_bearer_challenge(client, traffic, name):
    response = client.get(ENDPOINTS[name], PERIOD)

    assert_error(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("name", ENDPOINTS)
def test_an_unknown_token_is_401(client, traffic, name):
    response = client.get(
        ENDPOINTS[name], PERIOD, HTTP_AUTHORIZATION="Bearer costr_nobody-was-given-this"
    )

    assert_error(response, 401, "invalid_token")
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("name", ENDPOINTS)
@pytest.mark.parametrize("scope", ["proxy", "ingest"])
def test_a_token_without_the_read_scope_is_403(client, traffic, name, scope):
    response = client.get(ENDPOINTS[name], PERIOD, **bearer(traffic, scope))

    assert_error(response, 403, "token_scope")
    assert_nothing_of(response, traffic)


@pytest.mark.parametrize("name", ENDPOINTS)
def test_a_read_token_of_the_organization_sees_its_data(client, traffic, name):
    response = client.get(ENDPOINTS[name], PERIOD, **bearer(traffic, "read"))

    assert response.status_code == 200, response.content
    assert "secret" in response.content.decode()


@pytest.mark.parametrize("name", ["events", "spend", "customers"])
def test_another_organizations_token_sees_an_empty_organization(client, traffic, other_org, name):
    response = client.get(ENDPOINTS[name], PERIOD, **bearer(other_org, "read"))

    assert response.status_code == 200, response.content
    body = response.json()
    assert body.get("results", body.get("rows")) == []
    assert_nothing_of(response, traffic)


def test_another_organizations_token_gets_404_for_the_customer(client, traffic, other_org):
    response = client.get(ENDPOINTS["customer"], PERIOD, **bearer(other_org, "read"))

    assert_error(response, 404, "not_found")
    assert_nothing_of(response, traffic)


@pytest.mark.parametrize("name", ENDPOINTS)
def test_a_token_naming_another_organization_gets_404(client, traffic, other_org, name):
    response = client.get(
        ENDPOINTS[name], {**PERIOD, "org": traffic.slug}, **bearer(other_org, "read")
    )

    assert_error(response, 404, "not_found")
    assert_nothing_of(response, traffic)


@pytest.mark.parametrize("name", ENDPOINTS)
def test_a_member_reads_with_a_session_naming_the_organization(client, traffic, member, name):
    client.force_login(member)

    response = client.get(ENDPOINTS[name], {**PERIOD, "org": traffic.slug})

    assert response.status_code == 200, response.content
    assert "secret" in response.content.decode()


@pytest.mark.parametrize("name", ENDPOINTS)
def test_an_outsider_with_a_session_gets_404(client, traffic, outsider, name):
    client.force_login(outsider)

    response = client.get(ENDPOINTS[name], {**PERIOD, "org": traffic.slug})

    assert_error(response, 404, "not_found")
    assert_nothing_of(response, traffic)


@pytest.mark.parametrize("name", ["events", "spend", "customers"])
def test_an_outsiders_session_without_org_reads_only_their_own(client, traffic, outsider, name):
    client.force_login(outsider)

    response = client.get(ENDPOINTS[name], PERIOD)

    assert response.status_code == 200, response.content
    assert_nothing_of(response, traffic)


@pytest.mark.parametrize("name", ENDPOINTS)
def test_writes_are_not_allowed(client, traffic, name):
    response = client.post(
        ENDPOINTS[name], {}, content_type="application/json", **bearer(traffic, "read")
    )

    assert_error(response, 405, "method_not_allowed")


@pytest.mark.parametrize("path", ["/api/v1/customers/", "/api/v1/no%0Asuch/", "/api/v1/events"])
def test_unknown_paths_answer_in_the_error_shape_even_with_odd_characters(client, org, path):
    response = client.get(path.replace("customers/", "customers//"), **bearer(org, "read"))

    assert_error(response, 404, "not_found")

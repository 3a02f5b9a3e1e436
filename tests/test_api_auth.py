"""Who may call ``/api/v1/``, for which organization, and the one shape of every API error.

A small ``read``-scoped view of memberships is mounted beside the real API routes for this
module, since the reporting endpoints come later; ingest is the real ``ingest``-scoped view.
"""

from datetime import timedelta

import pytest
from django.urls import include, path
from django.utils import timezone
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle

from apps.accounts.api import OrganizationAPIView
from apps.accounts.models import Membership
from apps.accounts.tests.factories import MembershipFactory, OrganizationFactory
from apps.keys import keycache, last_used, services
from apps.keys.models import ProxyToken
from apps.usage.models import UsageEvent

pytestmark = [pytest.mark.django_db, pytest.mark.urls(__name__)]


class MembershipIds(OrganizationAPIView):
    model = Membership

    def get(self, request, *args, **kwargs):
        return Response(sorted(self.get_queryset().values_list("pk", flat=True)))

    def post(self, request, *args, **kwargs):
        return Response({"changed": True})


class AlwaysThrottled(BaseThrottle):
    def allow_request(self, request, view):
        return False

    def wait(self):
        return 7


class ThrottledView(MembershipIds):
    throttle_classes = [AlwaysThrottled]


urlpatterns = [
    path("api/v1/test/memberships/", MembershipIds.as_view()),
    path("api/v1/test/throttled/", ThrottledView.as_view()),
    path("api/v1/", include("costr.api")),
]
READ_URL = "/api/v1/test/memberships/"
INGEST_URL = "/api/v1/ingest/"


@pytest.fixture(autouse=True)
def _fresh_cache():
    keycache._drop_local(None)
    yield
    keycache._drop_local(None)


def _token(org, scopes=("read",), **kwargs):
    created = services.proxy_token_create(
        organization=org, name="api", scopes=list(scopes), actor=None, **kwargs
    )
    return created.token, created.plaintext


def _bearer(plaintext):
    return {"HTTP_AUTHORIZATION": f"Bearer {plaintext}"}


def _member_ids(org):
    return sorted(Membership.objects.for_org(org).values_list("pk", flat=True))


def _assert_error(response, status, code):
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body["error"]


# --- 401 -------------------------------------------------------------------------------------


def test_no_token_is_401_with_a_bearer_challenge(client, org):
    response = client.get(READ_URL)

    _assert_error(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "header",
    [
        "Bearer costr_not-a-token-anyone-was-given",
        "Bearer sk-proj-somebody-elses-key",
        "Bearer",
        "Bearer costr_a costr_b",
        "bearer costr_\u00e9",
    ],
)
def test_a_bad_bearer_header_is_401(client, org, header):
    response = client.get(READ_URL, HTTP_AUTHORIZATION=header.encode().decode("latin-1"))

    _assert_error(response, 401, "invalid_token")
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert "not-a-token-anyone" not in response.content.decode()
    assert "somebody-elses-key" not in response.content.decode()


def test_another_scheme_is_not_ours_and_leaves_the_request_unauthenticated(client, org):
    response = client.get(READ_URL, HTTP_AUTHORIZATION="Basic dXNlcjpwYXNz")

    _assert_error(response, 401, "not_authenticated")


def test_a_revoked_token_is_401_even_after_it_was_used(
    client, org, member, django_capture_on_commit_callbacks
):
    token, plaintext = _token(org)
    assert client.get(READ_URL, **_bearer(plaintext)).status_code == 200

    with django_capture_on_commit_callbacks(execute=True):
        services.proxy_token_revoke(token=token, actor=None)

    response = client.get(READ_URL, **_bearer(plaintext))
    _assert_error(response, 401, "invalid_token")
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_an_expired_token_is_401(client, org):
    token, plaintext = _token(org, expires_at=timezone.now() + timedelta(days=1))
    ProxyToken.objects.for_org(org).filter(pk=token.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )

    response = client.get(READ_URL, **_bearer(plaintext))

    _assert_error(response, 401, "invalid_token")
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_a_token_of_an_organization_being_deleted_is_401(client, org, member):
    from apps.accounts.models import Organization

    _, plaintext = _token(org)
    assert client.get(READ_URL, **_bearer(plaintext)).status_code == 200

    Organization.objects.filter(pk=org.pk).update(deletion_requested_at=timezone.now())

    _assert_error(client.get(READ_URL, **_bearer(plaintext)), 401, "invalid_token")


# --- 403 and organizations -------------------------------------------------------------------


def test_a_token_reads_its_own_organization_only(client, org, member, other_org, outsider):
    _, plaintext = _token(org)

    response = client.get(READ_URL, **_bearer(plaintext))

    assert response.status_code == 200
    assert response.json() == _member_ids(org)
    assert set(response.json()).isdisjoint(_member_ids(other_org))


def test_a_token_naming_another_organization_gets_404(client, org, other_org):
    _, plaintext = _token(org)

    response = client.get(READ_URL, {"org": other_org.slug}, **_bearer(plaintext))

    _assert_error(response, 404, "not_found")


def test_a_token_without_the_scope_is_403(client, org):
    _, ingest_only = _token(org, scopes=["ingest", "proxy"])
    _, read_only = _token(org, scopes=["read"])

    read = client.get(READ_URL, **_bearer(ingest_only))
    ingest = client.post(
        INGEST_URL, {"events": []}, content_type="application/json", **_bearer(read_only)
    )

    assert "read scope" in _assert_error(read, 403, "token_scope")["message"]
    assert "ingest scope" in _assert_error(ingest, 403, "token_scope")["message"]


def test_ingest_with_one_orgs_token_never_writes_another(client, org, other_org):
    _, plaintext = _token(org, scopes=["ingest"])
    event = {
        "event_id": "e1",
        "timestamp": timezone.now().isoformat(),
        "provider": "openai",
        "model": "gpt-4o-mini",
        "input_tokens": 10,
        "output_tokens": 5,
    }

    response = client.post(
        f"{INGEST_URL}?org={other_org.slug}",
        {"events": [event]},
        content_type="application/json",
        **_bearer(plaintext),
    )
    assert response.status_code == 404
    response = client.post(
        INGEST_URL, {"events": [event]}, content_type="application/json", **_bearer(plaintext)
    )

    assert response.status_code == 200
    assert UsageEvent.objects.for_org(org).count() == 1
    assert not UsageEvent.objects.for_org(other_org).exists()


def test_api_use_is_noted_for_the_tokens_last_used_time_without_a_write(client, org):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    token, plaintext = _token(org)
    keycache.drain_uses()

    with CaptureQueriesContext(connection) as queries:
        client.get(READ_URL, **_bearer(plaintext))

    assert not [q for q in queries if q["sql"].lstrip().upper().startswith("UPDATE")]
    uses = keycache.drain_uses()
    assert f"token:{token.pk}" in uses
    last_used.last_used_apply(uses)
    token.refresh_from_db()
    assert token.last_used_at is not None


def test_a_warm_token_costs_one_query_for_its_organization(client, org, member):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    _, plaintext = _token(org)
    client.get(READ_URL, **_bearer(plaintext))

    with CaptureQueriesContext(connection) as queries:
        response = client.get(READ_URL, **_bearer(plaintext))

    assert response.status_code == 200
    # The organization by primary key, then the view's own query.
    assert len(queries) == 2, [q["sql"] for q in queries]


# --- Sessions --------------------------------------------------------------------------------


def test_a_member_of_one_org_needs_not_name_it(client, org, member):
    client.force_login(member)

    response = client.get(READ_URL)

    assert response.status_code == 200
    assert response.json() == _member_ids(org)


def test_a_member_of_several_orgs_names_one_with_the_org_parameter(client, org, member):
    second = OrganizationFactory()
    MembershipFactory(organization=second, user=member)
    client.force_login(member)

    unnamed = client.get(READ_URL)
    named = client.get(READ_URL, {"org": second.slug})

    assert "?org=<slug>" in _assert_error(unnamed, 400, "org_required")["message"]
    assert named.status_code == 200
    assert named.json() == _member_ids(second)


def test_a_non_member_naming_an_org_gets_404(client, org, member, outsider):
    client.force_login(outsider)

    _assert_error(client.get(READ_URL, {"org": org.slug}), 404, "not_found")
    _assert_error(client.get(READ_URL, {"org": "no-such-org"}), 404, "not_found")


def test_a_person_in_no_organization_gets_404(client, db):
    from apps.accounts.tests.factories import UserFactory

    client.force_login(UserFactory())

    _assert_error(client.get(READ_URL), 404, "not_found")


def test_a_member_without_the_write_role_gets_403(client, org, member, admin):
    client.force_login(member)
    _assert_error(client.post(READ_URL, {}, content_type="application/json"), 403, "role")

    client.force_login(admin)
    assert client.post(READ_URL, {}, content_type="application/json").json() == {"changed": True}


def test_ingest_takes_tokens_not_sessions(client, org, owner):
    client.force_login(owner)

    response = client.post(INGEST_URL, {"events": []}, content_type="application/json")

    _assert_error(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_a_session_post_without_csrf_is_refused_in_the_error_shape(org, admin):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(admin)

    response = client.post(READ_URL, {}, content_type="application/json")

    _assert_error(response, 403, "permission_denied")


# --- Error shapes ----------------------------------------------------------------------------


def test_a_wrong_method_is_405_in_the_error_shape(client, org):
    _, plaintext = _token(org, scopes=["ingest"])

    response = client.get(INGEST_URL, **_bearer(plaintext))

    _assert_error(response, 405, "method_not_allowed")
    assert response["Allow"] == "POST, OPTIONS"


def test_a_form_body_is_415_in_the_error_shape(client, org):
    _, plaintext = _token(org, scopes=["ingest"])

    response = client.post(INGEST_URL, {"events": "x"}, **_bearer(plaintext))

    _assert_error(response, 415, "unsupported_media_type")


def test_throttling_is_429_in_the_error_shape_with_retry_after(client, org):
    _, plaintext = _token(org)

    response = client.get("/api/v1/test/throttled/", **_bearer(plaintext))

    error = _assert_error(response, 429, "throttled")
    assert response["Retry-After"] == "7"
    assert error["details"] == {"retry_after_seconds": 7}


def test_an_unknown_api_path_is_404_in_the_error_shape(client):
    _assert_error(client.get("/api/v1/no-such-thing/"), 404, "not_found")
    _assert_error(client.post("/api/v1/ingest"), 404, "not_found")


def test_a_database_outage_is_503_in_the_error_shape(client, org):
    from django.db import OperationalError, connection

    _, plaintext = _token(org)
    client.get(READ_URL, **_bearer(plaintext))

    def database_down(execute, sql, params, many, context):
        raise OperationalError("connection refused")

    with connection.execute_wrapper(database_down):
        response = client.get(READ_URL, **_bearer(plaintext))

    _assert_error(response, 503, "database_unavailable")

"""``/api/v1/webhooks/``: the `read` scope lists, `manage` creates and deletes; a session needs
the admin role to change; another organization's webhook answers 404; the secret comes once; bad
input is a 400 in the error shape and writes nothing."""

import json

import pytest

from apps.accounts.models import AuditEvent
from apps.budgets import alert_services
from apps.budgets.models import Webhook
from apps.keys import keycache, services

pytestmark = pytest.mark.django_db

LIST = "/api/v1/webhooks/"
PUBLIC_URL = "https://93.184.215.14/costr"


@pytest.fixture(autouse=True)
def _fresh_cache():
    keycache._drop_local(None)
    yield
    keycache._drop_local(None)


def _bearer(org, *scopes):
    created = services.proxy_token_create(
        organization=org, name="api", scopes=list(scopes), actor=None
    )
    return {"HTTP_AUTHORIZATION": f"Bearer {created.plaintext}"}


def _post(client, body, **headers):
    return client.post(LIST, json.dumps(body), content_type="application/json", **headers)


def _error(response, status, code):
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    return body["error"]


def test_manage_creates_and_the_secret_comes_once(client, org):
    manage = _bearer(org, "manage", "read")
    response = _post(client, {"url": PUBLIC_URL, "events": ["spend.anomaly"]}, **manage)
    assert response.status_code == 201, response.content
    created = response.json()
    assert set(created) == {"id", "url", "events", "created", "secret"}
    assert created["id"].startswith("wh_") and created["secret"].startswith("whsec_")
    assert (created["url"], created["events"]) == (PUBLIC_URL, ["spend.anomaly"])

    listed = client.get(LIST, **manage).json()
    assert set(listed) == {"next", "previous", "results"}
    assert listed["results"] == [{k: v for k, v in created.items() if k != "secret"}]
    detail = client.get(f"{LIST}{created['id']}/", **manage)
    assert detail.status_code == 200
    assert "secret" not in detail.json()
    assert created["secret"] not in (listed.__repr__() + detail.content.decode())
    event = AuditEvent.objects.for_org(org).get(action="webhook.created")
    assert event.target == created["id"] and created["secret"] not in repr(event.details)


def test_read_lists_but_cannot_change(client, org):
    hook = alert_services.webhook_create(
        organization=org, actor=None, url=PUBLIC_URL, events=["budget.exceeded"]
    ).webhook
    read = _bearer(org, "read")
    assert [w["id"] for w in client.get(LIST, **read).json()["results"]] == [hook.public_id]
    _error(
        _post(client, {"url": PUBLIC_URL, "events": ["spend.anomaly"]}, **read), 403, "token_scope"
    )
    _error(client.delete(f"{LIST}{hook.public_id}/", **read), 403, "token_scope")
    assert Webhook.objects.for_org(org).count() == 1
    _error(client.get(LIST, **_bearer(org, "ingest")), 403, "token_scope")


def test_delete_with_manage(client, org):
    hook = alert_services.webhook_create(
        organization=org, actor=None, url=PUBLIC_URL, events=["budget.exceeded"]
    ).webhook
    manage = _bearer(org, "manage")
    assert client.delete(f"{LIST}{hook.public_id}/", **manage).status_code == 204
    assert not Webhook.objects.for_org(org).exists()
    _error(client.delete(f"{LIST}{hook.public_id}/", **manage), 404, "not_found")
    assert AuditEvent.objects.for_org(org).filter(action="webhook.deleted").count() == 1


def test_another_organizations_webhook_is_404_and_untouched(client, org, other_org):
    theirs = alert_services.webhook_create(
        organization=other_org, actor=None, url=PUBLIC_URL, events=["budget.exceeded"]
    ).webhook
    manage = _bearer(org, "manage", "read")
    _error(client.get(f"{LIST}{theirs.public_id}/", **manage), 404, "not_found")
    _error(client.delete(f"{LIST}{theirs.public_id}/", **manage), 404, "not_found")
    assert client.get(LIST, **manage).json()["results"] == []
    assert Webhook.objects.for_org(other_org).count() == 1


def test_no_token_is_401(client, org):
    response = client.get(LIST)
    _error(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_sessions_read_as_members_and_change_as_admins(client, org, member, admin):
    client.force_login(member)
    assert client.get(LIST).status_code == 200
    _error(_post(client, {"url": PUBLIC_URL, "events": ["spend.anomaly"]}), 403, "role")
    assert not Webhook.objects.for_org(org).exists()
    client.force_login(admin)
    response = _post(
        client,
        {"url": PUBLIC_URL, "events": ["spend.anomaly"]},
        **{"QUERY_STRING": f"org={org.slug}"},
    )
    assert response.status_code == 201, response.content
    assert Webhook.objects.for_org(org).get().created_by == admin


BAD_BODIES = [
    ({"url": "http://93.184.215.14/x", "events": ["spend.anomaly"]}, "url", "https://"),
    ({"url": "https://127.0.0.1/x", "events": ["spend.anomaly"]}, "url", "private"),
    ({"url": 42, "events": ["spend.anomaly"]}, "url", "string"),
    ({"url": PUBLIC_URL, "events": []}, "events", "at least one"),
    ({"url": PUBLIC_URL, "events": ["budget.nope"]}, "events", "Unknown event type"),
    ({"url": PUBLIC_URL, "events": "spend.anomaly"}, "events", "at least one"),
    ({"url": PUBLIC_URL}, "events", "required"),
    ({"url": PUBLIC_URL, "events": ["spend.anomaly"], "secret": "mine"}, "secret", "Unknown"),
    (["not", "an", "object"], "non_field_errors", "JSON object"),
]


@pytest.mark.parametrize(("body", "field", "words"), BAD_BODIES)
def test_bad_input_is_a_400_naming_the_field_and_writes_nothing(client, org, body, field, words):
    error = _error(_post(client, body, **_bearer(org, "manage")), 400, "invalid")
    assert words in " ".join(error["details"][field])
    assert not Webhook.objects.for_org(org).exists()


def test_at_most_twenty_webhooks(client, org):
    manage = _bearer(org, "manage")
    for _ in range(alert_services.MAX_WEBHOOKS):
        assert (
            _post(client, {"url": PUBLIC_URL, "events": ["spend.anomaly"]}, **manage).status_code
            == 201
        )
    error = _error(
        _post(client, {"url": PUBLIC_URL, "events": ["spend.anomaly"]}, **manage), 400, "invalid"
    )
    assert "at most 20 webhooks" in error["message"]
    assert Webhook.objects.for_org(org).count() == 20


def test_the_schema_describes_the_webhook_routes(client):
    document = client.get("/api/v1/schema/").json()
    paths = document["paths"]
    assert set(paths["/api/v1/webhooks/"]) >= {"get", "post"}
    assert set(paths["/api/v1/webhooks/{webhook_id}/"]) >= {"get", "delete"}
    created = document["components"]["schemas"]["WebhookCreated"]
    assert {"id", "url", "events", "created", "secret"} <= set(created["properties"])
    assert "Costr-Signature" in paths["/api/v1/webhooks/"]["post"]["description"]
    assert {"400", "401", "403"} <= set(paths["/api/v1/webhooks/"]["post"]["responses"])

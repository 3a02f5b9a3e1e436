import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from apps.accounts.models import AuditEvent
from apps.keys import keycache, services
from apps.keys.models import ProxyToken

pytestmark = pytest.mark.django_db


def _create(client, org, **data):
    payload = {"name": "api server", "scopes": ["proxy"], "expires_in_days": "", **data}
    return client.post(reverse("tokens", args=[org.slug]), payload)


def _shown_token(response) -> str:
    return re.search(r'<pre id="new-token">(costr_[^<]+)</pre>', response.content.decode())[1]


def test_a_token_is_shown_once_with_base_urls_and_stored_only_as_a_hash(client, org, admin):
    client.force_login(admin)

    created = _create(client, org, scopes=["proxy", "read"])
    assert created.status_code == 302
    assert created["Location"] == reverse("token_created", args=[org.slug])
    response = client.get(created["Location"])

    assert response.status_code == 200
    plaintext = _shown_token(response)
    assert re.fullmatch(r"costr_[A-Za-z0-9_-]{43}", plaintext)
    page = response.content.decode()
    assert f"http://testserver/p/{org.slug}/openai/v1" in page
    assert f"http://testserver/p/{org.slug}/anthropic" in page
    assert f"http://testserver/p/{org.slug}/google" in page
    assert "no-store" in response["Cache-Control"]
    token = ProxyToken.objects.for_org(org).get()
    assert token.token_hash == services.token_hash(plaintext)
    assert token.prefix == plaintext[:14]
    assert sorted(token.scopes) == ["proxy", "read"]
    listing = client.get(reverse("tokens", args=[org.slug])).content.decode()
    assert token.prefix in listing and plaintext not in listing
    assert AuditEvent.objects.for_org(org).filter(action="token.created").exists()


def test_the_tokens_page_offers_and_grants_the_manage_scope(client, org, admin):
    client.force_login(admin)

    page = client.get(reverse("tokens", args=[org.slug])).content.decode()
    assert 'value="manage"' in page
    assert "Manage: create, change and delete budgets" in page
    created = _create(client, org, name="budget bot", scopes=["read", "manage"])

    assert created.status_code == 302
    assert sorted(ProxyToken.objects.for_org(org).get().scopes) == ["manage", "read"]


def test_reloading_the_token_page_creates_nothing_and_shows_the_secret_no_more(client, org, admin):
    client.force_login(admin)
    created = _create(client, org)
    shown = _shown_token(client.get(created["Location"]))

    reloaded = client.get(created["Location"], follow=True)

    assert ProxyToken.objects.for_org(org).count() == 1
    page = reloaded.content.decode()
    assert reloaded.redirect_chain == [(reverse("tokens", args=[org.slug]), 302)]
    assert shown not in page
    assert "shown only once" in page
    assert 'id="new-token"' not in page


def test_the_waiting_token_is_sealed_in_the_session_and_gone_once_shown(client, org, admin):
    from django.contrib.sessions.models import Session

    client.force_login(admin)
    created = _create(client, org)

    stored = "".join(str(s.get_decoded()) for s in Session.objects.all())
    assert "costr_new_token" in stored
    shown = _shown_token(client.get(created["Location"]))
    assert ProxyToken.objects.for_org(org).get().prefix == shown[:14]
    # Before it was shown the session held it sealed, never in the clear; after, not at all.
    assert shown not in stored and shown[6:] not in stored
    after = "".join(str(s.get_decoded()) for s in Session.objects.all())
    assert "costr_new_token" not in after


def test_the_created_page_of_another_org_does_not_take_the_waiting_token(
    client, org, admin, other_org
):
    from apps.accounts.tests.factories import MembershipFactory

    MembershipFactory(organization=other_org, user=admin, role="admin")
    client.force_login(admin)
    created = _create(client, org)

    elsewhere = client.get(reverse("token_created", args=[other_org.slug]))
    assert elsewhere.status_code == 302
    assert elsewhere["Location"] == reverse("tokens", args=[other_org.slug])
    assert _shown_token(client.get(created["Location"])).startswith("costr_")


def test_a_token_left_unseen_for_too_long_is_not_shown(client, org, admin, monkeypatch):
    import time

    client.force_login(admin)
    created = _create(client, org)
    later = time.time() + 301
    monkeypatch.setattr(time, "time", lambda: later)

    response = client.get(created["Location"])

    assert response.status_code == 302
    assert response["Location"] == reverse("tokens", args=[org.slug])


def test_a_token_needs_a_scope(client, org, admin):
    client.force_login(admin)

    response = _create(client, org, scopes=[])

    assert response.status_code == 400
    assert not ProxyToken.objects.for_org(org).exists()


def test_an_expiring_token_gets_its_expiry(client, org, admin):
    client.force_login(admin)

    _create(client, org, expires_in_days="30")

    expires = ProxyToken.objects.for_org(org).get().expires_at
    assert timedelta(days=29, hours=23) < expires - timezone.now() <= timedelta(days=30)


def test_revoking_after_confirmation_stops_resolution(
    client, org, admin, django_capture_on_commit_callbacks
):
    created = services.proxy_token_create(organization=org, name="t", scopes=["proxy"], actor=None)
    token_hash = services.token_hash(created.plaintext)
    assert keycache.resolve(token_hash) is not None
    client.force_login(admin)
    url = reverse("token_revoke", args=[org.slug, created.token.pk])

    assert "Revoke" in client.get(url).content.decode()
    assert keycache.resolve(token_hash) is not None  # GET only asks
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(url)

    assert response.status_code == 302
    created.token.refresh_from_db()
    assert created.token.revoked_at is not None
    assert keycache.resolve(token_hash) is None
    assert AuditEvent.objects.for_org(org).filter(action="token.revoked").exists()


def test_a_member_cannot_create_or_revoke(client, org, member):
    created = services.proxy_token_create(organization=org, name="t", scopes=["proxy"], actor=None)
    client.force_login(member)

    assert client.get(reverse("tokens", args=[org.slug])).status_code == 200
    assert _create(client, org).status_code == 403
    assert (
        client.post(reverse("token_revoke", args=[org.slug, created.token.pk])).status_code == 403
    )
    assert ProxyToken.objects.for_org(org).get().revoked_at is None
    assert ProxyToken.objects.for_org(org).count() == 1

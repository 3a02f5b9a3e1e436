import json
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from apps.accounts.models import AuditEvent, Organization
from apps.keys import services as key_services
from apps.keys.models import ProviderKey, ProxyToken
from apps.keys.tests.factories import openai_key
from apps.usage.models import DailyRollup, UsageEvent
from apps.usage.tests.factories import store_usage

pytestmark = pytest.mark.django_db


def _days_ago(days: int) -> str:
    return (datetime.now(UTC) - timedelta(days=days)).isoformat()


def test_members_read_the_retention_but_cannot_change_it(client, org, member):
    client.force_login(member)

    page = client.get(reverse("retention", args=[org.slug]))
    refused = client.post(reverse("retention", args=[org.slug]), {"retention_days": 30})

    assert "for <strong>90 days</strong>" in page.content.decode()
    assert "Only admins" in page.content.decode()
    assert refused.status_code == 403
    assert Organization.objects.get(pk=org.pk).retention_days == 90


def test_a_longer_retention_applies_at_once(client, org, admin):
    client.force_login(admin)

    response = client.post(reverse("retention", args=[org.slug]), {"retention_days": 365})

    assert response.status_code == 302
    assert Organization.objects.get(pk=org.pk).retention_days == 365


def test_a_shorter_retention_shows_what_goes_and_waits_for_confirmation(client, org, admin):
    store_usage(org, timestamp=_days_ago(40))
    store_usage(org, timestamp=_days_ago(1))
    client.force_login(admin)

    asked = client.post(reverse("retention", args=[org.slug]), {"retention_days": 30})

    assert asked.status_code == 200
    assert "1 usage event</strong>" in asked.content.decode()
    assert Organization.objects.get(pk=org.pk).retention_days == 90
    assert UsageEvent.objects.for_org(org).count() == 2


def test_confirming_a_shorter_retention_purges_now_and_audits(
    client, org, admin, django_capture_on_commit_callbacks
):
    store_usage(org, timestamp=_days_ago(40))
    store_usage(org, timestamp=_days_ago(1))
    client.force_login(admin)

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("retention", args=[org.slug]), {"retention_days": 30, "confirm": "yes"}
        )

    assert response.status_code == 302
    assert Organization.objects.get(pk=org.pk).retention_days == 30
    assert UsageEvent.objects.for_org(org).count() == 1
    actions = set(AuditEvent.objects.for_org(org).values_list("action", flat=True))
    assert {"retention.changed", "retention.purged"} <= actions


def test_a_retention_not_offered_is_refused(client, org, admin):
    client.force_login(admin)

    client.post(reverse("retention", args=[org.slug]), {"retention_days": "45"})
    client.post(reverse("retention", args=[org.slug]), {"retention_days": "forever"})

    assert Organization.objects.get(pk=org.pk).retention_days == 90


def test_admins_export_all_usage_as_csv_and_json_and_it_is_audited(client, org, admin, member):
    store_usage(org, customer='Acme, "Inc"', properties={"feature": "chat"})
    store_usage(org, customer=None, model="nobody-knows-this-model")
    client.force_login(admin)

    csv_response = client.get(reverse("usage_export", args=[org.slug, "csv"]))
    json_response = client.get(reverse("usage_export", args=[org.slug, "json"]))
    client.force_login(member)
    refused = client.get(reverse("usage_export", args=[org.slug, "csv"]))

    lines = b"".join(csv_response.streaming_content).decode().splitlines()
    assert lines[0].startswith("timestamp,request_id,provider")
    assert len(lines) == 3 and '"Acme, ""Inc"""' in lines[1]
    events = json.loads(b"".join(json_response.streaming_content))
    assert [e["customer"] for e in events] == ['Acme, "Inc"', None]
    assert events[1]["cost_usd"] is None and events[1]["price_source"] == "unpriced"
    assert refused.status_code == 403
    assert AuditEvent.objects.for_org(org).filter(action="usage.exported").count() == 2


def test_only_owners_delete_and_a_wrong_slug_deletes_nothing(client, org, owner, admin):
    key_services.provider_key_create(
        organization=org, provider="openai", key=openai_key(), actor=None
    )
    client.force_login(admin)
    refused = client.post(reverse("org_delete", args=[org.slug]), {"confirm_slug": org.slug})
    client.force_login(owner)
    mistyped = client.post(reverse("org_delete", args=[org.slug]), {"confirm_slug": "nope"})

    assert refused.status_code == 403
    assert mistyped.status_code == 400
    assert Organization.objects.get(pk=org.pk).deletion_requested_at is None
    assert ProviderKey.objects.for_org(org).count() == 1


def test_deleting_destroys_secrets_at_once_and_every_row_by_the_task(
    client, org, other_org, owner, django_capture_on_commit_callbacks
):
    key_services.provider_key_create(
        organization=org, provider="openai", key=openai_key(), actor=None
    )
    key_services.proxy_token_create(organization=org, name="t", scopes=["proxy"], actor=None)
    store_usage(org)
    store_usage(other_org)
    client.force_login(owner)

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post(reverse("org_delete", args=[org.slug]), {"confirm_slug": org.slug})

    # At once, before the data task: no key left, no token that authenticates.
    assert not ProviderKey.objects.unscoped(reason="test").filter(organization_id=org.pk).exists()
    tokens = ProxyToken.objects.unscoped(reason="test").filter(organization_id=org.pk)
    assert all(t.revoked_at and t.token_hash.startswith("destroyed:") for t in tokens)
    for callback in callbacks:
        callback()

    assert response.status_code == 302
    assert not Organization.objects.filter(pk=org.pk).exists()
    assert not ProviderKey.objects.unscoped(reason="test").filter(organization_id=org.pk).exists()
    assert not ProxyToken.objects.unscoped(reason="test").filter(organization_id=org.pk).exists()
    assert not UsageEvent.objects.unscoped(reason="test").filter(organization_id=org.pk).exists()
    assert UsageEvent.objects.for_org(other_org).count() == 1
    assert DailyRollup.objects.for_org(other_org).count() == 1


def test_an_organization_being_deleted_is_gone_from_pages(client, org, owner):
    Organization.objects.filter(pk=org.pk).update(deletion_requested_at=datetime.now(UTC))
    client.force_login(owner)

    assert client.get(reverse("org_settings", args=[org.slug])).status_code == 404


def test_purge_expired_command_applies_every_retention(org, other_org, capsys):
    store_usage(org, timestamp=_days_ago(100))
    store_usage(other_org, timestamp=_days_ago(100))
    Organization.objects.filter(pk=other_org.pk).update(retention_days=365)

    call_command("purge_expired")

    assert UsageEvent.objects.for_org(org).count() == 0
    assert UsageEvent.objects.for_org(other_org).count() == 1
    assert f"{org.slug}: deleted 1 events" in capsys.readouterr().out


def test_deleteorg_command_needs_the_slug_twice(org, django_capture_on_commit_callbacks):
    store_usage(org)

    with pytest.raises(CommandError, match="must repeat the slug"):
        call_command("deleteorg", org.slug, "--confirm", "other")
    assert Organization.objects.filter(pk=org.pk).exists()

    with django_capture_on_commit_callbacks(execute=True):
        call_command("deleteorg", org.slug, "--confirm", org.slug)
    assert not Organization.objects.filter(pk=org.pk).exists()

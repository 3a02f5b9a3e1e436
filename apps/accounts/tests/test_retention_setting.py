import pytest
from django.core.management import CommandError, call_command

from apps.accounts.models import AuditEvent, Organization
from apps.accounts.tests.factories import OrganizationFactory

pytestmark = pytest.mark.django_db


def test_a_new_organization_keeps_the_configured_default(settings):
    settings.COSTR_DEFAULT_RETENTION_DAYS = 30

    assert OrganizationFactory().retention_days == 30


def test_setretention_changes_the_setting_and_audits_it(org, capsys):
    call_command("setretention", org.slug, "30")

    assert Organization.objects.get(pk=org.pk).retention_days == 30
    event = AuditEvent.objects.for_org(org).get(action="retention.changed")
    assert event.details == {"retention_days": {"from": 90, "to": 30}}
    assert event.actor_label == "system"
    assert "now keeps 30 days" in capsys.readouterr().out


def test_setretention_refuses_a_value_the_page_does_not_offer(org):
    with pytest.raises(CommandError, match="Retention must be one of 7, 14, 30"):
        call_command("setretention", org.slug, "45")

    assert Organization.objects.get(pk=org.pk).retention_days == 90
    assert not AuditEvent.objects.for_org(org).exists()


def test_setretention_to_the_same_value_changes_nothing(org, capsys):
    call_command("setretention", org.slug, "90")

    assert not AuditEvent.objects.for_org(org).exists()
    assert "nothing changed" in capsys.readouterr().out


def test_a_default_outside_the_choices_is_offered_too(settings):
    from apps.accounts.models import retention_choices

    settings.COSTR_DEFAULT_RETENTION_DAYS = 45

    assert (45, "45 days") in retention_choices()

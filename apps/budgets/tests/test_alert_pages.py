"""The Alerts page: members read, admins change; a webhook's secret is shown once (post, redirect,
get); a Slack URL is never shown back; deletion asks first; the delivery log is paginated;
another organization's webhook is 404."""

import pytest
from django.urls import reverse

from apps.accounts.models import AuditEvent
from apps.budgets import alert_services, alerts
from apps.budgets.models import AlertSettings, Delivery, SlackWebhook, Webhook

pytestmark = pytest.mark.django_db

PUBLIC_URL = "https://93.184.215.14/costr"
SLACK = "https://hooks.slack.com/services/T000/B000/abcdefghijklWXYZ"


def _url(org, name, *args):
    return reverse(name, args=[org.slug, *args])


def test_the_empty_page_explains_itself(client, org, member):
    client.force_login(member)
    response = client.get(_url(org, "alerts"))
    assert response.status_code == 200
    page = response.content.decode()
    assert "No Slack webhook" in page
    assert "No webhooks yet" in page
    assert "No alerts have fired yet" in page
    assert "Nothing delivered yet" in page
    assert "Only admins and owners can change the alert channels" in page
    assert 'name="url"' not in page and 'name="slack_url"' not in page
    assert f'href="{_url(org, "alerts")}" aria-current="page">Alerts</a>' in page


def test_a_new_webhooks_secret_is_shown_once(client, org, admin, settings):
    client.force_login(admin)
    response = client.post(
        _url(org, "alert_webhook_create"),
        {"url": PUBLIC_URL, "events": ["budget.exceeded", "spend.anomaly"]},
    )
    assert response.status_code == 302
    assert response["Location"] == _url(org, "alert_webhook_created")
    webhook = Webhook.objects.for_org(org).get()
    assert webhook.events == ["budget.exceeded", "spend.anomaly"]
    shown = client.get(response["Location"])
    assert shown.status_code == 200
    secret = shown.context["secret"]
    assert secret.startswith("whsec_") and secret in shown.content.decode()
    again = client.get(response["Location"])
    assert again.status_code == 302
    page = client.get(_url(org, "alerts")).content.decode()
    assert "shown only once" in page
    assert secret not in page and PUBLIC_URL in page
    assert AuditEvent.objects.for_org(org).filter(action="webhook.created").count() == 1


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"url": "https://127.0.0.1/x", "events": ["spend.anomaly"]}, "private, loopback"),
        ({"url": "http://93.184.215.14/x", "events": ["spend.anomaly"]}, "https://"),
        ({"url": PUBLIC_URL}, "Choose at least one event type"),
        ({"url": "", "events": ["spend.anomaly"]}, "This field is required"),
    ],
)
def test_a_refused_webhook_shows_why_and_writes_nothing(client, org, admin, data, words):
    client.force_login(admin)
    response = client.post(_url(org, "alert_webhook_create"), data)
    assert response.status_code == 400
    assert words in response.content.decode()
    assert not Webhook.objects.for_org(org).exists()


def test_slack_is_set_replaced_shown_by_its_last_four_and_removed_after_asking(client, org, admin):
    client.force_login(admin)
    response = client.post(_url(org, "alert_slack"), {"slack_url": SLACK})
    assert response.status_code == 302
    page = client.get(_url(org, "alerts")).content.decode()
    assert "…WXYZ" in page and "abcdefghijkl" not in page and "T000" not in page
    assert bytes(SlackWebhook.objects.for_org(org).get().ciphertext).find(b"hooks.slack") == -1

    client.post(_url(org, "alert_slack"), {"slack_url": SLACK.replace("WXYZ", "QRST")})
    assert SlackWebhook.objects.for_org(org).get().last4 == "QRST"

    confirm = client.get(_url(org, "alert_slack_remove"))
    assert confirm.status_code == 200 and "Remove the Slack webhook?" in confirm.content.decode()
    assert SlackWebhook.objects.for_org(org).exists()
    client.post(_url(org, "alert_slack_remove"))
    assert not SlackWebhook.objects.for_org(org).exists()
    actions = set(AuditEvent.objects.for_org(org).values_list("action", flat=True))
    assert {"slack_webhook.set", "slack_webhook.replaced", "slack_webhook.removed"} <= actions
    audit = repr(list(AuditEvent.objects.for_org(org).values_list("target", "details")))
    assert "abcdefghijkl" not in audit


def test_a_refused_slack_url_is_not_sent_back(client, org, admin):
    client.force_login(admin)
    typed = "https://example.org/services/T/B/secretish"
    response = client.post(_url(org, "alert_slack"), {"slack_url": typed})
    assert response.status_code == 400
    page = response.content.decode()
    assert "https://hooks.slack.com/services/" in page
    assert "secretish" not in page
    assert not SlackWebhook.objects.for_org(org).exists()


def test_deleting_a_webhook_asks_first(client, org, admin):
    hook = alert_services.webhook_create(
        organization=org, actor=admin, url=PUBLIC_URL, events=["spend.anomaly"]
    ).webhook
    client.force_login(admin)
    confirm = client.get(_url(org, "alert_webhook_delete", hook.pk))
    assert confirm.status_code == 200 and PUBLIC_URL in confirm.content.decode()
    assert Webhook.objects.for_org(org).exists()
    assert client.post(_url(org, "alert_webhook_delete", hook.pk)).status_code == 302
    assert not Webhook.objects.for_org(org).exists()


def test_another_organizations_webhook_is_404(client, org, admin, other_org):
    theirs = alert_services.webhook_create(
        organization=other_org, actor=None, url=PUBLIC_URL, events=["spend.anomaly"]
    ).webhook
    client.force_login(admin)
    assert client.get(_url(org, "alert_webhook_delete", theirs.pk)).status_code == 404
    assert client.post(_url(org, "alert_webhook_delete", theirs.pk)).status_code == 404
    assert Webhook.objects.for_org(other_org).exists()
    assert PUBLIC_URL not in client.get(_url(org, "alerts")).content.decode()


def test_members_cannot_change_anything(client, org, member):
    hook = alert_services.webhook_create(
        organization=org, actor=None, url=PUBLIC_URL, events=["spend.anomaly"]
    ).webhook
    client.force_login(member)
    posts = [
        (_url(org, "alert_email"), {}),
        (_url(org, "alert_slack"), {"slack_url": SLACK}),
        (_url(org, "alert_webhook_create"), {"url": PUBLIC_URL, "events": ["spend.anomaly"]}),
        (_url(org, "alert_webhook_delete", hook.pk), {}),
    ]
    for url, data in posts:
        assert client.post(url, data).status_code == 403, url
    assert Webhook.objects.for_org(org).count() == 1
    assert not SlackWebhook.objects.for_org(org).exists()
    assert not AlertSettings.objects.for_org(org).exists()


def test_email_alerts_turn_off_and_on(client, org, admin):
    client.force_login(admin)
    client.post(_url(org, "alert_email"), {})
    assert AlertSettings.objects.for_org(org).get().email_admins is False
    assert 'name="email_admins">' in client.get(_url(org, "alerts")).content.decode()
    client.post(_url(org, "alert_email"), {"email_admins": "on"})
    assert AlertSettings.objects.for_org(org).get().email_admins is True
    actions = list(AuditEvent.objects.for_org(org).order_by("pk").values_list("action", flat=True))
    assert actions == ["alerts.email_disabled", "alerts.email_enabled"]


def test_alerts_and_the_paginated_delivery_log(client, org, admin, member, settings):
    settings.COSTR_WEBHOOK_ALLOW_PRIVATE_HOSTS = True
    alert_services.webhook_create(
        organization=org, actor=None, url="http://127.0.0.1:9/x", events=["spend.anomaly"]
    )
    for n in range(30):
        alerts.alert_fire(
            organization=org,
            type="spend.anomaly",
            dedupe_key=f"anomaly:test:{n}",
            data={
                "customer": f"cust-{n}",
                "day": "2026-11-20",
                "spent_today_usd": "12.000000",
                "trailing_daily_mean_usd": "1.000000",
                "trailing_days": 7,
                "factor": "3",
                "floor_usd": "10.000000",
            },
        )
    # One webhook and two people to e-mail: two deliveries per alert.
    assert Delivery.objects.for_org(org).count() == 60
    client.force_login(member)
    first = client.get(_url(org, "alerts"))
    page = first.content.decode()
    assert "Page 1 of 3" in page and "60 deliveries" in page
    assert "cust-29" in page  # recent alerts, newest first
    assert page.count("<code>evt_") == 25
    third = client.get(_url(org, "alerts") + "?page=3").content.decode()
    assert "Page 3 of 3" in third and third.count("<code>evt_") == 10
    assert client.get(_url(org, "alerts") + "?page=zzz").status_code == 200


def test_the_page_says_when_no_scheduler_runs_the_scans(client, org, member, settings):
    client.force_login(member)
    settings.CELERY_TASK_ALWAYS_EAGER = True  # the embedded mode
    html = client.get(_url(org, "alerts")).content.decode()
    assert 'id="no-scheduler"' in html and "only Celery beat runs" in html
    settings.CELERY_TASK_ALWAYS_EAGER = False  # a broker, a worker and beat
    assert 'id="no-scheduler"' not in client.get(_url(org, "alerts")).content.decode()

"""Delivering alerts: signed webhooks retried with backoff until a 2xx and for at most 24 hours,
each attempt logged on the delivery row; the receiver (a real HTTP server on 127.0.0.1) checks the
signature itself; URLs that point inside the network are refused when saved and when sent;
redirects are not followed; secrets stay out of logs.

A retry's time is passed to ``delivery_attempt`` as ``now``, so the test need not wait for it.
"""

import logging
from datetime import timedelta

import pytest
from django.utils import timezone

from apps.budgets import alert_services, alerts, delivery, tasks
from apps.budgets.models import Alert, Channel, Delivery, SlackWebhook, Webhook
from apps.budgets.services import budget_create
from apps.usage.tests.factories import store_usage
from tests.fakes.webhook_receiver import WebhookReceiver, verify

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _quick(settings):
    settings.COSTR_WEBHOOK_ALLOW_PRIVATE_HOSTS = True
    settings.COSTR_WEBHOOK_TIMEOUT_SECONDS = 0.5


def _exceed(org):
    """A budget past its limit now: $0.15 spent of $0.10."""
    budget_create(
        organization=org,
        actor=None,
        scope="organization",
        period="day",
        limit_usd="0.1",
        alert_thresholds=[100],
    )
    store_usage(
        org,
        input_tokens=1_000_000,
        output_tokens=0,
        raw_usage={"prompt_tokens": 1_000_000, "completion_tokens": 0},
        timestamp=timezone.now().isoformat(),
    )


def _fire(org, capture):
    with capture(execute=True):
        assert alerts.thresholds_scan() == 1
    return Delivery.objects.for_org(org).get(channel=Channel.WEBHOOK)


def test_a_failing_receiver_is_retried_with_backoff_until_it_accepts(
    org, django_capture_on_commit_callbacks
):
    with WebhookReceiver(secret=None, script=["500", "timeout", "close"], hang_seconds=2) as fake:
        created = alert_services.webhook_create(
            organization=org, actor=None, url=fake.url, events=["budget.exceeded"]
        )
        fake.secret = created.secret
        _exceed(org)
        before = timezone.now()
        row = _fire(org, django_capture_on_commit_callbacks)
        assert (row.state, row.attempts, row.last_status) == ("pending", 1, 500)
        assert row.last_error == "answered 500"
        assert before + timedelta(seconds=30) <= row.next_attempt_at
        assert row.next_attempt_at <= timezone.now() + timedelta(seconds=30)
        # Not due yet: another copy of the task does nothing.
        assert delivery.delivery_attempt(org.pk, row.pk) is None
        assert len(fake.requests) == 1

        second = row.next_attempt_at
        row = delivery.delivery_attempt(org.pk, row.pk, now=second)
        assert (row.state, row.attempts, row.last_status) == ("pending", 2, None)
        assert row.last_error == "no answer within 0.5 s"
        assert row.next_attempt_at == second + timedelta(minutes=1)

        third = row.next_attempt_at
        row = delivery.delivery_attempt(org.pk, row.pk, now=third)
        assert (row.state, row.attempts, row.last_status) == ("pending", 3, None)
        assert row.last_error == "the connection closed without a complete HTTP answer"
        assert row.next_attempt_at == third + timedelta(minutes=2)

        row = delivery.delivery_attempt(org.pk, row.pk, now=row.next_attempt_at)
        assert (row.state, row.attempts, row.last_status, row.last_error) == (
            "delivered",
            4,
            200,
            "",
        )
        assert row.next_attempt_at is None and row.delivered_at is not None
        assert [r.outcome for r in fake.requests] == ["500", "timeout", "close", "accepted"]
        # The same body every time, each signed afresh.
        assert len({r.body for r in fake.requests}) == 1
    alert = Alert.objects.for_org(org).get()
    (event,) = fake.received
    assert set(event) == {"id", "type", "created", "organization", "data"}
    assert (event["id"], event["type"], event["organization"]) == (
        alert.public_id,
        "budget.exceeded",
        org.slug,
    )
    assert event["data"]["spent_usd"] == "0.150000"
    accepted = fake.requests[-1]
    assert accepted.headers["costr-event-id"] == alert.public_id
    assert accepted.headers["content-type"] == "application/json"


def test_a_receiver_with_the_wrong_secret_refuses_the_signature(
    org, django_capture_on_commit_callbacks
):
    with WebhookReceiver(secret="whsec_not-the-right-one") as fake:
        created = alert_services.webhook_create(
            organization=org, actor=None, url=fake.url, events=["budget.exceeded"]
        )
        _exceed(org)
        row = _fire(org, django_capture_on_commit_callbacks)
    assert [r.outcome for r in fake.requests] == ["bad signature"]
    assert (row.state, row.last_status) == ("pending", 400)
    # The request was signed, with the webhook's own secret.
    seen = fake.requests[0]
    assert verify(created.secret, seen.headers["costr-signature"], seen.body)
    assert not verify("whsec_not-the-right-one", seen.headers["costr-signature"], seen.body)
    tampered = seen.body.replace(b"0.150000", b"0.010000")
    assert not verify(created.secret, seen.headers["costr-signature"], tampered)


def test_delivery_gives_up_24_hours_after_the_alert(org, django_capture_on_commit_callbacks):
    with WebhookReceiver(secret=None, script=["500"] * 10) as fake:
        alert_services.webhook_create(
            organization=org, actor=None, url=fake.url, events=["budget.exceeded"]
        )
        _exceed(org)
        row = _fire(org, django_capture_on_commit_callbacks)
        created = row.alert.created_at
        # Half a minute before the end: the next attempt (a minute's backoff) is held to the
        # deadline itself.
        late = created + timedelta(hours=24, seconds=-30)
        row = delivery.delivery_attempt(org.pk, row.pk, now=late)
        assert row.state == "pending"
        assert row.next_attempt_at == created + timedelta(hours=24)
        row = delivery.delivery_attempt(org.pk, row.pk, now=row.next_attempt_at)
        assert (row.state, row.attempts, row.next_attempt_at) == ("failed", 3, None)
        assert delivery.delivery_attempt(org.pk, row.pk, now=late + timedelta(days=1)) is None
        assert len(fake.requests) == 3


def test_the_backoff_doubles_from_30_seconds_up_to_an_hour():
    waits = [delivery.backoff(n).total_seconds() for n in range(1, 11)]
    assert waits == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]


def test_the_sweep_sends_a_delivery_whose_message_was_lost(org):
    with WebhookReceiver(secret=None) as fake:
        alert_services.webhook_create(
            organization=org, actor=None, url=fake.url, events=["budget.exceeded"]
        )
        _exceed(org)
        # No on-commit callbacks run in this test's transaction: the queued message is lost.
        assert alerts.thresholds_scan() == 1
        row = Delivery.objects.for_org(org).get(channel=Channel.WEBHOOK)
        assert (row.state, row.attempts) == ("pending", 0)
        assert fake.requests == []
        # Within its grace the sweep leaves it to its own message; past it, sends it.
        assert tasks.deliveries_resend(timezone.now()) == 0
        assert tasks.deliveries_resend(timezone.now() + tasks.SWEEP_GRACE) == 1
        row.refresh_from_db()
        assert (row.state, row.attempts) == ("delivered", 1)
        assert len(fake.received) == 1
        # Delivered rows are never swept again.
        assert tasks.deliveries_resend(timezone.now() + timedelta(hours=1)) == 0


def test_a_deleted_webhook_takes_its_deliveries_and_removed_slack_ends_them(
    org, admin, django_capture_on_commit_callbacks
):
    with WebhookReceiver(secret=None, script=["500", "500"]) as fake:
        created = alert_services.webhook_create(
            organization=org, actor=admin, url=fake.url, events=["budget.exceeded"]
        )
        alert_services.slack_webhook_set(
            organization=org, actor=admin, url=fake.url.replace("/hooks/costr", "/services/x")
        )
        _exceed(org)
        with django_capture_on_commit_callbacks(execute=True):
            alerts.thresholds_scan()
        slack = Delivery.objects.for_org(org).get(channel=Channel.SLACK)
        assert slack.state == "pending"
        alert_services.webhook_delete(webhook=created.webhook, actor=admin)
        assert not Delivery.objects.for_org(org).filter(channel=Channel.WEBHOOK).exists()
        alert_services.slack_webhook_remove(organization=org, actor=admin)
        row = delivery.delivery_attempt(org.pk, slack.pk, now=slack.next_attempt_at)
        assert (row.state, row.last_error) == ("failed", "gone: the Slack webhook was removed")
        assert len(fake.requests) == 2


def test_redirects_are_not_followed(org, django_capture_on_commit_callbacks):
    with WebhookReceiver(secret=None, script=["redirect"]) as fake:
        alert_services.webhook_create(
            organization=org, actor=None, url=fake.url, events=["budget.exceeded"]
        )
        _exceed(org)
        row = _fire(org, django_capture_on_commit_callbacks)
    assert [r.path for r in fake.requests] == ["/hooks/costr"]
    assert (row.state, row.last_status) == ("pending", 307)
    assert row.last_error == "answered 307 (redirects are not followed)"


# --- Where Costr will not send ----------------------------------------------------------------

REFUSED = [
    ("http://93.184.215.14/hook", "must start with https://"),
    ("https://127.0.0.1/hook", "private, loopback or link-local"),
    ("https://localhost:8443/hook", "private, loopback or link-local"),
    ("https://10.1.2.3/hook", "private, loopback or link-local"),
    ("https://192.168.0.10/hook", "private, loopback or link-local"),
    ("https://169.254.169.254/latest/meta-data/", "private, loopback or link-local"),
    ("https://[::1]/hook", "private, loopback or link-local"),
    ("https://[::ffff:127.0.0.1]/hook", "private, loopback or link-local"),
    ("https://[fe80::1]/hook", "private, loopback or link-local"),
    ("https://100.64.0.1/hook", "private, loopback or link-local"),
    ("https://0.0.0.0/hook", "private, loopback or link-local"),
    ("https://user:pw@93.184.215.14/hook", "no user name or password"),
    ("ftp://93.184.215.14/hook", "must start with https://"),
    ("https:///hook", "no host name"),
    ("https://93.184.215.14/a b", "spaces or control characters"),
    ("", "Enter the URL"),
]


@pytest.mark.parametrize(("url", "message"), REFUSED)
def test_webhook_urls_into_the_network_are_refused(org, settings, url, message):
    settings.COSTR_WEBHOOK_ALLOW_PRIVATE_HOSTS = False
    with pytest.raises(alert_services.ChannelError) as refused:
        alert_services.webhook_create(
            organization=org, actor=None, url=url, events=["spend.anomaly"]
        )
    assert message in refused.value.errors["url"]
    assert not Webhook.objects.for_org(org).exists()


def test_a_public_https_url_is_accepted(org, settings):
    settings.COSTR_WEBHOOK_ALLOW_PRIVATE_HOSTS = False
    created = alert_services.webhook_create(
        organization=org, actor=None, url="https://93.184.215.14/hook", events=["spend.anomaly"]
    )
    assert created.webhook.url == "https://93.184.215.14/hook"
    assert created.secret.startswith("whsec_") and len(created.secret) > 40
    assert created.secret not in repr(created)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://example.org/services/T/B/X", "starts with https://hooks.slack.com/services/"),
        ("http://hooks.slack.com/services/T/B/X", "must start with https://"),
        ("https://hooks.slack.com/other/T/B/X", "starts with https://hooks.slack.com/services/"),
        ("https://127.0.0.1/services/T/B/X", "starts with https://hooks.slack.com/services/"),
    ],
)
def test_slack_urls_must_be_slacks_incoming_webhooks(org, settings, url, message):
    settings.COSTR_WEBHOOK_ALLOW_PRIVATE_HOSTS = False
    with pytest.raises(alert_services.ChannelError) as refused:
        alert_services.slack_webhook_set(organization=org, actor=None, url=url)
    assert message in refused.value.errors["slack_url"]
    assert not SlackWebhook.objects.for_org(org).exists()


def test_a_url_is_checked_again_when_sent(org, settings, django_capture_on_commit_callbacks):
    with WebhookReceiver(secret=None) as fake:
        alert_services.webhook_create(
            organization=org, actor=None, url=fake.url, events=["budget.exceeded"]
        )
        settings.COSTR_WEBHOOK_ALLOW_PRIVATE_HOSTS = False
        _exceed(org)
        row = _fire(org, django_capture_on_commit_callbacks)
    assert fake.requests == []
    assert row.state == "pending" and row.last_status is None
    assert row.last_error.startswith("refused: The URL must start with https://")


def test_secrets_stay_out_of_logs_and_the_delivery_log(
    org, admin, caplog, django_capture_on_commit_callbacks
):
    caplog.set_level(logging.DEBUG)
    with WebhookReceiver(secret=None, script=["500", "500"]) as fake:
        created = alert_services.webhook_create(
            organization=org, actor=admin, url=fake.url, events=["budget.exceeded"]
        )
        slack_url = fake.url.replace("/hooks/costr", "/services/T0/B0/s3cr3tSlackPath")
        alert_services.slack_webhook_set(organization=org, actor=admin, url=slack_url)
        _exceed(org)
        with django_capture_on_commit_callbacks(execute=True):
            alerts.thresholds_scan()
    rows = list(
        Delivery.objects.for_org(org)
        .exclude(channel=Channel.EMAIL)
        .values_list("last_error", flat=True)
    )
    assert rows and all(error == "answered 500" for error in rows)
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "delivery" in logged
    assert created.secret not in logged
    assert "s3cr3tSlackPath" not in logged
    from apps.accounts.models import AuditEvent

    audit = repr(list(AuditEvent.objects.for_org(org).values_list("target", "details")))
    assert "s3cr3tSlackPath" not in audit and created.secret not in audit

"""Alerts found (DESIGN.md "Budgets, limits and alerts"): each threshold once per budget and
period (per customer for each_customer), again in a new period, never twice however many scans
run at once; spend anomalies once per customer and day, and not under the floor or the factor;
e-mail to admins and owners only; Slack gets the text; the counters' reconciling task raises a
counter to the database's figure in a real Redis.

Spend is stored through the real usage writer and priced by it: gpt-4o-mini costs $0.15 per
million input tokens, so one event of 1,000,000 input tokens and no output costs $0.15.
"""

import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core import mail
from django.db import connection
from django.utils import timezone

from apps.budgets import alert_services, alerts, tasks
from apps.budgets.models import Alert, Channel, Delivery, DeliveryState
from apps.budgets.services import budget_create
from apps.budgets.store import counter_key, usd
from apps.usage.models import UsageEvent
from apps.usage.tests.factories import store_usage
from tests.fakes.webhook_receiver import WebhookReceiver

EVENT_COST = Decimal("0.15")
NOW = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)


def spend(org, customer="acme", n=1, at=NOW):
    for _ in range(n):
        store_usage(
            org,
            customer=customer,
            input_tokens=1_000_000,
            output_tokens=0,
            raw_usage={"prompt_tokens": 1_000_000, "completion_tokens": 0},
            timestamp=at.isoformat(),
        )


@pytest.fixture
def receiver(settings, org):
    settings.COSTR_WEBHOOK_ALLOW_PRIVATE_HOSTS = True
    with WebhookReceiver(secret=None) as fake:
        yield fake


def _hook(org, url, events=("budget.threshold_crossed", "budget.exceeded", "spend.anomaly")):
    created = alert_services.webhook_create(
        organization=org, actor=None, url=url, events=list(events)
    )
    return created


def _day_budget_at_100(org):
    """The organization's daily $0.10 budget with one threshold, 100 %: one event exceeds it."""
    return budget_create(
        organization=org,
        actor=None,
        scope="organization",
        period="day",
        limit_usd="0.1",
        alert_thresholds=[100],
    )


def _scan(django_capture_on_commit_callbacks, now=NOW):
    with django_capture_on_commit_callbacks(execute=True):
        return alerts.thresholds_scan(now)


@pytest.mark.django_db
def test_an_event_costs_what_the_tests_assume(org):
    spend(org)
    assert UsageEvent.objects.for_org(org).get().cost_usd == EVENT_COST


@pytest.mark.django_db
def test_each_threshold_fires_once_per_period_and_the_next_period_fires_again(
    org, admin, settings, django_capture_on_commit_callbacks
):
    settings.COSTR_WEBHOOK_ALLOW_PRIVATE_HOSTS = True
    budget = budget_create(
        organization=org,
        actor=None,
        scope="organization",
        period="day",
        limit_usd="1",
        alert_thresholds=[50, 80, 100],
    )
    spend(org, n=3)  # $0.45: under 50 %
    assert _scan(django_capture_on_commit_callbacks) == 0
    spend(org, n=3)  # $0.90: 50 % and 80 % crossed
    with WebhookReceiver(secret=None) as fake:
        _hook(org, fake.url)
        assert _scan(django_capture_on_commit_callbacks) == 2
        assert _scan(django_capture_on_commit_callbacks) == 0
        assert sorted(a["data"]["threshold_percent"] for a in fake.received) == [50, 80]
        assert {a["type"] for a in fake.received} == {"budget.threshold_crossed"}
        spend(org, n=1)  # $1.05: the limit
        assert _scan(django_capture_on_commit_callbacks) == 1
        exceeded = fake.received[-1]
        assert exceeded["type"] == "budget.exceeded"
        assert exceeded["data"]["budget"]["id"] == budget.public_id
        assert exceeded["data"]["spent_usd"] == "1.050000"
        assert exceeded["data"]["limit_usd"] == "1.000000"
        assert exceeded["data"]["period_start"] == "2026-11-20T00:00:00+00:00"
        # The next day is a new period: spend there fires its thresholds afresh.
        tomorrow = NOW + timedelta(days=1)
        spend(org, n=4, at=tomorrow)  # $0.60
        assert _scan(django_capture_on_commit_callbacks, tomorrow) == 1
        assert fake.received[-1]["data"]["period_start"] == "2026-11-21T00:00:00+00:00"
        assert len(fake.received) == 4
    assert Alert.objects.for_org(org).count() == 4


@pytest.mark.django_db
def test_each_customer_fires_per_customer_and_yields_to_a_customers_own_budget(
    org, django_capture_on_commit_callbacks
):
    budget_create(
        organization=org,
        actor=None,
        scope="each_customer",
        period="month",
        limit_usd="0.5",
        alert_thresholds=[80],
    )
    own = budget_create(
        organization=org,
        actor=None,
        scope="customer",
        customer="big",
        period="month",
        limit_usd="10",
        alert_thresholds=[80],
    )
    spend(org, customer="alice", n=3)  # $0.45 of $0.50: 90 %
    spend(org, customer="bob", n=3)
    spend(org, customer="carol", n=1)  # 30 %
    spend(org, customer="big", n=3)  # its own $10 budget: 4.5 %
    assert _scan(django_capture_on_commit_callbacks) == 2
    fired = Alert.objects.for_org(org)
    assert sorted(a.data["customer"] for a in fired) == ["alice", "bob"]
    assert not fired.filter(budget=own).exists()
    assert _scan(django_capture_on_commit_callbacks) == 0


@pytest.mark.django_db
def test_a_threshold_in_an_organizations_own_zone_counts_from_its_midnight(
    org, django_capture_on_commit_callbacks
):
    org.time_zone = "America/New_York"
    org.save()
    budget_create(
        organization=org,
        actor=None,
        scope="customer",
        customer="acme",
        period="day",
        limit_usd="0.3",
        alert_thresholds=[100],
    )
    # 15:00 UTC on the 20th is 10:00 in New York: 03:00 UTC belongs to the 19th there.
    spend(org, n=1, at=datetime(2026, 11, 20, 3, 0, tzinfo=UTC))
    spend(org, n=1, at=datetime(2026, 11, 20, 6, 0, tzinfo=UTC))
    assert _scan(django_capture_on_commit_callbacks) == 0
    spend(org, n=1, at=datetime(2026, 11, 20, 14, 0, tzinfo=UTC))
    assert _scan(django_capture_on_commit_callbacks) == 1
    alert = Alert.objects.for_org(org).get()
    assert alert.data["spent_usd"] == "0.300000"
    assert alert.data["period_start"] == "2026-11-20T00:00:00-05:00"


@pytest.mark.django_db(transaction=True)
def test_scans_running_at_once_fire_a_threshold_once(org, settings):
    settings.COSTR_WEBHOOK_ALLOW_PRIVATE_HOSTS = True
    budget_create(
        organization=org,
        actor=None,
        scope="organization",
        period="day",
        limit_usd="0.3",
        alert_thresholds=[50, 100],
    )
    spend(org, n=2)
    with WebhookReceiver(secret=None) as fake:
        _hook(org, fake.url)
        barrier = threading.Barrier(4)
        results, errors = [], []

        def scan():
            try:
                barrier.wait()
                results.append(alerts.thresholds_scan(NOW))
            except Exception as error:  # reported below
                errors.append(error)
            finally:
                connection.close()

        threads = [threading.Thread(target=scan) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not errors
        assert sum(results) == 2
        assert Alert.objects.for_org(org).count() == 2
        assert Delivery.objects.for_org(org).filter(channel=Channel.WEBHOOK).count() == 2
        assert sorted(a["data"]["threshold_percent"] for a in fake.received) == [50, 100]


# --- Anomalies ------------------------------------------------------------------------------


def _history(org, customer, per_day_events, days=7):
    for back in range(1, days + 1):
        spend(org, customer=customer, n=per_day_events, at=NOW - timedelta(days=back))


def _anomalies(django_capture_on_commit_callbacks, now=NOW):
    with django_capture_on_commit_callbacks(execute=True):
        return alerts.anomalies_scan(now)


@pytest.mark.django_db
def test_an_anomaly_fires_once_per_customer_per_day_over_floor_and_factor(
    org, settings, django_capture_on_commit_callbacks
):
    settings.COSTR_ANOMALY_FACTOR = 3
    settings.COSTR_ANOMALY_FLOOR_USD = 1
    # spiky: $0.15 a day for a week (mean $0.15), then $1.50 today: over $1 and over 3x.
    _history(org, "spiky", 1)
    spend(org, customer="spiky", n=10)
    # steady: $0.75 a day, then $1.50 today: over the floor, but only 2x its mean.
    _history(org, "steady", 5)
    spend(org, customer="steady", n=10)
    # small: no history and $0.90 today: over 3x its mean of 0, but under the floor.
    spend(org, customer="small", n=6)
    assert _anomalies(django_capture_on_commit_callbacks) == 1
    alert = Alert.objects.for_org(org).get()
    assert alert.type == "spend.anomaly"
    assert alert.data["customer"] == "spiky"
    assert alert.data["spent_today_usd"] == "1.500000"
    assert alert.data["trailing_daily_mean_usd"] == "0.150000"
    assert alert.data["day"] == "2026-11-20"
    # Later the same day: nothing new, even with more spend.
    spend(org, customer="spiky", n=5)
    assert _anomalies(django_capture_on_commit_callbacks, NOW + timedelta(hours=2)) == 0
    # The next day it can fire again.
    tomorrow = NOW + timedelta(days=1)
    spend(org, customer="spiky", n=20, at=tomorrow)
    assert _anomalies(django_capture_on_commit_callbacks, tomorrow) == 1
    assert Alert.objects.for_org(org).filter(type="spend.anomaly").count() == 2


@pytest.mark.django_db
def test_the_factor_and_the_floor_are_the_settings(
    org, settings, django_capture_on_commit_callbacks
):
    _history(org, "spiky", 1)
    spend(org, customer="spiky", n=10)  # $1.50 today against a mean of $0.15: 10x
    settings.COSTR_ANOMALY_FLOOR_USD = 10  # the default floor: $1.50 is under it
    assert _anomalies(django_capture_on_commit_callbacks) == 0
    settings.COSTR_ANOMALY_FLOOR_USD = 1
    settings.COSTR_ANOMALY_FACTOR = 12  # 10x is under it
    assert _anomalies(django_capture_on_commit_callbacks) == 0
    settings.COSTR_ANOMALY_FACTOR = 9
    assert _anomalies(django_capture_on_commit_callbacks) == 1


# --- Channels ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_email_reaches_admins_and_owners_only_and_can_be_turned_off(
    org, owner, admin, member, outsider, django_capture_on_commit_callbacks
):
    _day_budget_at_100(org)
    spend(org)
    assert _scan(django_capture_on_commit_callbacks) == 1
    assert sorted(m.to[0] for m in mail.outbox) == sorted([owner.email, admin.email])
    assert all(len(m.to) == 1 for m in mail.outbox)
    assert "Budget exceeded" in mail.outbox[0].subject
    assert "$0.150000 of $0.100000" in mail.outbox[0].body
    assert f"/app/{org.slug}/alerts/" in mail.outbox[0].body
    email = Delivery.objects.for_org(org).get(channel=Channel.EMAIL)
    assert email.state == DeliveryState.DELIVERED

    mail.outbox.clear()
    alert_services.alert_email_set(organization=org, actor=admin, enabled=False)
    tomorrow = NOW + timedelta(days=1)
    spend(org, at=tomorrow)
    assert _scan(django_capture_on_commit_callbacks, tomorrow) == 1
    assert mail.outbox == []
    assert not Delivery.objects.for_org(org).filter(channel=Channel.EMAIL).exclude(pk=email.pk)


@pytest.mark.django_db
def test_slack_receives_the_alert_text(org, admin, receiver, django_capture_on_commit_callbacks):
    alert_services.slack_webhook_set(
        organization=org, actor=admin, url=receiver.url.replace("/hooks/costr", "/services/T/B/x")
    )
    budget_create(
        organization=org,
        actor=None,
        scope="customer",
        customer="<!channel> acme",
        period="day",
        limit_usd="0.2",
        alert_thresholds=[50],
    )
    spend(org, customer="<!channel> acme")
    assert _scan(django_capture_on_commit_callbacks) == 1
    assert len(receiver.requests) == 1
    assert receiver.requests[0].path == "/services/T/B/x"
    text = receiver.received[0]["text"]
    assert set(receiver.received[0]) == {"text"}
    assert "crossed 50% of its limit" in text
    assert "$0.150000 of $0.200000" in text
    # A customer's name cannot ping the channel: Slack's markup characters are escaped.
    assert "&lt;!channel&gt; acme" in text and "<!channel>" not in text
    assert Delivery.objects.for_org(org).get(channel=Channel.SLACK).state == "delivered"


@pytest.mark.django_db
def test_webhooks_get_only_the_types_they_subscribed_to(
    org, receiver, settings, django_capture_on_commit_callbacks
):
    settings.COSTR_ANOMALY_FLOOR_USD = 1
    _hook(org, receiver.url, events=["spend.anomaly"])
    _day_budget_at_100(org)
    spend(org, n=10)
    assert _scan(django_capture_on_commit_callbacks) == 1
    assert receiver.requests == []
    assert _anomalies(django_capture_on_commit_callbacks) == 1
    assert [r["type"] for r in receiver.received] == ["spend.anomaly"]


@pytest.mark.django_db
def test_another_organizations_channels_get_nothing(
    org, other_org, outsider, receiver, django_capture_on_commit_callbacks
):
    _hook(other_org, receiver.url)
    _day_budget_at_100(org)
    spend(org)
    assert _scan(django_capture_on_commit_callbacks) == 1
    assert receiver.requests == []
    assert mail.outbox == []  # org has no admin; other_org's owner is not told
    assert not Alert.objects.for_org(other_org).exists()


# --- Counters' reconciling --------------------------------------------------------------------


@pytest.mark.django_db
def test_reconciling_raises_a_counter_to_ingested_spend_in_redis(org, settings, redis_server):
    import redis

    settings.REDIS_URL = redis_server.url
    client = redis.Redis.from_url(redis_server.url)
    budget = budget_create(
        organization=org,
        actor=None,
        scope="customer",
        customer="acme",
        period="month",
        limit_usd="100",
    )
    each = budget_create(
        organization=org, actor=None, scope="each_customer", period="month", limit_usd="100"
    )
    now = datetime.now(UTC)
    start = now.replace(day=1).date().isoformat()
    key = counter_key(org.pk, budget.public_id, "month", start, "")
    # The proxy's counter says $0.15 (one request it saw).
    client.hset(key, mapping={"spent": 150_000_000, "reserved": 0})
    client.expire(key, 3600)
    # Then three more requests' usage arrives through the ingest path, unseen by the proxy.
    spend(org, customer="acme", n=4, at=now)
    spend(org, customer="zoe", n=2, at=now)
    assert tasks.counters_reconcile_now(now) == 2  # acme's budget, and zoe under each_customer
    spent = int(client.hget(key, "spent"))
    assert usd(spent) == Decimal("0.6")
    zoe = counter_key(org.pk, each.public_id, "month", start, "zoe")
    assert usd(int(client.hget(zoe, "spent"))) == Decimal("0.3")
    assert 0 < client.ttl(zoe) <= 33 * 86_400
    # acme has a budget of its own: the each_customer budget keeps no counter for it.
    assert not client.exists(counter_key(org.pk, each.public_id, "month", start, "acme"))
    # A counter above the database's figure (requests whose events are still on the way) is
    # never lowered.
    client.hset(key, "spent", 900_000_000)
    tasks.counters_reconcile_now(now)
    assert int(client.hget(key, "spent")) == 900_000_000


@pytest.mark.django_db
def test_reconciling_stops_quietly_when_the_store_is_away(org, settings, redis_server, caplog):
    settings.REDIS_URL = redis_server.url
    budget_create(organization=org, actor=None, scope="organization", period="day", limit_usd="5")
    redis_server.stop()
    assert tasks.counters_reconcile_now() == 0
    warnings = [r for r in caplog.records if r.name == "costr.budgets.tasks"]
    assert len(warnings) == 1
    assert "budget store is unavailable" in warnings[0].getMessage()


@pytest.mark.django_db
def test_alerts_and_their_deliveries_go_with_the_organizations_retention(
    org, admin, django_capture_on_commit_callbacks
):
    from apps.accounts.tests.factories import OrganizationFactory

    org.retention_days = 30
    org.save()
    budget_create(organization=org, actor=None, scope="organization", period="day", limit_usd="0.1")
    spend(org)
    assert _scan(django_capture_on_commit_callbacks) == 2  # 80 % and 100 %
    other = OrganizationFactory(retention_days=90)
    budget_create(
        organization=other, actor=None, scope="organization", period="day", limit_usd="0.1"
    )
    spend(other)
    _scan(django_capture_on_commit_callbacks)
    assert Delivery.objects.for_org(org).exists()

    # The alerts are stamped when they fire (now): 30 days later they are still kept; 31 days
    # later they are gone, and the other organization keeps 90 days.
    fired = timezone.now()
    assert tasks.alerts_purge_expired_now(fired + timedelta(days=30)) == 0
    assert tasks.alerts_purge_expired_now(fired + timedelta(days=31)) == 2
    assert not Alert.objects.for_org(org).exists()
    assert not Delivery.objects.for_org(org).exists()
    assert Alert.objects.for_org(other).count() == 2

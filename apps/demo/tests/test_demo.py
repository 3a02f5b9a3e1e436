"""The demo data: records the proxy could have produced, repeatable, shaped like real traffic; and
``manage.py costr_demo``, which builds the demo organization from them."""

import io
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command
from django.db.models import Sum
from django.test import Client
from django.urls import reverse

from apps.accounts.models import Organization
from apps.billing.models import StripeBalanceTransaction, StripeCustomer
from apps.billing.selectors import revenue_by_customer
from apps.demo.profiles import DEFAULT_SEED
from apps.demo.traffic import demo_records, demo_traffic_write
from apps.keys.models import ProviderKey, ProxyToken
from apps.proxy.providers.google import usage_from_gemini_usage
from apps.usage.metering.contract import TOKEN_FIELDS
from apps.usage.metering.provider_usage import usage_from_anthropic_usage, usage_from_openai_usage
from apps.usage.models import Customer, DailyRollup, RefusalCount, UsageEvent

END = datetime(2026, 3, 18, 15, 30, tzinfo=UTC)  # a Wednesday afternoon
PARSERS = {
    "openai": usage_from_openai_usage,
    "anthropic": usage_from_anthropic_usage,
    "google": usage_from_gemini_usage,
}


def records(**overrides):
    arguments = {
        "organization_id": 7,
        "days": 30,
        "customers": 40,
        "events": 12_000,
        "end": END,
        **overrides,
    }
    return list(demo_records(**arguments))


@pytest.fixture(scope="module")
def month():
    return records()


def test_the_same_seed_gives_the_same_records_and_another_seed_others(month):
    assert records() == month
    other = records(seed=DEFAULT_SEED + 1)
    assert [r["customer"] for r in other[:50]] != [r["customer"] for r in month[:50]]


def test_exactly_the_events_asked_for_inside_the_window_with_unique_ids(month):
    first_midnight = datetime(2026, 2, 17, tzinfo=UTC)  # 30 days ending March 18

    assert len(month) == 12_000
    assert len({r["request_id"] for r in month}) == 12_000
    assert all(first_midnight <= r["timestamp"] < END for r in month)
    assert len({r["customer"] for r in month}) <= 40
    # Request ids name the organization: two organizations' demos never collide.
    assert all(r["request_id"].startswith("demo-7-") for r in month)


def test_token_counts_are_what_the_proxy_would_record_from_the_raw_usage(month):
    """Each record's raw usage object, read by the proxy's own parser for that provider, gives
    exactly the record's normalised token fields."""
    seen = Counter()
    for record in month:
        if record["raw_usage"] is None:
            assert all(record[name] is None for name in TOKEN_FIELDS)
            continue
        usage = PARSERS[record["provider"]](record["raw_usage"], model=record["model"])
        assert {name: getattr(usage, name) for name in TOKEN_FIELDS} == {
            name: record[name] for name in TOKEN_FIELDS
        }, record
        seen[record["provider"]] += 1
        if record["cached_input_tokens"]:
            seen["cache reads"] += 1
        if record["cache_write_1h_tokens"]:
            seen["1h cache writes"] += 1
        if record["cache_write_tokens"] and not record["cache_write_1h_tokens"]:
            seen["5m cache writes"] += 1
        if record["reasoning_tokens"]:
            seen["reasoning"] += 1
    for kind in (
        "openai",
        "anthropic",
        "google",
        "cache reads",
        "1h cache writes",
        "5m cache writes",
        "reasoning",
    ):
        assert seen[kind] > 50, (kind, seen)


def test_traffic_has_a_dozen_models_errors_streams_and_properties(month):
    models = Counter(r["model"] for r in month if r["model"])
    statuses = Counter(r["status"] for r in month)
    errors = sum(1 for r in month if r["status"] >= 400 or r["outcome"] == "upstream_error")

    assert len(models) >= 12
    assert {"o3-mini-2025-01-31", "claude-sonnet-4-20250514", "gemini-2.5-pro"} <= set(models)
    assert any(r["endpoint"] == "embeddings" for r in month)
    assert 0.01 < errors / len(month) < 0.03
    assert statuses[429] and statuses[500] and statuses[502]
    assert 0.2 < sum(r["stream"] for r in month) / len(month) < 0.8
    assert {r["properties"]["feature"] for r in month} >= {"search", "code-review", "summarize"}
    assert {r["properties"]["environment"] for r in month} == {"production", "staging"}
    for r in month:
        if r["status"] == 200 and r["stream"]:
            assert 0 < r["ttfb_ms"] <= r["latency_ms"]


def test_a_few_customers_make_most_of_the_traffic(month):
    per_customer = Counter(r["customer"] for r in month).most_common()
    top_five = sum(n for _, n in per_customer[:5])

    assert top_five > len(month) / 2
    assert per_customer[-1][1] < per_customer[0][1] / 20


def test_weekends_are_quiet_and_one_day_spikes(month):
    per_day = Counter(r["timestamp"].date() for r in month)
    whole_days = {day: n for day, n in per_day.items() if day != END.date()}
    weekdays = [n for day, n in whole_days.items() if day.weekday() < 5]
    weekends = [n for day, n in whole_days.items() if day.weekday() >= 5]
    busiest, busiest_count = max(whole_days.items(), key=lambda item: item[1])
    ordinary = sorted(whole_days.values())[len(whole_days) // 2]

    assert sum(weekends) / len(weekends) < 0.7 * sum(weekdays) / len(weekdays)
    assert busiest == END.date() - timedelta(days=7)
    assert busiest_count > 2.5 * ordinary
    spike_customers = Counter(r["customer"] for r in month if r["timestamp"].date() == busiest)
    assert spike_customers.most_common(1)[0][1] > busiest_count / 2  # one customer's job


@pytest.mark.django_db
def test_written_through_the_writer_every_metered_event_is_priced_and_rolled_up(org):
    stored = demo_traffic_write(
        organization=org, days=10, customers=15, events=3_000, end=END, batch_size=1_000
    )

    events = UsageEvent.objects.for_org(org)
    assert stored == 3_000 == events.count()
    with_tokens = events.exclude(input_tokens=None)
    assert with_tokens.exists()
    assert not with_tokens.filter(price_source="unpriced").exists()
    assert DailyRollup.objects.for_org(org).aggregate(n=Sum("requests"))["n"] == 3_000
    # Written again: the same request ids, nothing new.
    assert demo_traffic_write(organization=org, days=10, customers=15, events=3_000, end=END) == 0


def _run_demo(*args) -> str:
    out = io.StringIO()
    call_command("costr_demo", "--events=3000", "--customers=12", "--days=10", *args, stdout=out)
    return out.getvalue()


def _login(output: str) -> tuple[str, str]:
    email = re.search(r"e-mail:\s+(\S+)", output)[1]
    password = re.search(r"password:\s+(\S+)", output)[1]
    return email, password


@pytest.mark.django_db
def test_costr_demo_builds_an_organization_to_log_in_to_with_revenue_and_margins():
    output = _run_demo()

    organization = Organization.objects.get(slug="demo")
    email, password = _login(output)
    client = Client()
    assert client.login(email=email, password=password)
    assert "/login/" in output
    assert UsageEvent.objects.for_org(organization).count() == 3_000
    assert Customer.objects.for_org(organization).exclude(name="").exists()
    assert RefusalCount.objects.for_org(organization).aggregate(n=Sum("count"))["n"] > 0
    # Keys and tokens beside the traffic, which came through the production token.
    keys = ProviderKey.objects.for_org(organization)
    assert sorted(keys.values_list("provider", flat=True)) == ["anthropic", "google", "openai"]
    tokens = {t.name: t for t in ProxyToken.objects.for_org(organization)}
    assert tokens.keys() == {"Production", "Dashboard script", "Old cron job"}
    assert tokens["Old cron job"].revoked_at is not None
    assert tokens["Dashboard script"].scopes == ["read"]
    assert set(UsageEvent.objects.for_org(organization).values_list("token_id", flat=True)) == {
        tokens["Production"].pk
    }

    end = datetime.now(UTC)
    revenue = revenue_by_customer(
        organization=organization, start=end - timedelta(days=90), end=end
    )
    currencies = Counter(r.currency for rows in revenue.values() for r in rows)
    assert currencies["usd"] >= 5 and currencies["eur"] == 1
    # Each paying customer's monthly charge against its AI cost per 30 days.
    monthly_cost = {
        row["customer"]: row["cost"] * 3  # the demo above spans 10 days
        for row in DailyRollup.objects.for_org(organization)
        .values("customer")
        .annotate(cost=Sum("cost_usd"))
    }
    owner = dict(
        StripeCustomer.objects.for_org(organization).values_list(
            "stripe_id", "customer__external_id"
        )
    )
    charges = StripeBalanceTransaction.objects.for_org(organization).filter(
        type="charge", currency="usd"
    )
    plan = {
        owner[t.stripe_customer_id]: Decimal(t.amount) / 100 for t in charges.order_by("created")
    }
    assert sum(plan[c] < monthly_cost[c] for c in plan) >= 1  # unprofitable
    assert sum(plan[c] > 2 * monthly_cost[c] for c in plan) >= 4


@pytest.mark.django_db
def test_costr_demo_refuses_an_existing_demo_and_resets_it_on_request():
    first_password = _login(_run_demo())[1]
    organization = Organization.objects.get(slug="demo")

    with pytest.raises(CommandError, match="--reset"):
        _run_demo()
    assert UsageEvent.objects.for_org(organization).count() == 3_000

    email, password = _login(_run_demo("--reset"))

    assert not Organization.objects.filter(pk=organization.pk).exists()
    renewed = Organization.objects.get(slug="demo")
    assert UsageEvent.objects.for_org(renewed).count() == 3_000
    assert (
        not UsageEvent.objects.unscoped(reason="the deleted demo")
        .filter(organization_id=organization.pk)
        .exists()
    )
    assert Client().login(email=email, password=password)
    assert not Client().login(email=email, password=first_password)


@pytest.mark.django_db
def test_costr_demo_sets_budgets_that_show_in_use():
    from apps.budgets.models import Budget
    from apps.budgets.selectors import budget_uses

    output = _run_demo()
    assert "4 budgets" in output
    organization = Organization.objects.get(slug="demo")
    uses = {use.budget.scope: use for use in budget_uses(organization=organization).uses}
    assert set(uses) == {"organization", "each_customer", "property", "customer"}
    # Sized from the demo's own spend: the organization has room left, its biggest customer is
    # past its first threshold (80 %), the watched feature's alert-only budget is over.
    assert 0 < uses["organization"].percent < 80
    assert 80 <= uses["customer"].percent < 100
    assert uses["property"].percent > 100 and not uses["property"].budget.enforce
    email, password = _login(output)
    client = Client()
    assert client.login(email=email, password=password)
    page = client.get(reverse("budgets", args=[organization.slug]))
    assert page.status_code == 200
    for budget in Budget.objects.for_org(organization):
        assert budget.public_id in page.content.decode()

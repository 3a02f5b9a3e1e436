"""The organization's own prices: /app/<org>/settings/prices/."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.urls import reverse

from apps.accounts.models import AuditEvent
from apps.usage.metering.events import usage_events_write
from apps.usage.models import PriceOverride, UsageEvent

pytestmark = pytest.mark.django_db

VALID = {
    "model_pattern": "gpt-4o*",
    "provider": "openai",
    "valid_from": "2026-03-01",
    "input_per_mtok": "2.5",
    "cached_input_per_mtok": "1.25",
    "cache_write_per_mtok": "",
    "output_per_mtok": "10",
}


def _url(org):
    return reverse("price_overrides", args=[org.slug])


def _override(org, **fields):
    values = {
        "model_pattern": "claude-*",
        "provider": "",
        "valid_from": datetime(2026, 1, 1, tzinfo=UTC),
        "input_per_mtok": Decimal("3"),
        "output_per_mtok": Decimal("15"),
        **fields,
    }
    return PriceOverride.objects.create(organization=org, **values)


def _rows(org):
    return sorted(PriceOverride.objects.for_org(org).values_list("model_pattern", "valid_from"))


# --- Reading ---------------------------------------------------------------------------------


def test_with_no_overrides_the_page_explains_what_they_are_for(client, org, member):
    client.force_login(member)

    page = client.get(_url(org)).content.decode()

    assert "No price overrides" in page
    assert "negotiated" in page
    # What an override does not price (test_price_sources holds the writer to it).
    assert "An override prices tokens only" in page
    assert "Audio is never priced at your text rate" in page


def test_a_member_sees_the_prices_but_no_form(client, org, member, other_org):
    _override(org, model_pattern="claude-*", cache_write_per_mtok=Decimal("3.750000"))
    _override(other_org, model_pattern="their-secret-model")
    client.force_login(member)

    response = client.get(_url(org))

    page = response.content.decode()
    assert response.status_code == 200
    assert "claude-*" in page and "$3.75" in page and "$15<" in page
    assert "their-secret-model" not in page
    assert 'name="model_pattern"' not in page
    assert "Only admins and owners can change prices." in page


def test_the_nav_links_to_the_page(client, org, member):
    client.force_login(member)

    page = client.get(reverse("org_home", args=[org.slug])).content.decode()

    assert f'href="{_url(org)}"' in page


# --- Adding ----------------------------------------------------------------------------------


def test_an_admin_adds_a_price_audited_and_is_offered_a_reprice(client, org, admin):
    client.force_login(admin)

    response = client.post(_url(org), VALID)

    assert response.status_code == 302
    assert response["Location"] == f"{_url(org)}?reprice_since=2026-03-01T00%3A00%3A00%2B00%3A00"
    override = PriceOverride.objects.for_org(org).get()
    assert (override.model_pattern, override.provider) == ("gpt-4o*", "openai")
    assert override.valid_from == datetime(2026, 3, 1, tzinfo=UTC)
    assert (override.input_per_mtok, override.cached_input_per_mtok) == (
        Decimal("2.5"),
        Decimal("1.25"),
    )
    assert (override.cache_write_per_mtok, override.output_per_mtok) == (None, Decimal("10"))
    audit = AuditEvent.objects.for_org(org).get(action="price_override.created")
    assert audit.actor == admin
    assert audit.details["input_per_mtok"] == "2.5"
    page = client.get(response["Location"]).content.decode()
    assert "Re-price events since 2026-03-01 00:00 UTC" in page


def test_valid_from_takes_a_time_and_an_offset_and_stores_utc(client, org, admin):
    client.force_login(admin)

    client.post(_url(org), {**VALID, "valid_from": "2026-03-01 14:30"})
    client.post(_url(org), {**VALID, "valid_from": "2026-03-02T09:00:00+02:00"})

    assert [when for _, when in _rows(org)] == [
        datetime(2026, 3, 1, 14, 30, tzinfo=UTC),
        datetime(2026, 3, 2, 7, 0, tzinfo=UTC),
    ]


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"model_pattern": "   "}, "model_pattern", "Name the model"),
        ({"input_per_mtok": "-1"}, "input_per_mtok", "cannot be negative"),
        ({"output_per_mtok": "10001"}, "output_per_mtok", "per million tokens"),
        ({"cached_input_per_mtok": "-0.5"}, "cached_input_per_mtok", "cannot be negative"),
        ({"output_per_mtok": ""}, "output_per_mtok", "USD per million tokens"),
        ({"input_per_mtok": "NaN"}, "input_per_mtok", "Enter a number"),
        ({"input_per_mtok": "0.0000001"}, "input_per_mtok", "decimal places"),
        ({"valid_from": "March 1st"}, "valid_from", "Enter a date such as"),
        ({"valid_from": "2026-02-30"}, "valid_from", "Enter a date such as"),
        ({"valid_from": ""}, "valid_from", "required"),
        ({"provider": "mistral"}, "provider", "Select a valid choice"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(client, org, admin, changes, field, message):
    client.force_login(admin)

    response = client.post(_url(org), {**VALID, **changes})

    assert response.status_code == 400
    errors = response.context["form"].errors
    assert list(errors) == [field]
    assert message in " ".join(errors[field])
    assert not PriceOverride.objects.for_org(org).exists()
    assert not AuditEvent.objects.for_org(org).filter(action__startswith="price_override").exists()


def test_a_free_model_may_cost_zero(client, org, admin):
    client.force_login(admin)

    client.post(_url(org), {**VALID, "input_per_mtok": "0", "output_per_mtok": "0"})

    assert PriceOverride.objects.for_org(org).get().output_per_mtok == 0


def test_the_same_pattern_provider_and_moment_twice_is_refused(client, org, admin):
    client.force_login(admin)
    client.post(_url(org), VALID)

    response = client.post(_url(org), {**VALID, "model_pattern": "GPT-4O*"})

    assert response.status_code == 400
    assert "exists" in " ".join(response.context["form"].non_field_errors())
    assert PriceOverride.objects.for_org(org).count() == 1


def test_a_member_cannot_add_a_price(client, org, member):
    client.force_login(member)

    response = client.post(_url(org), VALID)

    assert response.status_code == 403
    assert not PriceOverride.objects.for_org(org).exists()


# --- Deleting --------------------------------------------------------------------------------


def test_an_admin_deletes_a_price_after_confirming(client, org, admin):
    override = _override(org)
    url = reverse("price_override_delete", args=[org.slug, override.pk])
    client.force_login(admin)

    confirm = client.get(url)
    response = client.post(url)

    assert "Delete the price for claude-*?" in confirm.content.decode()
    assert PriceOverride.objects.for_org(org).filter(pk=override.pk).exists() is False
    assert response["Location"].endswith("?reprice_since=2026-01-01T00%3A00%3A00%2B00%3A00")
    audit = AuditEvent.objects.for_org(org).get(action="price_override.deleted")
    assert "claude-*" in audit.target


def test_a_member_cannot_delete_a_price(client, org, member):
    override = _override(org)
    url = reverse("price_override_delete", args=[org.slug, override.pk])
    client.force_login(member)

    assert client.get(url).status_code == 403
    assert client.post(url).status_code == 403
    assert PriceOverride.objects.for_org(org).filter(pk=override.pk).exists()


def test_another_orgs_price_is_404_from_ones_own_org_and_from_theirs(
    client, org, admin, other_org, outsider
):
    theirs = _override(other_org)
    mine = _override(org)
    client.force_login(admin)

    assert (
        client.post(reverse("price_override_delete", args=[org.slug, theirs.pk])).status_code == 404
    )
    client.force_login(outsider)
    assert (
        client.post(reverse("price_override_delete", args=[org.slug, mine.pk])).status_code == 404
    )
    assert client.get(_url(org)).status_code == 404
    assert client.post(_url(org), VALID).status_code == 404

    assert PriceOverride.objects.for_org(other_org).filter(pk=theirs.pk).exists()
    assert _rows(org) == [("claude-*", datetime(2026, 1, 1, tzinfo=UTC))]


# --- Re-pricing ------------------------------------------------------------------------------


def _stored_event(org, when):
    usage_events_write(
        [
            {
                "request_id": f"req_{when:%Y%m%d}",
                "organization_id": org.pk,
                "token_id": None,
                "timestamp": when.isoformat(),
                "provider": "openai",
                "endpoint": "chat",
                "model": "gpt-4o-mini",
                "requested_model": "gpt-4o-mini",
                "customer": None,
                "properties": {},
                "status": 200,
                "stream": False,
                "outcome": "ok",
                "input_tokens": 1_000_000,
                "cached_input_tokens": 0,
                "cache_write_tokens": 0,
                "cache_write_1h_tokens": None,
                "output_tokens": 1_000_000,
                "reasoning_tokens": 0,
                "service_tier": "",
                "raw_usage": None,
                "latency_ms": 10,
                "ttfb_ms": None,
                "overhead_ms": None,
            }
        ]
    )
    return UsageEvent.objects.for_org(org).get(timestamp=when)


def test_re_pricing_applies_a_new_price_to_events_already_stored(
    client, org, admin, django_capture_on_commit_callbacks
):
    now = datetime.now(UTC).replace(microsecond=0)
    before, after = now - timedelta(days=3), now - timedelta(days=1)
    early, late = _stored_event(org, before), _stored_event(org, after)
    assert late.price_source == "catalog"
    client.force_login(admin)
    since = (now - timedelta(days=2)).strftime("%Y-%m-%d %H:%M")
    client.post(_url(org), {**VALID, "model_pattern": "gpt-4o-mini", "valid_from": since})

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("price_reprice", args=[org.slug]), {"since": since})

    assert response.status_code == 302
    late.refresh_from_db()
    early.refresh_from_db()
    # 1M input at $2.5 and 1M output at $10 (the override); the earlier event keeps its price.
    assert (late.cost_usd, late.price_source) == (Decimal("12.5"), "override")
    assert early.price_source == "catalog"
    assert AuditEvent.objects.for_org(org).filter(action="usage.reprice_requested").exists()
    page = client.get(response["Location"]).content.decode()
    assert "Re-pricing events since" in page


def test_a_member_cannot_start_a_reprice(client, org, member, django_capture_on_commit_callbacks):
    client.force_login(member)

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = client.post(reverse("price_reprice", args=[org.slug]), {"since": "2026-01-01"})

    assert response.status_code == 403
    assert callbacks == []
    assert not AuditEvent.objects.for_org(org).filter(action="usage.reprice_requested").exists()


def test_a_reprice_needs_a_moment(client, org, admin, django_capture_on_commit_callbacks):
    client.force_login(admin)

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = client.post(reverse("price_reprice", args=[org.slug]), {"since": "soon"})

    assert response.status_code == 302
    assert callbacks == []
    assert "Enter a date such as" in client.get(response["Location"]).content.decode()

"""The public trust pages: readable without logging in, linked from every page, and stating the
figures the code actually uses."""

import json

import pytest
from django.urls import reverse

from apps.keys import keycache, vault
from apps.keys.keyring import get_keyring
from costr import trust
from costr.schedule import PURGE_HOUR_UTC, PURGE_MINUTE_UTC

pytestmark = pytest.mark.django_db

TRUST_PAGES = ("security", "privacy", "terms", "dpa")


@pytest.mark.parametrize("name", TRUST_PAGES)
def test_each_trust_page_is_public(client, name):
    response = client.get(reverse(name))

    assert response.status_code == 200


@pytest.mark.parametrize("page", ["landing", "login", "signup", *TRUST_PAGES])
def test_every_page_links_all_trust_pages_in_its_footer(client, page):
    html = client.get(reverse(page)).content.decode()
    footer = html[html.index('<footer class="site-footer">') :]

    for name in TRUST_PAGES:
        assert f'href="{reverse(name)}"' in footer


def test_an_organization_page_links_them_too(client, org, member):
    client.force_login(member)
    html = client.get(reverse("org_home", args=[org.slug])).content.decode()

    assert f'href="{reverse("security")}"' in html[html.index("site-footer") :]


def test_security_page_states_the_retention_default_the_settings_use(client, settings):
    settings.COSTR_DEFAULT_RETENTION_DAYS = 47

    html = client.get(reverse("security")).content.decode()

    assert "47 days by default" in html


def test_security_page_states_the_vault_algorithm_and_this_keyring(client):
    html = client.get(reverse("security")).content.decode()

    assert f"AES-{vault.KEY_SIZE * 8}-GCM" in html
    assert f"{vault.NONCE_SIZE * 8}-bit nonce" in html
    assert f"<code>{get_keyring().primary_id}</code> (primary)" in html


def test_security_page_states_the_proxy_limits_in_force(client, settings):
    settings.COSTR_PROXY_DRAIN_SECONDS = 120
    settings.COSTR_UPSTREAM_READ_TIMEOUT = 321
    settings.COSTR_KEYCACHE_TTL_SECONDS = 4

    html = client.get(reverse("security")).content.decode()

    assert "for up to 2 minutes" in html
    assert "up to 321 seconds for it to answer" in html
    assert "refused within 4 seconds" in html
    assert f"last {round(keycache.STALE_IF_ERROR_SECONDS / 60)} minutes" in html


def test_security_page_states_the_limits_on_what_reaches_the_proxy(client, settings):
    settings.COSTR_PROXY_HEADER_READ_TIMEOUT = 17
    settings.COSTR_PROXY_BODY_READ_TIMEOUT = 23
    settings.COSTR_PROXY_MAX_DECODED_BYTES = 5 * 1024 * 1024
    settings.COSTR_USAGE_QUEUE_MAX_RECORDS = 777
    settings.COSTR_PROXY_INSPECT_BYTES = 3 * 1024 * 1024 // 2

    html = client.get(reverse("security")).content.decode()

    assert "Request heads over 64 KiB are refused (431)" in html
    assert "whole head within 17 seconds and each next piece of its body within 23 seconds" in html
    assert "Only DELETE, GET, POST are forwarded" in html
    assert "at most 5 MiB decompressed per response" in html
    assert "A customer identifier is at most 255 characters, a property name 64" in html
    assert "At most 777 records wait in a server's memory" in html
    assert "a re-pricing within 10 minutes of Redis being back" in html
    assert "A request body larger than Costr reads whole (1.5 MiB here;" in html


def test_security_page_quotes_the_committed_benchmark(client, tmp_path, monkeypatch):
    figures = {
        "date": "2026-11-23",
        "machine": "a test box",
        "added_p50_ms": 0.61,
        "added_p99_ms": 2.4,
    }
    path = tmp_path / "benchmarks.json"
    path.write_text(json.dumps(figures))
    monkeypatch.setattr(trust, "BENCHMARKS_JSON", path)

    html = client.get(reverse("security")).content.decode()

    assert "on 2026-11-23 (a test box)" in html
    assert "0.61 ms at the median and 2.40 ms at the 99th percentile" in html


def test_an_unknown_dpa_version_is_404(client):
    assert client.get(reverse("dpa"), {"version": "9.9"}).status_code == 404


def test_security_page_states_the_stripe_guarantees_the_client_enforces(client):
    from apps.billing.client import READ_METHODS
    from apps.billing.services import RESOURCES

    html = client.get(reverse("security")).content.decode()

    assert f"sends only {', '.join(sorted(m.upper() for m in READ_METHODS))} requests" in html
    for _, permission, _ in RESOURCES.values():
        assert permission in html


def test_security_page_states_the_purge_time_and_deletion_deadline(client, monkeypatch):
    from apps.usage import lifecycle

    monkeypatch.setattr(lifecycle, "DELETION_DEADLINE_HOURS", 7)

    html = client.get(reverse("security")).content.decode()

    assert "everything else is deleted within 7 hours" in html
    assert f"Every day at {PURGE_HOUR_UTC:02d}:{PURGE_MINUTE_UTC:02d} UTC" in html


def test_the_dpa_lists_the_deployments_subprocessors(client, settings):
    settings.COSTR_HOSTING_PROVIDER = "Hetzner Online GmbH"

    html = client.get(reverse("dpa")).content.decode()

    assert "Hetzner Online GmbH" in html
    assert "Stripe, Inc." in html and "Only for organizations that connect Stripe" in html


def test_the_repository_has_benchmark_figures_for_the_security_page():
    summary = trust.benchmark_summary()

    assert summary is not None, "run make bench: it writes docs/benchmarks.json"
    assert {"date", "machine", "added_p50_ms", "added_p99_ms"} <= summary.keys()


def test_security_page_says_what_happens_when_costr_is_down_with_and_without_the_sdk(client):
    html = client.get(reverse("security")).content.decode()

    assert "<strong>With Costr's client SDK</strong>" in html
    assert "is sent straight to the provider with that key" in html
    assert "Provider errors and Costr's refusals (an invalid token, a budget) are never" in html
    assert "shown with the source <code>sdk_fallback</code>" in html
    assert "<strong>Without the SDK</strong>, your calls to Costr fail" in html


def test_security_page_says_what_a_budget_guarantees_with_this_deployments_store_timeout(
    client, settings
):
    settings.COSTR_BUDGET_STORE_TIMEOUT_SECONDS = 0.25
    html = client.get(reverse("security")).content.decode()
    section = html[html.index("What a budget guarantees") : html.index("Stripe, read-only")]
    assert "within 250 ms" in section
    for promise in ("budget_exceeded", "X-Costr-Budget-Id", "Retry-After", "budget_unavailable"):
        assert promise in section

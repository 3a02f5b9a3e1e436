"""The reporting pages as a person sees them at 1366 and 390 px (issue #19): the period kept
from page to page by clicking, the custom days shown only for "Custom", the overview's cards in
full rows (margin and spend first) and stacked on a phone, event rows on one line and the event
page, the chart's money rule the same as the tables', and no page that scrolls sideways.

One Chromium for the module, as tests/browser/test_dashboard_layout.py. The data is made before
the browser starts (Playwright's loop runs in this thread, where Django refuses ORM calls).
Screenshots go to ``var/screenshots/reporting/``.
"""

from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings

from apps.proxy.tests.conftest import costr_server  # noqa: F401 - fixture, used by name
from apps.reporting.templatetags.reporting_format import usd
from apps.reporting.tests.dashboard_data import build_october, use, utc
from tests.browser.chromium import launched_chromium, logged_in_page

pytestmark = pytest.mark.django_db(transaction=True)

SCREENSHOTS = Path(settings.BASE_DIR) / "var" / "screenshots" / "reporting"
LAPTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}
SLUG = "reporting-test"
OWNER = "owner@reporting-test.example.com"
PASSWORD = "a long browser-test passphrase 43"
OCTOBER = "period=custom&start=2026-10-01&end=2026-10-31"

CARDS = """
() => Array.from(document.querySelectorAll(".overview-stats > .card")).map((card) => {
  const box = card.getBoundingClientRect();
  return {id: card.id, top: Math.round(box.top), left: Math.round(box.left),
          width: Math.round(box.width)};
})
"""
OVERFLOW = "() => ({scroll: document.documentElement.scrollWidth, inner: window.innerWidth})"


@pytest.fixture
def reporting_org(db):
    from apps.accounts.tests.factories import MembershipFactory, OrganizationFactory

    organization = OrganizationFactory(name="Reporting Test", slug=SLUG)
    owner = MembershipFactory(organization=organization, role="owner", user__email=OWNER).user
    owner.set_password(PASSWORD)
    owner.save()
    build_october(organization)
    use(
        organization,
        utc(2026, 10, 20, 8),
        customer="a-customer-with-a-rather-long-external-identifier-0001",
        properties={"feature": "a-long-feature-name-for-the-badge", "env": "production"},
        latency_ms=12862,
    )
    use(organization, utc(2026, 10, 21, 8), customer=None)
    return organization


@pytest.fixture
def browser(reporting_org):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with launched_chromium() as browser:
        yield browser


def _page(browser, base, viewport):
    return logged_in_page(browser, base, viewport, email=OWNER, password=PASSWORD, slug=SLUG)


def _shot(page, name):
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def _no_sideways_scroll(page, where):
    sizes = page.evaluate(OVERFLOW)
    assert sizes["scroll"] <= sizes["inner"], (where, sizes)


def _rows_of(cards):
    rows: dict[int, list[dict]] = {}
    for card in cards:
        rows.setdefault(card["top"], []).append(card)
    return [rows[top] for top in sorted(rows)]


def test_reporting_pages_at_1366_and_390(browser, costr_server):  # noqa: F811
    base = costr_server.url
    home = f"{base}/app/{SLUG}/"
    page = _page(browser, base, LAPTOP)

    # Overview: margin and spend share the first row, the four others the second; no orphan.
    page.goto(f"{home}?{OCTOBER}")
    rows = _rows_of(page.evaluate(CARDS))
    assert [[c["id"] for c in row] for row in rows] == [
        ["card-margin-setup", "card-spend"],
        ["card-requests", "card-tokens", "card-errors", "card-latency"],
    ]
    first, second = rows
    assert abs(first[0]["width"] - first[1]["width"]) <= 1
    assert len({c["width"] for c in second}) == 1 or (
        max(c["width"] for c in second) - min(c["width"] for c in second) <= 1
    )
    # The two rows are equally wide: the headline cards span two columns each.
    assert (
        abs((first[1]["left"] + first[1]["width"]) - (second[3]["left"] + second[3]["width"])) <= 1
    )
    assert page.locator("#card-latency").inner_text().count("—") == 0
    _shot(page, "1366-overview")
    _no_sideways_scroll(page, "overview")

    # The custom days show for Custom only, switching live.
    assert page.locator("#id_start").is_visible() and page.locator("#id_end").is_visible()
    page.select_option("#id_period", "7d")
    assert not page.locator("#id_start").is_visible()
    page.select_option("#id_period", "custom")
    assert page.locator("#id_start").is_visible()

    # The chart's tooltips and axes write money as the tables do.
    amounts = [
        "0",
        "0.098",
        "0.1142",
        "0.000225",
        "0.1",
        "0.0012",
        "1.0048",
        "12345.678",
        "-0.5012",
    ]
    for amount in amounts:
        written = page.evaluate(f"window.costrFormat.dollars({amount})")
        assert written == usd(Decimal(amount)), amount

    # The period follows every click: nav, a customer, its events, an event, back to a report.
    page.locator(".site-header .nav").get_by_role("link", name="Customers").click()
    page.wait_for_url(f"{base}/app/{SLUG}/customers/?{OCTOBER}")
    page.get_by_role("link", name="acme", exact=True).click()
    page.wait_for_url(f"{base}/app/{SLUG}/customers/acme/?{OCTOBER}")
    span = page.locator(".period-span").inner_text()
    assert span.startswith("Oct 1, 2026") and "Oct 31, 2026" in span
    page.locator("#customer-events").click()
    page.wait_for_url(f"{base}/app/{SLUG}/events/?{OCTOBER}&customer=acme&exact=on")
    assert page.locator("table.events tbody tr").count() == 4
    page.locator("table.events tbody tr").first.get_by_role("link").first.click()
    page.wait_for_url(f"{base}/app/{SLUG}/events/*/?{OCTOBER}")
    assert page.locator("#event-request").inner_text().count("acme") >= 1
    page.locator(".site-header .nav").get_by_role("link", name="Models").click()
    page.wait_for_url(f"{base}/app/{SLUG}/models/?{OCTOBER}")
    _shot(page, "1366-models")
    _no_sideways_scroll(page, "models")

    # Event rows stay on one line, long customer ids and property badges included.
    page.goto(f"{base}/app/{SLUG}/events/?{OCTOBER}")
    heights = page.evaluate(
        "() => Array.from(document.querySelectorAll('table.events tbody tr'))"
        ".map((row) => row.getBoundingClientRect().height)"
    )
    assert len(heights) == 8 and max(heights) - min(heights) <= 2, heights
    assert page.locator("table.events").inner_text().count("12.9 s") == 1
    _no_sideways_scroll(page, "events")
    _shot(page, "1366-events")

    # "(no customer)" opens from the customers table.
    page.goto(f"{base}/app/{SLUG}/customers/?{OCTOBER}")
    page.get_by_role("link", name="(no customer)").click()
    page.wait_for_url(f"{base}/app/{SLUG}/customers-without-id/?{OCTOBER}")
    assert "(no customer)" in page.locator("h1").inner_text()
    page.context.close()

    # A phone: the cards stack in one column, and no report page scrolls sideways.
    phone = _page(browser, base, PHONE)
    phone.goto(f"{home}?{OCTOBER}")
    cards = phone.evaluate(CARDS)
    assert len(cards) == 6 and len({c["left"] for c in cards}) == 1
    assert len({c["width"] for c in cards}) == 1
    _shot(phone, "390-overview")
    for path in (
        "",
        "customers/",
        "customers/acme/",
        "customers-without-id/",
        "models/",
        "properties/",
        "events/",
    ):
        phone.goto(f"{home}{path}?{OCTOBER}")
        _no_sideways_scroll(phone, path)
    phone.goto(f"{home}events/?{OCTOBER}")
    phone.locator("table.events tbody tr").first.get_by_role("link").first.click()
    phone.wait_for_url(f"{base}/app/{SLUG}/events/*/?{OCTOBER}")
    _no_sideways_scroll(phone, "event page")
    _shot(phone, "390-event")
    phone.context.close()

"""The dashboard as a person sees it at a laptop width (1366 px) and on a phone (390 px): the
header in one row, no page that scrolls sideways, the phone menu, one token per submit, the
invitee who lands in the inviting organization, and an audit log that reads as text.

One Chromium for the module (Debian's, driven headless by Playwright as in
test_signup_to_dashboard), one page per viewport reused across the flows. Playwright's sync API
keeps an event loop running in this thread, where Django refuses ORM calls: the data is made
before the browser starts, and everything after is read off the pages. Screenshots go to
``var/screenshots/layout/``.
"""

import re
from pathlib import Path

import pytest
from django.conf import settings

from apps.proxy.tests.conftest import costr_server  # noqa: F401 - fixture, used by name
from tests.browser.chromium import launched_chromium, logged_in_page

pytestmark = pytest.mark.django_db(transaction=True)

SCREENSHOTS = Path(settings.BASE_DIR) / "var" / "screenshots" / "layout"
LAPTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}
ORG_NAME = "Layout Test Inc."
SLUG = "layout-test"
OWNER = "owner@layout-test.example.com"
INVITEE = "invitee@layout-test.example.com"
PASSWORD = "a long browser-test passphrase 42"

# The header's parts that must share one row at laptop widths.
HEADER_PARTS = """
() => [".brand", "details.switcher > summary", ".nav a", "details.settings-menu > summary",
       "details.user-menu > summary"]
  .flatMap((selector) => Array.from(document.querySelectorAll(".site-header " + selector)))
  .map((element) => {
    const box = element.getBoundingClientRect();
    return {text: element.textContent.trim().slice(0, 30), top: box.top, bottom: box.bottom,
            middle: (box.top + box.bottom) / 2, visible: box.width > 0 && box.height > 0};
  })
"""
OVERFLOW = "() => ({scroll: document.documentElement.scrollWidth, inner: window.innerWidth})"


def _shot(page, name: str) -> None:
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


@pytest.fixture
def owner_org(fake_provider):
    """The organization, its owner with a password, a provider key and a little usage."""
    from apps.accounts.tests.factories import MembershipFactory, OrganizationFactory
    from apps.keys import services as keys

    organization = OrganizationFactory(name=ORG_NAME, slug=SLUG)
    owner = MembershipFactory(organization=organization, role="owner", user__email=OWNER).user
    owner.set_password(PASSWORD)
    owner.save()
    keys.provider_key_create(
        organization=organization, provider="openai", key=fake_provider.keys["openai"], actor=owner
    )
    # A budget of each kind that names something long, so the Budgets table shows at its widest.
    from apps.budgets.services import budget_create

    for scope, target in (
        ("customer", {"customer": "a-customer-with-a-rather-long-external-id-0042"}),
        ("each_customer", {}),
        ("property", {"property_name": "feature", "property_value": "summarize-long-documents"}),
    ):
        budget_create(
            organization=organization,
            actor=owner,
            scope=scope,
            period="month",
            limit_usd="250",
            **target,
        )
    return organization


@pytest.fixture
def browser(tmp_path, owner_org):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with launched_chromium() as browser:
        yield browser


def _logged_in_page(browser, base, viewport):
    return logged_in_page(browser, base, viewport, email=OWNER, password=PASSWORD, slug=SLUG)


def _assert_one_header_row(page, where):
    parts = page.evaluate(HEADER_PARTS)
    assert len(parts) >= 10 and all(p["visible"] for p in parts), (where, parts)
    # Vertically centred in one row: the same middle, and every box overlaps the first.
    middles = [p["middle"] for p in parts]
    assert max(middles) - min(middles) <= 1.5, (where, parts)
    first = parts[0]
    assert all(p["top"] < first["bottom"] and p["bottom"] > first["top"] for p in parts), where
    header = page.locator(".site-header").bounding_box()
    assert header["height"] < 70, (where, header)


def _assert_no_sideways_scroll(page, where):
    sizes = page.evaluate(OVERFLOW)
    assert sizes["scroll"] <= sizes["inner"], (where, sizes)


def test_pages_fit_at_1366_and_390_and_the_phone_menu_folds(browser, costr_server):  # noqa: F811
    base = costr_server.url
    pages = [
        "",
        "integrate/",
        "settings/tokens/",
        "settings/keys/",
        "settings/prices/",
        "settings/",
        "settings/retention/",
        "settings/stripe/",
        "members/",
        "audit/",
        "customers/",
        "events/",
        "budgets/",
        "alerts/",
    ]
    laptop = _logged_in_page(browser, base, LAPTOP)
    for path in pages:
        laptop.goto(f"{base}/app/{SLUG}/{path}")
        _assert_one_header_row(laptop, path)
        _assert_no_sideways_scroll(laptop, path)
    laptop.goto(f"{base}/app/{SLUG}/integrate/")
    _shot(laptop, "1366-integrate")
    laptop.goto(f"{base}/app/{SLUG}/budgets/")
    _shot(laptop, "1366-budgets")

    # The Settings menu opens on click and keyboard, closes on Escape, and leads to its pages.
    settings_menu = laptop.locator("details.settings-menu")
    settings_menu.locator("summary").click()
    assert laptop.get_by_role("link", name="Audit log").is_visible()
    _shot(laptop, "1366-settings-menu")
    laptop.keyboard.press("Escape")
    assert not laptop.get_by_role("link", name="Audit log").is_visible()
    settings_menu.locator("summary").focus()
    laptop.keyboard.press("Enter")
    laptop.get_by_role("link", name="Tokens").click()
    laptop.wait_for_url(f"{base}/app/{SLUG}/settings/tokens/")
    laptop.context.close()

    phone = _logged_in_page(browser, base, PHONE)
    for path in [*pages, "no-such-page/"]:
        phone.goto(f"{base}/app/{SLUG}/{path}")
        _assert_no_sideways_scroll(phone, path)
    for public in ("/", "/login/", "/signup/", "/security/"):
        phone.goto(f"{base}{public}")
        _assert_no_sideways_scroll(phone, public)

    phone.goto(f"{base}/app/{SLUG}/")
    _shot(phone, "390-overview")
    button = phone.get_by_role("button", name="Menu")
    integrate = phone.locator("#site-menu").get_by_role("link", name="Integrate")
    assert button.is_visible() and not integrate.is_visible()
    assert button.get_attribute("aria-expanded") == "false"
    button.click()
    assert integrate.is_visible()
    assert phone.get_by_role("button", name="Close").get_attribute("aria-expanded") == "true"
    _assert_no_sideways_scroll(phone, "menu open")
    _shot(phone, "390-menu-open")
    phone.keyboard.press("Escape")
    assert not integrate.is_visible()
    # With the keyboard alone: focus the button, Enter opens, the link takes us there.
    phone.get_by_role("button", name="Menu").focus()
    phone.keyboard.press("Enter")
    integrate.click()
    phone.wait_for_url(f"{base}/app/{SLUG}/integrate/")
    assert not phone.locator("#site-menu").get_by_role("link", name="Integrate").is_visible()
    _shot(phone, "390-integrate")
    phone.context.close()

    # Without JavaScript there is no Menu button, and the links are simply shown.
    context = browser.new_context(viewport=PHONE, java_script_enabled=False)
    page = context.new_page()
    page.goto(f"{base}/login/")
    page.get_by_label("E-mail").fill(OWNER)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.goto(f"{base}/app/{SLUG}/")
    assert not page.get_by_role("button", name="Menu").is_visible()
    assert page.locator("#site-menu").get_by_role("link", name="Integrate").is_visible()
    _assert_no_sideways_scroll(page, "no javascript")
    _shot(page, "390-no-javascript")
    context.close()


def test_one_token_per_submit_and_the_invitee_joins_the_inviting_org(
    browser,
    costr_server,  # noqa: F811
):
    base = costr_server.url
    page = _logged_in_page(browser, base, LAPTOP)

    # A token: shown once after the redirect; a reload creates none and shows it no more.
    page.goto(f"{base}/app/{SLUG}/settings/tokens/")
    page.get_by_label("Name", exact=True).fill("layout token")
    page.get_by_role("button", name="Create token").click()
    page.wait_for_url(f"{base}/app/{SLUG}/settings/tokens/created/")
    secret = page.locator("#new-token").inner_text().strip()
    assert secret.startswith("costr_")
    _shot(page, "1366-token-created")
    page.reload()
    page.wait_for_url(f"{base}/app/{SLUG}/settings/tokens/")
    assert page.get_by_text("shown only once").is_visible()
    assert secret not in page.content()
    rows = page.locator("table tbody tr").filter(has_text="layout token")
    assert rows.count() == 1
    page.go_back()
    assert secret not in page.content()
    _shot(page, "1366-token-after-reload")

    # An invitation, whose link the page shows once.
    page.goto(f"{base}/app/{SLUG}/members/")
    page.get_by_label("E-mail").fill(INVITEE)
    page.get_by_role("button", name="Send invitation").click()
    link = page.locator(".callout code").inner_text().strip()
    assert "/invite/" in link

    # The audit log: each action once in the filter, details as text, the dashboard's dates.
    page.goto(f"{base}/app/{SLUG}/audit/")
    options = page.locator("select[name=action] option").all_inner_texts()
    assert len(options) == len(set(options)), options
    details = page.locator("table tbody").inner_text()
    assert "Scopes: proxy" in details and "Expires at: none" in details
    assert "Role: member" in details
    for python in ("{'", "['", "None", "True", "False"):
        assert python not in details, python
    assert re.search(r"[A-Z][a-z]{2} \d{1,2}, \d{4} \d{2}:\d{2}:\d{2}", details)
    _shot(page, "1366-audit-log")
    page.context.close()

    # The invitee, signed out, follows the link, creates an account and lands in the org.
    context = browser.new_context(viewport=PHONE)
    invitee = context.new_page()
    invitee.goto(link)
    invitee.get_by_role("link", name="Create an account").click()
    assert invitee.get_by_role("heading", name=f"Join {ORG_NAME}").is_visible()
    assert invitee.get_by_label("Organization name").count() == 0
    assert invitee.get_by_label("Work e-mail").input_value() == INVITEE
    _assert_no_sideways_scroll(invitee, "invited sign-up")
    _shot(invitee, "390-invited-signup")
    invitee.get_by_label("Your name").fill("Invited Person")
    invitee.get_by_label("Password").fill(PASSWORD)
    invitee.get_by_role("button", name="Create account and join").click()
    invitee.wait_for_url(f"{base}/app/{SLUG}/")
    message = invitee.locator(".messages li").inner_text()
    assert message == f"Welcome to Costr. You joined {ORG_NAME}"
    assert invitee.locator("details.switcher > summary").inner_text().strip() == ORG_NAME
    _shot(invitee, "390-invitee-joined")
    # The inviting organization is their only one: the switcher lists nothing else.
    entries = invitee.locator("details.switcher .menu a").all_text_contents()
    assert [" ".join(e.split()) for e in entries] == [f"{ORG_NAME} Member", "+ New organization"]
    context.close()

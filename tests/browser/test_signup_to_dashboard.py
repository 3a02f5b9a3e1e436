"""A newcomer's first session, in a real browser: sign up, store a provider key, create a token
and read it off the page, send traffic through the proxy with the official OpenAI SDK, then open
the overview and see the spend chart drawn and the customer in the table.

Costr runs whole (its ASGI app under uvicorn on a real port) in front of the fake provider;
Debian's Chromium is driven headless by Playwright (browsers cannot be downloaded here: ``.ci/run``
installs the ``chromium`` package). Screenshots of each step go to ``var/screenshots/``, where CI
keeps them as artifacts.

The server answers from its own threads, so the database is transactional. Playwright's sync
API keeps an event loop running in this thread, where Django refuses ORM calls: the test reads
nothing from the database itself and looks only at what the browser and the SDK see.
"""

from pathlib import Path

import pytest
from django.conf import settings

from apps.proxy.tests.conftest import costr_server  # noqa: F401 - fixture, used by name
from tests.browser.chromium import CHROMIUM_ARGS, chromium_path

pytestmark = pytest.mark.django_db(transaction=True)

SCREENSHOTS = Path(settings.BASE_DIR) / "var" / "screenshots"

EMAIL = "founder@browser-test.example.com"
PASSWORD = "a long browser-test passphrase 42"
SLUG = "browser-test"
CUSTOMER = "customer-browser-42"
# Large enough that the spend is visible on a dollar axis: $0.60 a request for gpt-4o.
USAGE = '{"prompt_tokens": 120000, "completion_tokens": 30000, "total_tokens": 150000}'


@pytest.fixture
def browser_page(tmp_path):
    """A page of a fresh headless Chromium profile (Playwright takes the user data directory as
    an argument of its own rather than as ``--user-data-dir``)."""
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=chromium_path(),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        context.set_default_timeout(15_000)
        try:
            yield context.new_page()
        finally:
            context.close()


def _shot(page, name: str) -> None:
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


# The canvases on the page: whether Chart.js owns each, how many pixels it has painted, and the
# sum of its datasets' values.
CANVASES = """
() => Array.from(document.querySelectorAll("canvas")).map((canvas) => {
  const chart = window.Chart ? window.Chart.getChart(canvas) : undefined;
  const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let painted = 0;
  for (let i = 3; i < pixels.length; i += 4) { if (pixels[i] !== 0) painted++; }
  let total = 0;
  if (chart) {
    for (const dataset of chart.data.datasets) {
      for (const point of dataset.data) {
        total += (typeof point === "number" ? point : Number(point && point.y)) || 0;
      }
    }
  }
  return {id: canvas.id, chart: Boolean(chart), type: chart ? chart.config.type : null,
          painted, total, width: canvas.width, height: canvas.height};
})
"""


def test_sign_up_send_traffic_and_see_it_on_the_overview(
    browser_page,
    costr_server,  # noqa: F811
    fake_provider,
):
    import openai

    from apps.usage.metering import sink

    page, base = browser_page, costr_server.url

    # Sign up: the person, their organization and its URL in one form.
    page.goto(f"{base}/signup/")
    page.get_by_label("Work e-mail").fill(EMAIL)
    page.get_by_label("Your name").fill("Browser Founder")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_label("Organization name").fill("Browser Test Inc")
    page.get_by_label("Organization URL").fill(SLUG)
    _shot(page, "01-signup")
    page.get_by_role("button", name="Create account and organization").click()
    page.wait_for_url(f"{base}/app/{SLUG}/**")
    _shot(page, "02-after-signup")

    # The provider key, pasted as a person would.
    page.goto(f"{base}/app/{SLUG}/settings/keys/")
    page.get_by_label("Provider", exact=True).select_option("openai")
    page.get_by_label("API key").fill(fake_provider.keys["openai"])
    page.get_by_role("button", name="Save key").click()
    masked = "sk-…" + fake_provider.keys["openai"][-4:]
    assert page.locator("table code").get_by_text(masked, exact=True).is_visible()
    assert fake_provider.keys["openai"] not in page.content()
    _shot(page, "03-provider-key")

    # A token, read off the page it is shown on once.
    page.goto(f"{base}/app/{SLUG}/settings/tokens/")
    page.get_by_label("Name", exact=True).fill("browser test")
    page.get_by_role("button", name="Create token").click()
    token = page.locator("#new-token").inner_text().strip()
    assert token.startswith("costr_")
    _shot(page, "04-token-created")

    # Traffic through the proxy with the official SDK, for one named customer.
    client = openai.OpenAI(
        base_url=f"{base}/p/{SLUG}/openai/v1", api_key=token, max_retries=0, timeout=30
    )
    headers = {"X-Costr-Customer": CUSTOMER, "x-fake-usage": USAGE}
    for _ in range(3):
        completion = client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "Hello"}],
            extra_headers=headers,
        )
        assert completion.choices[0].message.content
    stream = client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "Hello again"}],
        stream=True,
        extra_headers=headers,
    )
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    client.close()
    assert sink.flush(timeout=10), "the usage writer did not catch up"

    # The overview: the spend chart drawn by Chart.js, and the customer in the table.
    page.goto(f"{base}/app/{SLUG}/")
    _shot(page, "05-overview")
    page.wait_for_function(
        "() => window.Chart && Array.from(document.querySelectorAll('canvas'))"
        ".some((c) => window.Chart.getChart(c))"
    )
    page.wait_for_timeout(1500)  # let the chart's entry animation finish before measuring
    _shot(page, "06-overview-chart")
    canvases = page.evaluate(CANVASES)
    charts = [c for c in canvases if c["chart"]]
    assert charts, canvases
    spend = next(c for c in charts if c["id"] == "spend-chart-canvas")
    assert spend["painted"] > 500, spend
    # 4 requests of 120,000 input and 30,000 output tokens of gpt-4o at $2.50 and $10 per
    # million tokens: $0.60 each.
    assert abs(spend["total"] - 2.40) < 0.005, spend
    customer_cells = page.locator("table td").filter(has_text=CUSTOMER)
    assert customer_cells.count() >= 1
    assert customer_cells.first.is_visible()

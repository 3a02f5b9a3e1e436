"""Debian's Chromium driven by Playwright, as every browser test uses it (test tools cannot
download browsers here: `.ci/run` installs the package)."""

import shutil
from contextlib import contextmanager

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def chromium_path() -> str:
    assert shutil.which(CHROMIUM), f"{CHROMIUM} is missing: apt-get install chromium"
    return CHROMIUM


@contextmanager
def launched_chromium():
    """One headless Chromium for a module's tests (each opens its own contexts)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


def logged_in_page(browser, base: str, viewport: dict, *, email: str, password: str, slug: str):
    """A page of a new context of ``viewport``, logged in through the login form and landed on
    the organization ``slug``."""
    context = browser.new_context(viewport=viewport)
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.goto(f"{base}/login/")
    page.get_by_label("E-mail").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{base}/app/{slug}/**")
    return page

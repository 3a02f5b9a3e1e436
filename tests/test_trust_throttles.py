"""The security page states the abuse limits in force, read from the settings that enforce them."""

import pytest
from django.urls import reverse

pytestmark = pytest.mark.django_db


def test_security_page_states_the_abuse_limits_in_force(client, settings):
    settings.COSTR_THROTTLE_LOGIN_FAILURES = 7
    settings.COSTR_THROTTLE_LOGIN_LOCKOUT_SECONDS = 1800
    settings.COSTR_THROTTLE_PASSWORD_RESET_PER_EMAIL = "2/hour"
    settings.COSTR_THROTTLE_PASSWORD_RESET_PER_ADDRESS = "9/day"
    settings.COSTR_THROTTLE_INVALID_TOKENS_PER_ADDRESS = "40/5 minutes"
    settings.REDIS_URL = ""

    html = client.get(reverse("security")).content.decode()

    assert "After 7 failed logins for one account, or from one address, within 30 minutes" in html
    assert "At most 2 per hour for one e-mail address and 9 per day from one address" in html
    assert "malformed Costr token: at most 40 per 5 minutes from one address" in html
    assert "each server process keeps its own counts" in html
    assert "<code>Retry-After</code>" in html

"""The abuse throttles while their Redis does not answer (DESIGN.md, Promise 5 and "Limits").

A real redis-server of the test's own (never the shared one) holds the Django cache (where
django-axes counts failed logins) and ``costr.throttle``'s counters. With it stopped, logins,
password-reset mails and the API go on uncounted; started again, failed logins count and lock
out as before, with no restart of anything.
"""

import logging
import random
import signal
import threading
import time
from datetime import timedelta

import pytest
from axes.handlers.proxy import AxesProxyHandler
from django.conf import settings
from django.core import mail
from django.test import override_settings
from django.urls import reverse

from apps.accounts.tests.factories import UserFactory
from apps.keys import keycache, services
from costr import throttle

pytestmark = pytest.mark.django_db

LOGIN_FAILURES = 3
WRONG_PASSWORD = "not the password 1"


def _address() -> str:
    return f"203.0.113.{random.randrange(1, 255)}"


def _email() -> str:
    return f"person-{random.getrandbits(48):x}@outage.test"


@pytest.fixture
def throttle_store(redis_server):
    """The Django cache and the throttle counters on ``redis_server``, as ``REDIS_URL`` makes
    them in production.

    axes makes its handler once, on the cache configured then, so it is made again here after
    the cache changes, and again after it changes back: no later test may count on this test's
    (stopped) server.
    """
    cache = {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": redis_server.url,
        "KEY_PREFIX": "costr-test",
        "OPTIONS": settings.REDIS_CACHE_OPTIONS,
    }
    with override_settings(
        REDIS_URL=redis_server.url,
        CACHES={"default": cache},
        AXES_FAILURE_LIMIT=LOGIN_FAILURES,
        AXES_COOLOFF_TIME=timedelta(seconds=900),
    ):
        AxesProxyHandler.get_implementation(force=True)
        try:
            yield redis_server
        finally:
            keycache._drop_local(None)
    AxesProxyHandler.get_implementation(force=True)


def _login(client, email: str, password: str, address: str):
    return client.post(
        reverse("login"), {"username": email, "password": password}, REMOTE_ADDR=address
    )


def _logged_in(response) -> bool:
    return response.status_code == 302 and "_auth_user_id" in response.client.session


def _outage_warnings(caplog) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "costr.throttle" and record.levelno == logging.WARNING
    ]


def _assert_nothing_personal_logged(caplog, *secrets: str) -> None:
    for record in caplog.records:
        text = record.getMessage()
        for secret in secrets:
            assert secret.lower() not in text.lower(), text


def _reset_link(message) -> str:
    return next(word for word in message.body.split() if "/reset/" in word)


def _set_password_through(client, link: str, new_password: str, address: str):
    form_page = client.get(link, follow=True, REMOTE_ADDR=address)
    return client.post(
        form_page.redirect_chain[-1][0],
        {"new_password1": new_password, "new_password2": new_password},
        REMOTE_ADDR=address,
    )


def test_with_redis_down_logins_work_uncounted_and_the_outage_is_logged_once(
    client, throttle_store, org, owner, password, caplog
):
    caplog.set_level(logging.INFO)
    throttle_store.stop()
    address = _address()

    # Past the limit, from one address and for one account: nothing is counted, so the form
    # answers each with its error and never with a lockout.
    wrong = [
        _login(client, owner.email, WRONG_PASSWORD, address) for _ in range(LOGIN_FAILURES + 2)
    ]
    assert [r.status_code for r in wrong] == [200] * (LOGIN_FAILURES + 2)
    assert all(b"Please enter a correct" in r.content for r in wrong)

    signed_in = _login(client, owner.email, password, address)
    assert _logged_in(signed_in)
    assert signed_in["Location"] == reverse("app")
    overview = client.get(signed_in["Location"], follow=True, REMOTE_ADDR=address)
    assert overview.status_code == 200
    assert overview.redirect_chain[-1][0] == reverse("org_home", kwargs={"org_slug": org.slug})

    # One warning for the whole outage, naming neither the account nor the password.
    (warning,) = _outage_warnings(caplog)
    assert "login throttle" in warning and "uncounted" in warning
    _assert_nothing_personal_logged(caplog, owner.email, password, WRONG_PASSWORD)


@pytest.mark.django_db(transaction=True)  # the login runs on a thread of its own
def test_with_redis_frozen_a_login_is_answered_uncounted(client, throttle_store, owner, password):
    """A Redis that accepts nothing and answers nothing (SIGSTOP: a stalled host, a cut
    network) must not hang the login: the cache gives up and the login goes on uncounted."""
    throttle_store.process.send_signal(signal.SIGSTOP)
    answers = []
    try:
        attempt = threading.Thread(
            target=lambda: answers.append(_login(client, owner.email, password, _address()))
        )
        attempt.start()
        # A bound on how long the test may hang, not a performance threshold.
        attempt.join(timeout=60)
        assert not attempt.is_alive(), "the login hangs while Redis is frozen"
    finally:
        throttle_store.process.send_signal(signal.SIGCONT)
    assert _logged_in(answers[0])


def test_with_redis_down_a_password_reset_sends_its_mail_and_sets_the_password(
    client, throttle_store, owner, password, caplog
):
    throttle_store.stop()
    address = _address()

    asked = client.post(reverse("password_reset"), {"email": owner.email}, REMOTE_ADDR=address)
    assert asked.status_code == 302
    (message,) = mail.outbox
    assert message.to == [owner.email]

    # Setting the new password also lifts the account's lockout, which the cache cannot do now:
    # the password is set all the same, and it logs in.
    new_password = "a fresh passphrase 77"
    done = _set_password_through(client, _reset_link(message), new_password, address)
    assert done.status_code == 302
    owner.refresh_from_db()
    assert owner.check_password(new_password)
    assert _logged_in(_login(client, owner.email, new_password, _address()))
    _assert_nothing_personal_logged(caplog, owner.email, password, new_password)


def test_with_redis_down_the_api_serves_valid_tokens_and_refuses_bad_ones_uncounted(
    client, throttle_store, org, settings, caplog
):
    settings.COSTR_THROTTLE_INVALID_TOKENS_PER_ADDRESS = "3/minute"
    keycache._drop_local(None)
    created = services.proxy_token_create(organization=org, name="api", scopes=["read"], actor=None)
    caplog.set_level(logging.INFO)
    throttle_store.stop()
    address = _address()
    bad = "costr_" + "0" * 43

    refusals = [
        client.get("/api/v1/events/", HTTP_AUTHORIZATION=f"Bearer {bad}", REMOTE_ADDR=address)
        for _ in range(6)
    ]
    # Uncounted, so never throttled: each is the plain 401 it would be without any limit.
    assert [r.status_code for r in refusals] == [401] * 6
    assert {r.json()["error"]["code"] for r in refusals} == {"invalid_token"}
    served = client.get(
        "/api/v1/events/", HTTP_AUTHORIZATION=f"Bearer {created.plaintext}", REMOTE_ADDR=address
    )
    assert served.status_code == 200, served.content

    # One warning for the outage, not one per refused request (a flood would flood the log).
    (warning,) = _outage_warnings(caplog)
    assert "abuse throttles" in warning and "uncounted" in warning
    _assert_nothing_personal_logged(caplog, bad, created.plaintext)


def test_when_redis_is_back_failed_logins_and_resets_are_counted_again(
    client, throttle_store, owner, password, settings, caplog
):
    """No restart: the same process, the same handler and counter store, Redis started again."""
    settings.COSTR_THROTTLE_PASSWORD_RESET_PER_EMAIL = "2/hour"
    caplog.set_level(logging.INFO)
    throttle_store.stop()
    address = _address()
    assert _login(client, owner.email, WRONG_PASSWORD, address).status_code == 200
    assert client.post(reverse("password_reset"), {"email": owner.email}).status_code == 302

    throttle_store.start()
    # The stores are left alone for a pause after a failure; past it, the next attempt asks.
    time.sleep(throttle.StoreHealth.retry_seconds)
    victim = UserFactory(email=_email())
    answers = [
        _login(client, victim.email, WRONG_PASSWORD, _address()).status_code
        for _ in range(LOGIN_FAILURES)
    ]
    assert answers == [200] * (LOGIN_FAILURES - 1) + [429]
    locked = _login(client, victim.email, password, _address())
    assert locked.status_code == 429
    assert locked["Retry-After"] == "900"
    assert "_auth_user_id" not in client.session

    resets = [
        client.post(reverse("password_reset"), {"email": victim.email}, REMOTE_ADDR=_address())
        for _ in range(3)
    ]
    assert [r.status_code for r in resets] == [302, 302, 429]

    # The outage began and ended once for each store of counts.
    warnings = _outage_warnings(caplog)
    assert sum("did not answer" in w for w in warnings) == 2, warnings
    assert sum("answers again" in w for w in warnings) == 2, warnings


def test_the_security_page_says_what_holds_while_redis_is_down(client, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # only named on the page, never reached
    html = client.get(reverse("security")).content.decode()

    assert (
        "If Redis is down or does not answer within a second, logins, reset e-mails and token"
        " checks go on uncounted" in html
    )
    assert "no login is locked out and no reset e-mail refused" in html
    retry = round(throttle.StoreHealth.retry_seconds)
    assert f"Costr tries Redis again every {retry} seconds" in html
    assert "fail until it is back" not in html

"""Floods of failed logins and password-reset requests through the Django test client: past the
limit a 429 with Retry-After, nothing sent beyond it, and other clients and accounts unaffected.

Each test's clients come from addresses of their own (TEST-NET-3, random per run) and its people
have fresh e-mail addresses, so no test is throttled by another's counts, even in Redis across
runs.
"""

import random
from datetime import timedelta

import pytest
from django.core import mail
from django.urls import reverse

from apps.accounts.tests.factories import UserFactory
from tests.outage import wait_until

pytestmark = pytest.mark.django_db

LOGIN_FAILURES = 4
WRONG_PASSWORD = "not the password 1"


def _address() -> str:
    return f"203.0.{random.randrange(113, 114)}.{random.randrange(1, 255)}"


def _addresses(count: int) -> list[str]:
    chosen: set[str] = set()
    while len(chosen) < count:
        chosen.add(f"198.51.{random.randrange(100, 101)}.{random.randrange(1, 255)}")
    return sorted(chosen)


def _email() -> str:
    return f"person-{random.getrandbits(48):x}@throttle.test"


@pytest.fixture
def login_limits(settings):
    settings.AXES_FAILURE_LIMIT = LOGIN_FAILURES
    settings.AXES_COOLOFF_TIME = timedelta(seconds=900)
    return settings


def _login(client, email: str, password: str, address: str):
    return client.post(
        reverse("login"), {"username": email, "password": password}, REMOTE_ADDR=address
    )


def _logged_in(response) -> bool:
    return response.status_code == 302 and "_auth_user_id" in response.client.session


def test_failed_logins_from_one_address_are_refused_past_the_limit(client, login_limits, password):
    address = _address()
    # Several accounts, so that the per-account rule is not what trips.
    targets = [UserFactory(email=_email()) for _ in range(LOGIN_FAILURES)]
    answers = [_login(client, t.email, WRONG_PASSWORD, address).status_code for t in targets]
    # The form again with its error, until the failure that reaches the limit locks the address.
    assert answers == [200] * (LOGIN_FAILURES - 1) + [429]

    refused = _login(client, targets[0].email, password, address)
    assert refused.status_code == 429
    assert int(refused["Retry-After"]) == 900
    assert b"Too many failed logins" in refused.content
    assert b'name="password"' in refused.content  # the form is still there
    assert "_auth_user_id" not in client.session  # the right password did not get in

    # Another address logs in to the same accounts (each has one failure, under the limit).
    assert _logged_in(_login(client, targets[1].email, password, _address()))


def test_failed_logins_for_one_account_from_many_addresses_lock_that_account_only(
    client, login_limits, password
):
    victim = UserFactory(email=_email())
    bystander = UserFactory(email=_email())
    answers = [
        _login(client, victim.email, WRONG_PASSWORD, address).status_code
        for address in _addresses(LOGIN_FAILURES)
    ]
    assert answers == [200] * (LOGIN_FAILURES - 1) + [429]

    # Any address: the account is locked, even for its right password (the lockout trade-off).
    fresh = _address()
    locked = _login(client, victim.email.upper(), password, fresh)
    assert locked.status_code == 429
    assert locked["Retry-After"] == "900"
    assert "_auth_user_id" not in client.session
    # The same address, another account: served.
    assert _logged_in(_login(client, bystander.email, password, fresh))


def test_a_lockout_ends_after_its_window_even_while_it_is_being_tried(client, settings, password):
    """Attempts during a lockout do not extend it: the owner, retrying, gets in once it ends."""
    settings.AXES_FAILURE_LIMIT = 2
    settings.AXES_COOLOFF_TIME = timedelta(seconds=2)
    user = UserFactory(email=_email())
    address = _address()
    for _ in range(2):
        _login(client, user.email, WRONG_PASSWORD, address)
    assert _login(client, user.email, password, address).status_code == 429

    wait_until(
        lambda: _logged_in(_login(client, user.email, password, address)),
        timeout=30,
        interval=0.2,
        message="the lockout never ended while being retried",
    )


def test_a_password_reset_lifts_the_account_lockout(client, login_limits, password):
    user = UserFactory(email=_email())
    for address in _addresses(LOGIN_FAILURES):
        _login(client, user.email, WRONG_PASSWORD, address)
    assert _login(client, user.email, password, _address()).status_code == 429

    address = _address()
    client.post(reverse("password_reset"), {"email": user.email}, REMOTE_ADDR=address)
    (message,) = mail.outbox
    link = next(word for word in message.body.split() if "/reset/" in word)
    form_page = client.get(link, follow=True, REMOTE_ADDR=address)
    new_password = "a fresh passphrase 77"
    done = client.post(
        form_page.redirect_chain[-1][0],
        {"new_password1": new_password, "new_password2": new_password},
        REMOTE_ADDR=address,
    )
    assert done.status_code == 302
    assert _logged_in(_login(client, user.email, new_password, _address()))


def _reset(client, email: str, address: str):
    return client.post(reverse("password_reset"), {"email": email}, REMOTE_ADDR=address)


@pytest.mark.parametrize("registered", [True, False], ids=["registered", "unknown"])
def test_reset_mails_per_email_stop_at_the_limit_and_answer_alike(client, settings, registered):
    settings.COSTR_THROTTLE_PASSWORD_RESET_PER_EMAIL = "3/hour"
    email = _email()
    if registered:
        UserFactory(email=email)
    answers = [_reset(client, email, address).status_code for address in _addresses(5)]

    # Registered or not, the same answers: three accepted, then refused.
    assert answers == [302, 302, 302, 429, 429]
    assert len(mail.outbox) == (3 if registered else 0)
    refused = _reset(client, email.upper(), _address())
    assert refused.status_code == 429
    assert 0 < int(refused["Retry-After"]) <= 3600
    assert b"no e-mail was sent" in refused.content
    # Another address is still served.
    other = _email()
    UserFactory(email=other)
    assert _reset(client, other, _address()).status_code == 302
    assert mail.outbox[-1].to == [other]


def test_reset_requests_per_address_stop_at_the_limit(client, settings):
    settings.COSTR_THROTTLE_PASSWORD_RESET_PER_ADDRESS = "4/hour"
    address = _address()
    people = [UserFactory(email=_email()) for _ in range(6)]
    answers = [_reset(client, person.email, address).status_code for person in people]

    assert answers == [302, 302, 302, 302, 429, 429]
    assert sorted(m.to[0] for m in mail.outbox) == sorted(p.email for p in people[:4])
    # The fifth person, asking from an address of their own, gets their mail.
    assert _reset(client, people[4].email, _address()).status_code == 302
    assert mail.outbox[-1].to == [people[4].email]

"""Throttles on the account pages: failed logins (django-axes) and password-reset mails.

Failed logins count per account and per client address, each on its own, in the Django cache
(Redis when configured). Past ``COSTR_THROTTLE_LOGIN_FAILURES`` in a row within the lockout
window, every login for that account, or from that address, is refused with 429 and
``Retry-After`` until the window ends; attempts during a lockout do not extend it. The
per-account rule is what stops a password being guessed from many addresses; its price is that
anyone who knows an e-mail address can keep that account's password login locked by failing on
purpose (a lockout denial of service). The window is short, and a successful password reset,
which proves control of the mailbox, lifts the account's lockout at once. The per-address rule
stops one client spraying many accounts; people behind one shared address share it.

Password-reset requests count per e-mail address asked for and per client address, whether or
not an account has that address, so the answer never tells which addresses are registered.

Both fail open (DESIGN.md, Promise 5): while the store of counts (Redis, when configured) does
not answer, logins and reset mails go on uncounted, and an outage is logged once when it begins
and once when it ends; counting resumes by itself with the first attempt that reaches the store.
"""

import logging
import math

import redis
from axes.backends import AxesStandaloneBackend
from axes.handlers.cache import AxesCacheHandler
from axes.handlers.proxy import AxesProxyHandler
from axes.helpers import get_cool_off
from django.contrib.auth import views as auth_views
from django.shortcuts import render

from apps.accounts.forms import EmailAuthenticationForm
from costr import throttle

logger = logging.getLogger("costr.throttle")

ACCOUNT_KEY_PREFIX = "account:"


def login_client_address(request) -> str | None:
    """The client address a login is counted under: the socket's peer as the server saw it
    (uvicorn's ``--proxy-headers`` sets it from ``X-Forwarded-For`` for trusted proxies only).
    A header is never read here: anyone can send one."""
    return request.META.get("REMOTE_ADDR") or None


def login_account(request, credentials: dict | None) -> str | None:
    """The account a login attempt is counted under, as a key of its own kind: ``a@x.test`` and
    ``A@X.test`` are one account, and no e-mail address can share a counter with an address
    (axes hashes every parameter's value into one flat key space)."""
    if credentials is not None:
        email = credentials.get("username")
    else:
        email = getattr(request, "POST", {}).get("username")
    if not email:
        return None
    return f"{ACCOUNT_KEY_PREFIX}{email.strip().lower()}"


def lockout_seconds() -> int:
    return math.ceil(get_cool_off().total_seconds())


def login_locked_out(request, original_response=None, credentials=None):
    """``AXES_LOCKOUT_CALLABLE``: the login page again, with 429, ``Retry-After`` and what
    happened, so the same form works once the lockout ends."""
    seconds = lockout_seconds()
    form = EmailAuthenticationForm(request)
    response = render(
        request,
        "registration/login.html",
        {
            "form": form,
            "next": request.POST.get("next", ""),
            "throttled_minutes": math.ceil(seconds / 60),
        },
        status=429,
    )
    response["Retry-After"] = str(seconds)
    return response


class FailOpenCacheHandler(AxesCacheHandler):
    """``AXES_HANDLER``: axes' own cache handler, which raises whatever the Django cache raises,
    so with Redis down every login would be a 500. Here an error of the Redis client counts as
    "no failures known" and the attempt goes uncounted: logins work as they would without
    throttling until Redis answers, and then the counts (and any lockout still in its window)
    are back as they were. After a failure the cache is tried again every few seconds, not on
    every attempt (``throttle.StoreHealth``).

    Only the Redis client's errors are caught (the embedded mode's in-memory cache cannot fail
    this way); anything else is a bug and still raises.
    """

    def __init__(self) -> None:
        super().__init__()
        self.health = throttle.StoreHealth(logger, "login throttle")

    def get_failures(self, request, credentials: dict | None = None) -> int:
        if not self.health.available():
            return 0
        try:
            failures = super().get_failures(request, credentials)
        except redis.RedisError as error:
            self.health.failed(error)
            return 0
        self.health.answered()
        return failures

    def user_login_failed(self, sender, credentials: dict, request=None, **kwargs) -> None:
        if not self.health.available():
            return
        try:
            super().user_login_failed(sender, credentials, request, **kwargs)
        except redis.RedisError as error:
            self.health.failed(error)

    def user_logged_in(self, sender, request, user, **kwargs) -> None:
        if not self.health.available():
            return
        try:
            super().user_logged_in(sender, request, user, **kwargs)
        except redis.RedisError as error:
            self.health.failed(error)

    def reset_attempts(self, *, ip_address=None, username=None, ip_or_username=False) -> int:
        """Lifting a lockout (a password reset) while the cache is down lifts nothing: the
        new password is set all the same, and a lockout still counted runs out by itself."""
        if not self.health.available():
            return 0
        try:
            return super().reset_attempts(
                ip_address=ip_address, username=username, ip_or_username=ip_or_username
            )
        except redis.RedisError as error:
            self.health.failed(error)
            return 0


class LoginThrottleBackend(AxesStandaloneBackend):
    """django-axes' check, first in ``AUTHENTICATION_BACKENDS``: a locked-out account or address
    is refused before any password is compared.

    An authentication with no request (``Client.login`` in tests, a shell) has no client to count
    and reaches no web page, so it is left to the next backend rather than refused.
    """

    def authenticate(self, request, username=None, password=None, **kwargs):
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)


def password_reset_wait(request, email: str) -> int | None:
    """Count one reset request; the seconds to wait when the client address or the e-mail
    address is past its limit (then nothing more is counted, and no mail may be sent)."""
    address = login_client_address(request) or "unknown"
    wait = throttle.PASSWORD_RESET_BY_ADDRESS.hit(address)
    if wait is None:
        wait = throttle.PASSWORD_RESET_BY_EMAIL.hit(throttle.hashed(email))
    return wait


class PasswordResetView(auth_views.PasswordResetView):
    """Django's reset view, throttled before the account is looked up: past a limit it answers
    429 for a registered and an unknown address alike, and sends nothing."""

    def form_valid(self, form):
        wait = password_reset_wait(self.request, form.cleaned_data["email"])
        if wait is None:
            return super().form_valid(form)
        context = self.get_context_data(form=form, throttled_minutes=math.ceil(wait / 60))
        response = self.render_to_response(context, status=429)
        response["Retry-After"] = str(wait)
        return response


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    """Django's view; a new password set through the mailed link also lifts a lockout of the
    account (whoever reads the mailbox is its owner), not of any client address."""

    def form_valid(self, form):
        response = super().form_valid(form)
        AxesProxyHandler.reset_attempts(username=login_account(None, {"username": self.user.email}))
        return response

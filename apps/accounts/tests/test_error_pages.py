"""What a person and an operator see when something is not there, not allowed or broken: Costr's
own pages (also in the embedded mode `make run` starts), one log line per event, no traceback
for an expected 403, and a favicon."""

import logging
import os
import subprocess
import sys

import pytest
from django.conf import settings
from django.urls import reverse

pytestmark = pytest.mark.django_db


def test_the_embedded_mode_runs_with_debug_off_unless_asked(tmp_path):
    script = "from django.conf import settings; print(settings.DEBUG)"
    env = {k: v for k, v in os.environ.items() if k != "DEBUG"}
    env.update(DJANGO_SETTINGS_MODULE="costr.settings.local", COSTR_VAR_DIR=str(tmp_path))

    def debug(**extra):
        run = subprocess.run(
            [sys.executable, "-c", f"import django; django.setup(); {script}"],
            env={**env, **extra},
            capture_output=True,
            text=True,
            check=True,
            cwd=settings.BASE_DIR,
        )
        return run.stdout.strip()

    assert debug() == "False"
    assert debug(DEBUG="1") == "True"


def test_an_unknown_page_is_costrs_own_404_with_the_layout(client, member):
    client.force_login(member)

    response = client.get("/no-such-page/")

    assert response.status_code == 404
    page = response.content.decode()
    assert "<h1>Not found</h1>" in page
    assert 'class="site-header"' in page
    assert member.email in page  # the person's menu: the page knows who is looking


def test_favicon_is_linked_and_favicon_ico_leads_to_it(client):
    page = client.get(reverse("landing")).content.decode()
    ico = client.get("/favicon.ico")
    svg = client.get("/static/favicon.svg")

    assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in page
    assert ico.status_code == 302 and ico["Location"] == "/static/favicon.svg"
    assert svg.status_code == 200
    assert b"<svg" in b"".join(svg.streaming_content)


def _emitting_handlers(logger_name: str, record: logging.LogRecord) -> list[logging.Handler]:
    """The handlers a record logged on ``logger_name`` reaches, as logging itself walks them
    (leaving out those pytest adds to capture logs)."""
    logger = logging.getLogger(logger_name)
    found = []
    while logger is not None:
        found += [
            h
            for h in logger.handlers
            if record.levelno >= h.level
            and h.filter(record)
            and not type(h).__module__.startswith("_pytest")
        ]
        logger = logger.parent if logger.propagate else None
    return found


def test_a_request_warning_is_printed_once_with_debug_on_or_off(settings):
    record = logging.LogRecord(
        "django.request", logging.WARNING, __file__, 1, "Not Found", args=(), exc_info=None
    )
    for debug in (False, True):
        settings.DEBUG = debug
        handlers = _emitting_handlers("django.request", record)
        assert len(handlers) == 1, (debug, handlers)


def test_a_403_is_one_warning_line_without_a_traceback(client, org, member, caplog):
    client.force_login(member)

    with caplog.at_level(logging.WARNING, logger="django.request"):
        response = client.get(reverse("audit_log", args=[org.slug]))

    assert response.status_code == 403
    assert "Not allowed" in response.content.decode()
    records = [r for r in caplog.records if r.name == "django.request"]
    assert [(r.levelname, r.getMessage()) for r in records] == [
        ("WARNING", f"Forbidden (Permission denied): /app/{org.slug}/audit/")
    ]
    assert records[0].exc_info is None
    assert "Traceback" not in caplog.text


def test_a_server_error_is_still_logged_with_its_traceback(caplog):
    with caplog.at_level(logging.ERROR, logger="django.request"):
        try:
            raise ValueError("a fault")
        except ValueError:
            logging.getLogger("django.request").error("Internal Server Error: /x", exc_info=True)

    (record,) = [r for r in caplog.records if r.name == "django.request"]
    assert record.exc_info is not None and record.exc_info[0] is ValueError
    assert "Traceback" in caplog.text


def test_a_server_error_page_stands_alone_and_says_what_happened(rf):
    from django.views.defaults import server_error

    response = server_error(rf.get("/broken/"))

    assert response.status_code == 500
    page = response.content.decode()
    assert "<h1>Something went wrong</h1>" in page
    assert "/static/css/costr.css" in page

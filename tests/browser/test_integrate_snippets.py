"""The Integrate page's snippets work as printed: each one, copied off the page with a real token
put in place of YOUR_COSTR_TOKEN, is run by the client it is written for (the official Python
SDKs, the official Node SDKs, curl) against a running Costr in front of the fake provider, and
each makes one event for the customer it names.

No browser here: the page is rendered for the running server's host (so its base URLs lead
there) and read as text, which lets the test read the events back from the database.
"""

import html
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.urls import reverse

from apps.proxy.tests.conftest import costr_server, organization_with_token  # noqa: F401

# The server answers from its own threads: the data must be committed.
pytestmark = pytest.mark.django_db(transaction=True)

NODE_CLIENTS = Path(settings.BASE_DIR) / "tests" / "clients" / "node"
SNIPPETS = {
    # id on the page: (provider, how to run it)
    "snippet-openai": ("openai", "python"),
    "snippet-anthropic": ("anthropic", "python"),
    "snippet-google": ("google", "python"),
    "snippet-openai-ts": ("openai", "node"),
    "snippet-anthropic-ts": ("anthropic", "node"),
    "snippet-google-ts": ("google", "node"),
    "snippet-curl": ("openai", "shell"),
    # Costr's Python SDK (an editable dev dependency of this project), configured as printed.
    "sdk-python": ("openai", "python"),
}


def _run(kind: str, code: str) -> subprocess.CompletedProcess:
    command = {
        "python": [sys.executable, "-c", code],
        # ESM from --eval resolves packages from the working directory: the locked Node clients.
        "node": ["node", "--input-type=module", "-e", code],
        "shell": ["sh", "-c", code.replace("curl ", "curl -sS --fail-with-body ", 1)],
    }[kind]
    cwd = NODE_CLIENTS if kind == "node" else settings.BASE_DIR
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=60)


def test_every_snippet_on_the_integrate_page_runs_and_is_metered_for_its_customer(
    client,
    costr_server,  # noqa: F811
    fake_provider,
):
    from apps.accounts.tests.factories import MembershipFactory
    from apps.usage.metering import sink
    from apps.usage.models import UsageEvent

    assert (NODE_CLIENTS / "node_modules").is_dir(), "run make test once: it installs them"
    organization, created = organization_with_token(fake_provider)
    owner = MembershipFactory(organization=organization, role="owner").user
    client.force_login(owner)

    host = urlsplit(costr_server.url).netloc
    page = client.get(reverse("integrate", args=[organization.slug]), HTTP_HOST=host)

    assert page.status_code == 200
    text = page.content.decode()
    assert created.plaintext not in text and created.plaintext[:14] not in text
    for element, (provider, kind) in SNIPPETS.items():
        snippet = html.unescape(re.search(rf'<pre id="{element}">(.*?)</pre>', text, re.S)[1])
        assert (
            f"{costr_server.url}/p/{organization.slug}/{provider}" in snippet
            or f'url="{costr_server.url}",\n    org="{organization.slug}"' in snippet
        ), element
        run = _run(kind, snippet.replace("YOUR_COSTR_TOKEN", created.plaintext))
        assert run.returncode == 0, (element, run.stdout[-2000:], run.stderr[-2000:])

    assert sink.flush(timeout=10), "the usage writer did not catch up"
    events = list(
        UsageEvent.objects.for_org(organization).select_related("customer").order_by("timestamp")
    )
    assert len(events) == len(SNIPPETS)
    assert sorted(e.provider for e in events) == sorted(p for p, _ in SNIPPETS.values())
    assert {(e.customer.external_id, e.status) for e in events} == {("customer-123", 200)}
    # The curl snippet also shows a property.
    assert [e.properties for e in events if e.properties] == [{"feature": "chat"}]

"""Account deletion through the running proxy: the organization's token stops working the moment
the deletion commits, not when the cache would have expired."""

import pytest

from apps.proxy.tests.conftest import (  # noqa: F401 - fixtures, used by name
    committed_db,
    costr_server,
    http,
    make_organization,
    sdk,
)
from apps.usage import lifecycle

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}


@pytest.fixture
def long_cache(settings):
    # Only the invalidation on commit can make the proxy forget the token within this test.
    settings.COSTR_KEYCACHE_TTL_SECONDS = 3600


def test_the_proxy_refuses_a_deleted_organizations_token_at_once(
    costr_server,  # noqa: F811
    make_organization,  # noqa: F811
    http,  # noqa: F811
    long_cache,
):
    organization, created = make_organization()
    other, other_created = make_organization()
    url = f"{costr_server.url}/p/{{}}/openai/v1/chat/completions"

    def chat(slug, token):
        return http.post(url.format(slug), headers={"authorization": f"Bearer {token}"}, json=CHAT)

    assert chat(organization.slug, created.plaintext).status_code == 200

    lifecycle.organization_delete(organization=organization, actor=None)

    refused = chat(organization.slug, created.plaintext)
    assert refused.status_code == 401
    assert refused.headers["x-costr-error"]
    assert chat(other.slug, other_created.plaintext).status_code == 200

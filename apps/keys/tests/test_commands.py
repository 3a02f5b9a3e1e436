import io
import sys

import pytest
from django.core.management import CommandError, call_command

from apps.keys import keycache, services
from apps.keys.keyring import open_secret
from apps.keys.models import ProviderKey, ProxyToken
from apps.keys.tests.factories import anthropic_key, openai_key

pytestmark = pytest.mark.django_db


def _call(*args, stdin=""):
    out = io.StringIO()
    saved, sys.stdin = sys.stdin, io.StringIO(stdin)
    try:
        call_command(*args, stdout=out)
    finally:
        sys.stdin = saved
    return out.getvalue()


def test_addproviderkey_stores_the_key_from_stdin(org):
    key = anthropic_key()

    output = _call(
        "addproviderkey", org.slug, "anthropic", "--key-stdin", "--label", "cli", stdin=key + "\n"
    )

    stored = ProviderKey.objects.for_org(org).get()
    assert (stored.provider, stored.label, stored.is_default) == ("anthropic", "cli", True)
    assert open_secret(ciphertext=bytes(stored.ciphertext), context=stored.vault_context()) == key
    assert key not in output and key[-4:] in output


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["nope", "openai", "--key-stdin"], "x", "No organization"),
        (["{org}", "openai", "--key-stdin"], "", "empty"),
        (["{org}", "openai", "--key-stdin"], "AIza-not-openai", "looks like a key for Google"),
        (["{org}", "openai", "--key-stdin"], "pk-live-whatever", "does not look like a key"),
    ],
)
def test_addproviderkey_refuses_bad_input_and_stores_nothing(org, args, stdin, message):
    args = [a.format(org=org.slug) for a in args]

    with pytest.raises(CommandError, match=message):
        _call("addproviderkey", *args, stdin=stdin)

    assert not ProviderKey.objects.for_org(org).exists()


def test_createtoken_prints_the_token_alone_on_the_last_line(org):
    output = _call("createtoken", org.slug, "--scope", "read", "--scope", "ingest", "--name", "ci")

    plaintext = output.rstrip("\n").splitlines()[-1]
    token = ProxyToken.objects.for_org(org).get()
    assert token.token_hash == services.token_hash(plaintext)
    assert (token.name, sorted(token.scopes)) == ("ci", ["ingest", "read"])
    assert keycache.resolve(token.token_hash).organization_slug == org.slug


def test_createtoken_grants_the_manage_scope(org):
    output = _call("createtoken", org.slug, "--scope", "read", "--scope", "manage")

    plaintext = output.rstrip("\n").splitlines()[-1]
    token = ProxyToken.objects.for_org(org).get()
    assert sorted(token.scopes) == ["manage", "read"]
    assert keycache.resolve(services.token_hash(plaintext)).scopes == {"manage", "read"}


def test_createtoken_refuses_an_unknown_scope(org):
    with pytest.raises(CommandError, match="invalid choice"):
        _call("createtoken", org.slug, "--scope", "admin")

    assert not ProxyToken.objects.for_org(org).exists()


def test_createtoken_defaults_to_the_proxy_scope(org):
    _call("createtoken", org.slug)

    assert ProxyToken.objects.for_org(org).get().scopes == ["proxy"]


def test_revoketoken_by_prefix(org, other_org, django_capture_on_commit_callbacks):
    created = services.proxy_token_create(organization=org, name="t", scopes=["proxy"], actor=None)
    token_hash = services.token_hash(created.plaintext)
    assert keycache.resolve(token_hash) is not None

    with django_capture_on_commit_callbacks(execute=True):
        _call("revoketoken", org.slug, created.token.prefix)

    assert ProxyToken.objects.for_org(org).get().revoked_at is not None
    assert keycache.resolve(token_hash) is None


def test_revoketoken_cannot_reach_another_orgs_token(org, other_org):
    created = services.proxy_token_create(
        organization=other_org, name="t", scopes=["proxy"], actor=None
    )

    with pytest.raises(CommandError, match="No active token"):
        _call("revoketoken", org.slug, created.token.prefix)
    with pytest.raises(CommandError, match="at least"):
        _call("revoketoken", other_org.slug, "costr_")

    assert ProxyToken.objects.for_org(other_org).get().revoked_at is None


def test_keys_and_tokens_of_the_same_org_resolve_together(org):
    key = openai_key()
    services.provider_key_create(organization=org, provider="openai", key=key, actor=None)
    output = _call("createtoken", org.slug)

    resolved = keycache.resolve(services.token_hash(output.splitlines()[-1]))

    assert keycache.provider_key_plaintext(resolved, "openai") == key
    assert keycache.provider_key_plaintext(resolved, "google") is None

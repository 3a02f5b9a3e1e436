import base64
import io
import os

import pytest
from django.core.management import call_command

from apps.accounts.models import AuditEvent
from apps.keys import services, vault
from apps.keys.keyring import open_secret
from apps.keys.models import ProviderKey
from apps.keys.tests.factories import KEY_MAKERS

pytestmark = pytest.mark.django_db


def _entry(key_id):
    return f"{key_id}:{base64.b64encode(os.urandom(32)).decode()}"


def _plaintexts(orgs):
    return {
        key.pk: open_secret(ciphertext=bytes(key.ciphertext), context=key.vault_context())
        for org in orgs
        for key in ProviderKey.objects.for_org(org)
    }


def test_rotation_rewraps_everything_so_the_old_key_can_leave(settings, org, other_org):
    old, new = _entry("k1"), _entry("k2")
    settings.COSTR_ENCRYPTION_KEYS = old
    originals = {}
    for organization in (org, other_org):
        for provider, make in KEY_MAKERS.items():
            key = make()
            stored = services.provider_key_create(
                organization=organization, provider=provider, key=key, actor=None
            )
            originals[stored.pk] = key
    assert set(ProviderKey.objects.unscoped(reason="test").values_list("kek_id", flat=True)) == {
        "k1"
    }

    settings.COSTR_ENCRYPTION_KEYS = f"{new},{old}"
    output = io.StringIO()
    call_command("rotate_encryption_keys", "--batch-size", "4", stdout=output)

    rows = ProviderKey.objects.unscoped(reason="test")
    assert {vault.blob_key_id(bytes(r.ciphertext)) for r in rows} == {"k2"}
    assert set(rows.values_list("kek_id", flat=True)) == {"k2"}
    assert "6 secret(s) re-wrapped" in output.getvalue()
    settings.COSTR_ENCRYPTION_KEYS = new  # the old key has left the keyring
    assert _plaintexts([org, other_org]) == originals
    assert AuditEvent.objects.for_org(org).filter(action="encryption_keys.rotated").exists()


def test_rotation_resumes_and_a_second_run_changes_nothing(settings, org):
    old, new = _entry("k1"), _entry("k2")
    settings.COSTR_ENCRYPTION_KEYS = old
    for provider, make in KEY_MAKERS.items():
        services.provider_key_create(organization=org, provider=provider, key=make(), actor=None)
    settings.COSTR_ENCRYPTION_KEYS = f"{new},{old}"
    # A first run stopped after one batch, as if the process had been killed.
    first = ProviderKey.objects.for_org(org).order_by("pk").first()
    first.ciphertext = vault.rewrap(
        bytes(first.ciphertext),
        context=first.vault_context(),
        keyring=vault.Keyring.from_string(settings.COSTR_ENCRYPTION_KEYS),
    )
    first.kek_id = "k2"
    first.save()

    assert services.encryption_keys_rotate(batch_size=1) == 2
    snapshot = list(ProviderKey.objects.for_org(org).values_list("pk", "ciphertext"))
    assert services.encryption_keys_rotate(batch_size=1) == 0
    assert list(ProviderKey.objects.for_org(org).values_list("pk", "ciphertext")) == snapshot


def test_a_ciphertext_moved_to_another_row_does_not_decrypt(org, other_org):
    mine = services.provider_key_create(
        organization=org, provider="openai", key=KEY_MAKERS["openai"](), actor=None
    )
    theirs = services.provider_key_create(
        organization=other_org, provider="openai", key=KEY_MAKERS["openai"](), actor=None
    )

    with pytest.raises(vault.VaultError):
        open_secret(ciphertext=bytes(mine.ciphertext), context=theirs.vault_context())

"""The deployment's keyring and the two operations every encrypted row needs: seal and open."""

import functools
import hashlib
import hmac

from django.conf import settings
from django.views.decorators.debug import sensitive_variables

from apps.keys import vault


@functools.lru_cache(maxsize=4)
def _keyring_from(value: str) -> vault.Keyring:
    return vault.Keyring.from_string(value)


def get_keyring() -> vault.Keyring:
    return _keyring_from(settings.COSTR_ENCRYPTION_KEYS)


@sensitive_variables("plaintext")
def seal(instance, plaintext: str) -> None:
    """Encrypt ``plaintext`` into an unsaved or saved ``EncryptedSecret`` row (not saved here)."""
    keyring = get_keyring()
    instance.ciphertext = vault.encrypt(
        plaintext, context=instance.vault_context(), keyring=keyring
    )
    instance.kek_id = keyring.primary_id


def open_secret(*, ciphertext: bytes, context: vault.Context) -> str:
    """The plaintext, in memory only, for the moment it is used. Never cache the result."""
    return vault.decrypt(ciphertext, context=context, keyring=get_keyring()).decode()


def fingerprint_secret(plaintext: str) -> str:
    # SECRET_KEY keys the hash: stable across keyring rotation, useless to someone holding only
    # the database. Rotating SECRET_KEY only means a key pasted again is not recognised.
    key = hmac.new(settings.SECRET_KEY.encode(), b"costr.keys.fingerprint", hashlib.sha256)
    return vault.fingerprint(plaintext, key=key.digest())

"""Envelope encryption for the secrets Costr holds on behalf of organizations.

Provider API keys and Stripe keys are the most sensitive data in the database, so a database
dump alone must not reveal them, and a ciphertext must not be usable anywhere except the row
it was written for. This module is pure cryptography: it touches no Django models and needs no
settings, so it can run from management commands, workers and settings-free tests alike.

Scheme
------
Every secret gets a fresh random 256-bit data key (DEK) and 96-bit nonce, and is sealed with
AES-256-GCM under that DEK. The DEK is then wrapped by a key-encryption key (KEK) taken from a
versioned keyring. Rotating the KEK therefore only rewraps 60 bytes per row and never touches
the data ciphertext; a future KMS-backed KEK replaces ``LocalKek`` without changing the blob.

Both AES-GCM operations carry associated data built from ``Context`` (organization id, record
id, purpose), so a blob copied to another row, organization or purpose fails authentication.
The wrap additionally binds the KEK id, so a wrapped DEK lifted out of one blob and spliced
into another fails as well.

Blob layout (format version 1), all lengths in bytes::

    offset        size    field
    0             1       format version, 0x01
    1             1       L, length of the KEK id (1..16)
    2             L       KEK id, ASCII [a-z0-9_-]
    2+L           2       W, length of the wrapped DEK, unsigned big-endian
    4+L           W       wrapped DEK, opaque to this module; LocalKek writes
                          wrap nonce (12) || AES-256-GCM(KEK, DEK) (32) || tag (16), so W = 60
    4+L+W         12      data nonce
    16+L+W        n+16    AES-256-GCM(DEK, plaintext) || tag (16)

Associated data (``ctx`` is ``Context.encode()``, length-prefixed fields)::

    data: b"costr.vault.v1.data\\x00" || ctx
    wrap: b"costr.vault.v1.wrap\\x00" || ctx || len(kek id) (1) || kek id

Python cannot reliably wipe memory, so plaintext and DEKs are only ever kept in local variables,
and the functions that hold them are marked with ``sensitive_variables`` so Django's error
reports redact them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.views.decorators.debug import sensitive_variables

__all__ = [
    "Context",
    "KeyEncryptionKey",
    "Keyring",
    "KeyringError",
    "LocalKek",
    "VaultError",
    "blob_key_id",
    "decrypt",
    "encrypt",
    "fingerprint",
    "generate_key_string",
    "needs_rewrap",
    "rewrap",
]

FORMAT_VERSION = 1
KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
MAX_KEY_ID_LENGTH = 16
MIN_FINGERPRINT_KEY_SIZE = 32
KEYRING_SETTING = "COSTR_ENCRYPTION_KEYS"

_KEY_ID_PATTERN = re.compile(r"[a-z0-9_-]{1,16}")
_KEY_ID_RULE = "key id must be 1-16 characters of a-z, 0-9, '_' or '-'"
_DATA_AAD_PREFIX = b"costr.vault.v1.data\x00"
_WRAP_AAD_PREFIX = b"costr.vault.v1.wrap\x00"
_LOCAL_WRAPPED_SIZE = NONCE_SIZE + KEY_SIZE + TAG_SIZE
_MAX_WRAPPED_SIZE = 0xFFFF


class VaultError(Exception):
    """A blob cannot be opened: altered, truncated, bound to another context, or its KEK is gone.

    Messages never include plaintext or key material, so they are safe to log and to show.
    """


class KeyringError(ValueError):
    """The keyring configuration is unusable; raised at startup so a bad deploy fails loudly.

    Messages name the entry position and, when it is valid, the key id, but never the key.
    """


@dataclass(frozen=True, slots=True)
class Context:
    """Where a secret lives; a ciphertext only opens under the exact context it was sealed with.

    ``record_id`` is compared by its decimal/string form, so ``5`` and ``"5"`` are the same
    record, while ``"05"`` is a different one.
    """

    org_id: int
    record_id: str | int
    purpose: str

    def __post_init__(self) -> None:
        if isinstance(self.org_id, bool) or not isinstance(self.org_id, int):
            raise TypeError("Context.org_id must be an int")
        if isinstance(self.record_id, bool) or not isinstance(self.record_id, str | int):
            raise TypeError("Context.record_id must be a str or an int")
        if isinstance(self.record_id, str) and not self.record_id:
            raise ValueError("Context.record_id must not be empty; save the record first")
        if not isinstance(self.purpose, str) or not self.purpose:
            raise ValueError("Context.purpose must be a non-empty str")

    def encode(self) -> bytes:
        """Length-prefix every field so that no two distinct contexts share an encoding."""
        fields = (str(self.org_id), str(self.record_id), self.purpose)
        return b"".join(_length_prefixed(field.encode("utf-8")) for field in fields)


def _length_prefixed(value: bytes) -> bytes:
    return len(value).to_bytes(4, "big") + value


class KeyEncryptionKey(ABC):
    """The seam for a KMS: anything that can wrap and unwrap a DEK under a stable id.

    Stored blobs record only ``id``, so replacing ``LocalKek`` with an AWS KMS or Vault
    transit implementation leaves existing rows readable as long as the id resolves.
    Implementations must authenticate ``aad`` and raise ``VaultError`` when unwrapping fails.
    """

    @property
    @abstractmethod
    def id(self) -> str: ...

    @abstractmethod
    def wrap(self, data_key: bytes, aad: bytes) -> bytes: ...

    @abstractmethod
    def unwrap(self, wrapped: bytes, aad: bytes) -> bytes: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r})"


class LocalKek(KeyEncryptionKey):
    """A KEK held in process memory, as configured through ``COSTR_ENCRYPTION_KEYS``."""

    __slots__ = ("_aead", "_id")

    def __init__(self, key_id: str, key: bytes) -> None:
        _require_valid_key_id(key_id)
        if not isinstance(key, bytes) or len(key) != KEY_SIZE:
            raise KeyringError(f"key {key_id!r} must be exactly {KEY_SIZE} bytes")
        self._id = key_id
        # Only the AESGCM object holds the key, so no attribute or repr exposes the raw bytes.
        self._aead = AESGCM(key)

    @property
    def id(self) -> str:
        return self._id

    @sensitive_variables("data_key")
    def wrap(self, data_key: bytes, aad: bytes) -> bytes:
        wrap_nonce = secrets.token_bytes(NONCE_SIZE)
        return wrap_nonce + self._aead.encrypt(wrap_nonce, data_key, aad)

    def unwrap(self, wrapped: bytes, aad: bytes) -> bytes:
        if len(wrapped) != _LOCAL_WRAPPED_SIZE:
            raise VaultError(f"wrapped data key for key {self._id!r} has the wrong length")
        try:
            return self._aead.decrypt(wrapped[:NONCE_SIZE], wrapped[NONCE_SIZE:], aad)
        except InvalidTag:
            raise VaultError(
                f"data key does not unwrap under key {self._id!r}: "
                "the blob belongs to another record or was altered"
            ) from None


class Keyring:
    """Versioned KEKs; the first is primary and seals new secrets, the rest only open old ones.

    Keeping retired keys on the ring until ``rewrap`` has moved every row to the primary is what
    makes rotation possible without downtime.
    """

    __slots__ = ("_keks",)

    def __init__(self, keks: Iterable[KeyEncryptionKey]) -> None:
        by_id: dict[str, KeyEncryptionKey] = {}
        for kek in keks:
            _require_valid_key_id(kek.id)
            if kek.id in by_id:
                raise KeyringError(f"key id {kek.id!r} appears more than once")
            by_id[kek.id] = kek
        if not by_id:
            raise KeyringError("keyring is empty; at least one key is required")
        self._keks = by_id

    @classmethod
    def from_string(cls, value: str, *, setting_name: str = KEYRING_SETTING) -> Keyring:
        """Parse ``"k2:<base64>,k1:<base64>"``; errors point at the entry, never echo the key."""
        if not isinstance(value, str):
            raise KeyringError(f"{setting_name} must be a string")
        if not value.strip():
            raise KeyringError(
                f"{setting_name} is empty; expected 'id:base64key[,id:base64key...]', "
                "for example the output of generate_key_string('k1')"
            )
        keks = []
        for position, raw_entry in enumerate(value.split(","), start=1):
            keks.append(_parse_entry(raw_entry, position, setting_name))
        return cls(keks)

    @property
    def primary(self) -> KeyEncryptionKey:
        return next(iter(self._keks.values()))

    @property
    def primary_id(self) -> str:
        return self.primary.id

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self._keks)

    def get(self, key_id: str) -> KeyEncryptionKey:
        try:
            return self._keks[key_id]
        except KeyError:
            raise VaultError(
                f"blob is sealed under key {key_id!r}, which is not in the keyring "
                f"(known: {', '.join(self.ids)})"
            ) from None

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keks

    def __len__(self) -> int:
        return len(self._keks)

    def __repr__(self) -> str:
        return f"Keyring(ids={self.ids!r})"


def _parse_entry(raw_entry: str, position: int, setting_name: str) -> LocalKek:
    entry = raw_entry.strip()
    where = f"{setting_name} entry {position}"
    if not entry:
        raise KeyringError(f"{where} is empty (stray comma?)")
    key_id, separator, encoded_key = entry.partition(":")
    key_id, encoded_key = key_id.strip(), encoded_key.strip()
    if not separator:
        raise KeyringError(f"{where} has no ':' between the key id and the key")
    if not _KEY_ID_PATTERN.fullmatch(key_id):
        raise KeyringError(f"{where}: {_KEY_ID_RULE}")
    where = f"{where} ({key_id!r})"
    try:
        key = base64.b64decode(encoded_key, validate=True)
    except ValueError:
        raise KeyringError(f"{where}: key is not valid standard base64") from None
    if len(key) != KEY_SIZE:
        raise KeyringError(f"{where}: key decodes to {len(key)} bytes, expected {KEY_SIZE}")
    return LocalKek(key_id, key)


def _require_valid_key_id(key_id: object) -> None:
    if not isinstance(key_id, str) or not _KEY_ID_PATTERN.fullmatch(key_id):
        raise KeyringError(_KEY_ID_RULE)


def generate_key_string(key_id: str) -> str:
    """Return a fresh ``id:base64`` keyring entry, ready to prepend to the setting."""
    _require_valid_key_id(key_id)
    return f"{key_id}:{base64.b64encode(secrets.token_bytes(KEY_SIZE)).decode('ascii')}"


def _data_aad(context: Context) -> bytes:
    return _DATA_AAD_PREFIX + context.encode()


def _wrap_aad(context: Context, key_id: str) -> bytes:
    encoded_id = key_id.encode("ascii")
    return _WRAP_AAD_PREFIX + context.encode() + bytes([len(encoded_id)]) + encoded_id


@dataclass(frozen=True, slots=True)
class _Envelope:
    key_id: str
    wrapped_key: bytes
    data_nonce: bytes
    ciphertext: bytes


def _as_bytes(blob: bytes | bytearray | memoryview) -> bytes:
    # PostgreSQL hands BinaryField values back as memoryview.
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise TypeError(f"blob must be bytes, not {type(blob).__name__}")
    return bytes(blob)


def _pack(key_id: str, wrapped_key: bytes, data_nonce: bytes, ciphertext: bytes) -> bytes:
    if not 0 < len(wrapped_key) <= _MAX_WRAPPED_SIZE:
        raise VaultError(f"key {key_id!r} produced a wrapped data key of unsupported size")
    encoded_id = key_id.encode("ascii")
    return b"".join(
        (
            bytes([FORMAT_VERSION, len(encoded_id)]),
            encoded_id,
            len(wrapped_key).to_bytes(2, "big"),
            wrapped_key,
            data_nonce,
            ciphertext,
        )
    )


def _unpack(blob: bytes) -> _Envelope:
    # Every slice is bounds-checked first so that any malformed input ends in VaultError.
    if len(blob) < 2:
        raise VaultError("blob is truncated")
    if blob[0] != FORMAT_VERSION:
        raise VaultError(f"blob has unsupported format version {blob[0]}")
    id_length = blob[1]
    if not 1 <= id_length <= MAX_KEY_ID_LENGTH:
        raise VaultError("blob is malformed: bad key id length")
    id_end = 2 + id_length
    if len(blob) < id_end + 2:
        raise VaultError("blob is truncated")
    try:
        key_id = blob[2:id_end].decode("ascii")
    except UnicodeDecodeError:
        raise VaultError("blob is malformed: key id is not ASCII") from None
    if not _KEY_ID_PATTERN.fullmatch(key_id):
        raise VaultError("blob is malformed: invalid key id")
    wrapped_length = int.from_bytes(blob[id_end : id_end + 2], "big")
    if wrapped_length == 0:
        raise VaultError("blob is malformed: empty wrapped data key")
    wrapped_start = id_end + 2
    nonce_start = wrapped_start + wrapped_length
    ciphertext_start = nonce_start + NONCE_SIZE
    if len(blob) < ciphertext_start + TAG_SIZE:
        raise VaultError("blob is truncated")
    return _Envelope(
        key_id=key_id,
        wrapped_key=blob[wrapped_start:nonce_start],
        data_nonce=blob[nonce_start:ciphertext_start],
        ciphertext=blob[ciphertext_start:],
    )


@sensitive_variables("data_key")
def _unwrap_data_key(envelope: _Envelope, context: Context, keyring: Keyring) -> bytes:
    kek = keyring.get(envelope.key_id)
    data_key = kek.unwrap(envelope.wrapped_key, _wrap_aad(context, kek.id))
    if len(data_key) != KEY_SIZE:
        raise VaultError(f"key {kek.id!r} unwrapped a data key of the wrong size")
    return data_key


@sensitive_variables("plaintext", "plaintext_bytes", "data_key")
def encrypt(plaintext: str | bytes, *, context: Context, keyring: Keyring) -> bytes:
    """Seal a secret for one row; str is stored as UTF-8."""
    if isinstance(plaintext, str):
        plaintext_bytes = plaintext.encode("utf-8")
    elif isinstance(plaintext, bytes | bytearray | memoryview):
        plaintext_bytes = bytes(plaintext)
    else:
        raise TypeError(f"plaintext must be str or bytes, not {type(plaintext).__name__}")
    data_key = AESGCM.generate_key(bit_length=KEY_SIZE * 8)
    data_nonce = secrets.token_bytes(NONCE_SIZE)
    ciphertext = AESGCM(data_key).encrypt(data_nonce, plaintext_bytes, _data_aad(context))
    kek = keyring.primary
    wrapped_key = kek.wrap(data_key, _wrap_aad(context, kek.id))
    return _pack(kek.id, wrapped_key, data_nonce, ciphertext)


@sensitive_variables("plaintext", "data_key")
def decrypt(blob: bytes, *, context: Context, keyring: Keyring) -> bytes:
    """Open a blob; any tampering, wrong context or missing KEK raises ``VaultError``."""
    envelope = _unpack(_as_bytes(blob))
    data_key = _unwrap_data_key(envelope, context, keyring)
    try:
        plaintext = AESGCM(data_key).decrypt(
            envelope.data_nonce, envelope.ciphertext, _data_aad(context)
        )
    except InvalidTag:
        raise VaultError(
            "ciphertext failed authentication: the blob belongs to another record or was altered"
        ) from None
    return plaintext


@sensitive_variables("data_key")
def rewrap(blob: bytes, *, context: Context, keyring: Keyring) -> bytes:
    """Move a blob's DEK under the primary KEK so retired KEKs can leave the keyring.

    The data ciphertext is carried over untouched and is not authenticated here (that would
    mean decrypting the secret); ``decrypt`` still checks it. The wrap itself is authenticated,
    so a wrong context raises ``VaultError``.
    """
    blob_bytes = _as_bytes(blob)
    envelope = _unpack(blob_bytes)
    primary = keyring.primary
    if envelope.key_id == primary.id:
        return blob_bytes
    data_key = _unwrap_data_key(envelope, context, keyring)
    wrapped_key = primary.wrap(data_key, _wrap_aad(context, primary.id))
    return _pack(primary.id, wrapped_key, envelope.data_nonce, envelope.ciphertext)


def needs_rewrap(blob: bytes, keyring: Keyring) -> bool:
    """Tell a rotation job which rows still depend on a non-primary KEK."""
    return blob_key_id(blob) != keyring.primary_id


def blob_key_id(blob: bytes) -> str:
    """Report which KEK a blob needs, without any key; useful before retiring a KEK."""
    return _unpack(_as_bytes(blob)).key_id


@sensitive_variables("secret", "secret_bytes", "key")
def fingerprint(secret: str | bytes, *, key: bytes) -> str:
    """Keyed hash for spotting the same secret pasted twice, without storing or unsealing it.

    A plain hash of a high-value API key is an offline-guessable stand-in for the key; HMAC
    under a server-side key is not. The key must come from a source that survives KEK rotation,
    otherwise every stored fingerprint silently stops matching.
    """
    if not isinstance(key, bytes) or len(key) < MIN_FINGERPRINT_KEY_SIZE:
        raise ValueError(f"fingerprint key must be at least {MIN_FINGERPRINT_KEY_SIZE} bytes")
    secret_bytes = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    return hmac.new(key, secret_bytes, hashlib.sha256).hexdigest()

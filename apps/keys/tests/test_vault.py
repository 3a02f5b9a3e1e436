import base64
import hashlib
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from apps.keys.vault import (
    Context,
    Keyring,
    KeyringError,
    LocalKek,
    VaultError,
    blob_key_id,
    decrypt,
    encrypt,
    fingerprint,
    generate_key_string,
    needs_rewrap,
    rewrap,
)

K1 = generate_key_string("k1")
K2 = generate_key_string("k2")
RING_K1 = Keyring.from_string(K1)
RING_K2 = Keyring.from_string(K2)
RING_K2_K1 = Keyring.from_string(f"{K2},{K1}")
CONTEXT = Context(org_id=1, record_id=7, purpose="provider_key")
SECRET = "sk-test-0123456789abcdef"
REPO_ROOT = Path(__file__).resolve().parents[3]


def key_value(entry: str) -> str:
    return entry.partition(":")[2]


def sections(blob: bytes) -> dict[str, bytes]:
    """Split a blob by the layout documented in the module docstring, independently of it."""
    id_length = blob[1]
    id_end = 2 + id_length
    wrapped_length = int.from_bytes(blob[id_end : id_end + 2], "big")
    wrapped_end = id_end + 2 + wrapped_length
    return {
        "version": blob[:1],
        "key_id": blob[2:id_end],
        "header": blob[:id_end],
        "wrapped_with_length": blob[id_end:wrapped_end],
        "wrapped": blob[id_end + 2 : wrapped_end],
        "data_nonce": blob[wrapped_end : wrapped_end + 12],
        "ciphertext": blob[wrapped_end + 12 :],
        "data": blob[wrapped_end:],
    }


def assert_no_key_material(message: str, *entries: str) -> None:
    for entry in entries:
        assert key_value(entry) not in message


# Round trips


def test_round_trip_str_returns_utf8_bytes():
    secret = "sk-ant-clé-🔑"
    blob = encrypt(secret, context=CONTEXT, keyring=RING_K1)
    assert decrypt(blob, context=CONTEXT, keyring=RING_K1) == secret.encode("utf-8")


def test_round_trip_bytes_that_are_not_utf8():
    secret = bytes(range(256))
    blob = encrypt(secret, context=CONTEXT, keyring=RING_K1)
    assert decrypt(blob, context=CONTEXT, keyring=RING_K1) == secret


def test_round_trip_empty_string():
    blob = encrypt("", context=CONTEXT, keyring=RING_K1)
    assert decrypt(blob, context=CONTEXT, keyring=RING_K1) == b""


def test_round_trip_one_megabyte_secret():
    secret = os.urandom(1024 * 1024)
    blob = encrypt(secret, context=CONTEXT, keyring=RING_K1)
    assert decrypt(blob, context=CONTEXT, keyring=RING_K1) == secret


def test_decrypt_accepts_memoryview_as_returned_by_postgres_binaryfield():
    blob = encrypt(SECRET, context=CONTEXT, keyring=RING_K1)
    assert decrypt(memoryview(blob), context=CONTEXT, keyring=RING_K1) == SECRET.encode()


def test_encrypt_rejects_non_text_plaintext():
    with pytest.raises(TypeError):
        encrypt(12345, context=CONTEXT, keyring=RING_K1)


def test_blob_is_bytes_and_follows_documented_layout():
    blob = encrypt(SECRET, context=CONTEXT, keyring=RING_K1)
    parts = sections(blob)
    assert type(blob) is bytes
    assert parts["version"] == b"\x01"
    assert parts["key_id"] == b"k1"
    assert len(parts["wrapped"]) == 12 + 32 + 16
    assert len(parts["data_nonce"]) == 12
    assert len(parts["ciphertext"]) == len(SECRET) + 16
    assert SECRET.encode() not in blob


def test_encrypting_the_same_secret_twice_uses_fresh_data_key_and_nonce():
    first = sections(encrypt(SECRET, context=CONTEXT, keyring=RING_K1))
    second = sections(encrypt(SECRET, context=CONTEXT, keyring=RING_K1))
    assert first["wrapped"] != second["wrapped"]
    assert first["data_nonce"] != second["data_nonce"]
    assert first["ciphertext"] != second["ciphertext"]


# Tampering


def test_flipping_any_single_byte_fails_without_leaking():
    blob = encrypt(SECRET, context=CONTEXT, keyring=RING_K1)
    for position in range(len(blob)):
        for mask in (0x01, 0x80, 0xFF):
            tampered = bytearray(blob)
            tampered[position] ^= mask
            with pytest.raises(VaultError) as excinfo:
                decrypt(bytes(tampered), context=CONTEXT, keyring=RING_K1)
            assert SECRET not in str(excinfo.value)
            assert_no_key_material(str(excinfo.value), K1)


def test_every_truncation_fails():
    blob = encrypt(SECRET, context=CONTEXT, keyring=RING_K1)
    for length in range(len(blob)):
        with pytest.raises(VaultError):
            decrypt(blob[:length], context=CONTEXT, keyring=RING_K1)


def test_appended_byte_fails():
    blob = encrypt(SECRET, context=CONTEXT, keyring=RING_K1)
    with pytest.raises(VaultError):
        decrypt(blob + b"\x00", context=CONTEXT, keyring=RING_K1)


@pytest.mark.parametrize(
    "garbage",
    [b"", b"\x01", b"\x02" + bytes(200), b"\x01\x00" + bytes(200), b"\x01\x02k1\x00\x00"],
)
def test_malformed_blobs_raise_vault_error(garbage):
    with pytest.raises(VaultError):
        decrypt(garbage, context=CONTEXT, keyring=RING_K1)
    with pytest.raises(VaultError):
        blob_key_id(garbage)


def test_random_garbage_raises_vault_error():
    for length in range(0, 200, 7):
        with pytest.raises(VaultError):
            decrypt(os.urandom(length), context=CONTEXT, keyring=RING_K1)


def test_non_bytes_blob_is_a_type_error():
    with pytest.raises(TypeError):
        decrypt(None, context=CONTEXT, keyring=RING_K1)


# Context binding


@pytest.mark.parametrize(
    "other_context",
    [
        Context(org_id=2, record_id=7, purpose="provider_key"),
        Context(org_id=1, record_id=8, purpose="provider_key"),
        Context(org_id=1, record_id=7, purpose="stripe_key"),
    ],
    ids=["other-org", "other-record", "other-purpose"],
)
def test_decrypt_under_another_context_fails(other_context):
    blob = encrypt(SECRET, context=CONTEXT, keyring=RING_K1)
    with pytest.raises(VaultError) as excinfo:
        decrypt(blob, context=other_context, keyring=RING_K1)
    assert SECRET not in str(excinfo.value)


def test_context_encoding_does_not_let_field_boundaries_collide():
    assert Context(1, "23", "p").encode() != Context(12, "3", "p").encode()
    assert Context(1, "ab", "c").encode() != Context(1, "a", "bc").encode()
    blob = encrypt(SECRET, context=Context(1, "23", "p"), keyring=RING_K1)
    with pytest.raises(VaultError):
        decrypt(blob, context=Context(12, "3", "p"), keyring=RING_K1)


def test_int_and_str_record_ids_name_the_same_record():
    blob = encrypt(SECRET, context=Context(1, 7, "provider_key"), keyring=RING_K1)
    assert (
        decrypt(blob, context=Context(1, "7", "provider_key"), keyring=RING_K1) == SECRET.encode()
    )


@pytest.mark.parametrize(
    ("org_id", "record_id", "purpose", "error"),
    [
        (True, 7, "provider_key", TypeError),
        ("1", 7, "provider_key", TypeError),
        (1, None, "provider_key", TypeError),
        (1, "", "provider_key", ValueError),
        (1, 7, "", ValueError),
    ],
)
def test_context_rejects_invalid_fields(org_id, record_id, purpose, error):
    with pytest.raises(error):
        Context(org_id=org_id, record_id=record_id, purpose=purpose)


def test_swapping_wrapped_data_keys_between_rows_fails():
    context_a = Context(org_id=1, record_id="a", purpose="provider_key")
    context_b = Context(org_id=1, record_id="b", purpose="provider_key")
    blob_a = sections(encrypt(SECRET, context=context_a, keyring=RING_K1))
    blob_b = sections(encrypt(SECRET, context=context_b, keyring=RING_K1))
    a_key_with_b_data = blob_a["header"] + blob_a["wrapped_with_length"] + blob_b["data"]
    b_key_with_a_data = blob_b["header"] + blob_b["wrapped_with_length"] + blob_a["data"]
    for spliced in (a_key_with_b_data, b_key_with_a_data):
        for context in (context_a, context_b):
            with pytest.raises(VaultError):
                decrypt(spliced, context=context, keyring=RING_K1)


def test_wrap_is_bound_to_the_key_id_even_when_two_ids_share_material():
    material = key_value(K1)
    ring = Keyring.from_string(f"k1:{material},k9:{material}")
    blob = encrypt(SECRET, context=CONTEXT, keyring=ring)
    relabelled = blob.replace(b"\x02k1", b"\x02k9", 1)
    assert blob_key_id(relabelled) == "k9"
    with pytest.raises(VaultError):
        decrypt(relabelled, context=CONTEXT, keyring=ring)


# Keyring ids and rotation


def test_unknown_key_id_fails_and_names_the_missing_id():
    blob = encrypt(SECRET, context=CONTEXT, keyring=RING_K1)
    with pytest.raises(VaultError) as excinfo:
        decrypt(blob, context=CONTEXT, keyring=RING_K2)
    assert "'k1'" in str(excinfo.value)
    assert_no_key_material(str(excinfo.value), K1, K2)


def test_rotation_rewraps_under_primary_and_drops_the_old_key():
    blob = encrypt(SECRET, context=CONTEXT, keyring=RING_K1)
    assert blob_key_id(blob) == "k1"
    assert needs_rewrap(blob, RING_K2_K1)
    assert not needs_rewrap(blob, RING_K1)

    rewrapped = rewrap(blob, context=CONTEXT, keyring=RING_K2_K1)

    assert blob_key_id(rewrapped) == "k2"
    assert not needs_rewrap(rewrapped, RING_K2_K1)
    assert sections(rewrapped)["data"] == sections(blob)["data"]
    assert decrypt(rewrapped, context=CONTEXT, keyring=RING_K2) == SECRET.encode()
    with pytest.raises(VaultError):
        decrypt(blob, context=CONTEXT, keyring=RING_K2)


def test_rewrap_is_idempotent():
    rewrapped = rewrap(
        encrypt(SECRET, context=CONTEXT, keyring=RING_K1), context=CONTEXT, keyring=RING_K2_K1
    )
    assert rewrap(rewrapped, context=CONTEXT, keyring=RING_K2_K1) == rewrapped
    already_primary = encrypt(SECRET, context=CONTEXT, keyring=RING_K2_K1)
    assert rewrap(already_primary, context=CONTEXT, keyring=RING_K2_K1) == already_primary


def test_rewrap_under_the_wrong_context_fails():
    blob = encrypt(SECRET, context=CONTEXT, keyring=RING_K1)
    other = Context(org_id=2, record_id=7, purpose="provider_key")
    with pytest.raises(VaultError):
        rewrap(blob, context=other, keyring=RING_K2_K1)


def test_rewrap_with_unknown_key_id_fails():
    blob = encrypt(SECRET, context=CONTEXT, keyring=RING_K1)
    ring_k3_k2 = Keyring.from_string(f"{generate_key_string('k3')},{K2}")
    with pytest.raises(VaultError):
        rewrap(blob, context=CONTEXT, keyring=ring_k3_k2)


# Keyring parsing


def test_keyring_parses_multiple_keys_first_is_primary_and_whitespace_is_tolerated():
    ring = Keyring.from_string(f"  {K2} ,\n {K1}  ")
    assert ring.primary_id == "k2"
    assert ring.ids == ("k2", "k1")
    blob = encrypt(SECRET, context=CONTEXT, keyring=ring)
    assert decrypt(blob, context=CONTEXT, keyring=RING_K2) == SECRET.encode()
    old_blob = encrypt(SECRET, context=CONTEXT, keyring=RING_K1)
    assert decrypt(old_blob, context=CONTEXT, keyring=ring) == SECRET.encode()


def test_keyring_accepts_sixteen_character_ids():
    ring = Keyring.from_string(generate_key_string("a" * 16))
    assert ring.primary_id == "a" * 16


def b64_of_length(length: int) -> str:
    return base64.b64encode(secrets.token_bytes(length)).decode()


def keyring_error_cases():
    good = b64_of_length(32)
    mangled = good[:10] + "*" + good[11:]
    urlsafe = base64.urlsafe_b64encode(b"\xfb\xff" * 16).decode()
    unpadded = b64_of_length(32).rstrip("=")
    short = b64_of_length(31)
    long = b64_of_length(33)
    return [
        pytest.param(f"K1:{good}", good, id="uppercase-id"),
        pytest.param(f"k.1:{good}", good, id="dot-in-id"),
        pytest.param(f"k 1:{good}", good, id="space-in-id"),
        pytest.param(f"ké:{good}", good, id="non-ascii-id"),
        pytest.param(f":{good}", good, id="empty-id"),
        pytest.param(f"{'a' * 17}:{good}", good, id="id-too-long"),
        pytest.param(f"k1:{mangled}", mangled, id="bad-base64-char"),
        pytest.param(f"k1:{urlsafe}", urlsafe, id="urlsafe-base64"),
        pytest.param(f"k1:{unpadded}", unpadded, id="missing-padding"),
        pytest.param(f"k1:{short}", short, id="31-bytes"),
        pytest.param(f"k1:{long}", long, id="33-bytes"),
        pytest.param(f"k1:{good},k1:{b64_of_length(32)}", good, id="duplicate-id"),
        pytest.param(good, good, id="missing-colon"),
        pytest.param(f"k1:{good},", good, id="trailing-comma"),
        pytest.param("k1:", "", id="empty-key"),
        pytest.param("", "", id="empty-string"),
        pytest.param("   ", "", id="whitespace-only"),
    ]


@pytest.mark.parametrize(("setting", "key_material"), keyring_error_cases())
def test_keyring_errors_never_echo_key_material(setting, key_material):
    with pytest.raises(KeyringError) as excinfo:
        Keyring.from_string(setting)
    message = str(excinfo.value)
    assert message
    if key_material:
        assert key_material not in message
        assert key_material[:8] not in message
    assert excinfo.value.__cause__ is None
    assert excinfo.value.__suppress_context__ or excinfo.value.__context__ is None


def test_keyring_error_is_a_value_error():
    assert issubclass(KeyringError, ValueError)


def test_keyring_error_names_the_offending_entry():
    with pytest.raises(KeyringError, match=r"entry 2 \('k1'\).*31 bytes"):
        Keyring.from_string(f"{K2},k1:{b64_of_length(31)}")


def test_keyring_constructor_refuses_empty_and_duplicate_keks():
    with pytest.raises(KeyringError):
        Keyring([])
    key = secrets.token_bytes(32)
    with pytest.raises(KeyringError):
        Keyring([LocalKek("k1", key), LocalKek("k1", key)])


def test_reprs_do_not_show_key_material():
    material = base64.b64decode(key_value(K1))
    for text in (repr(RING_K1), repr(RING_K1.primary)):
        assert "k1" in text
        assert key_value(K1) not in text
        assert material.hex() not in text


def test_generate_key_string_yields_distinct_parseable_entries():
    first, second = generate_key_string("k1"), generate_key_string("k1")
    assert first != second
    assert first.startswith("k1:")
    assert len(base64.b64decode(key_value(first), validate=True)) == 32
    assert Keyring.from_string(first).ids == ("k1",)
    with pytest.raises(KeyringError):
        generate_key_string("Bad Id")


# Fingerprint


def test_fingerprint_is_stable_per_key_and_not_a_plain_hash():
    key = secrets.token_bytes(32)
    other_key = secrets.token_bytes(32)
    digest = fingerprint(SECRET, key=key)
    assert fingerprint(SECRET, key=key) == digest
    assert fingerprint(SECRET.encode(), key=key) == digest
    assert fingerprint(SECRET, key=other_key) != digest
    assert fingerprint(SECRET + "x", key=key) != digest
    assert digest != SECRET
    assert digest != hashlib.sha256(SECRET.encode()).hexdigest()
    assert len(digest) == 64
    int(digest, 16)


def test_fingerprint_refuses_short_keys():
    with pytest.raises(ValueError):
        fingerprint(SECRET, key=b"short")


# Operational guarantees


def test_functions_holding_plaintext_are_marked_sensitive():
    blob = encrypt(SECRET, context=CONTEXT, keyring=RING_K1)
    decrypt(blob, context=CONTEXT, keyring=RING_K1)
    fingerprint(SECRET, key=secrets.token_bytes(32))
    assert "plaintext" in encrypt.sensitive_variables
    assert "plaintext" in decrypt.sensitive_variables
    assert "data_key" in decrypt.sensitive_variables
    assert "secret" in fingerprint.sensitive_variables


def test_module_works_without_django_settings():
    script = (
        "from django.conf import settings\n"
        "from apps.keys import vault\n"
        "ring = vault.Keyring.from_string(vault.generate_key_string('k1'))\n"
        "ctx = vault.Context(org_id=1, record_id=1, purpose='p')\n"
        "blob = vault.encrypt('s', context=ctx, keyring=ring)\n"
        "assert vault.decrypt(blob, context=ctx, keyring=ring) == b's'\n"
        "assert not settings.configured\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr

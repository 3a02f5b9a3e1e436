"""The one place that reads the environment, so every variable has one name and one default."""

import base64
import os
import secrets
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

# Embedded mode keeps its database and generated secrets here; production needs none of it.
VAR_DIR = Path(env.str("COSTR_VAR_DIR", default=str(BASE_DIR / "var")))


def read_or_create_secret_file(name: str, generate) -> str:
    """Return the secret kept in ``var/<name>``, creating it once with mode 0600.

    Creation uses O_EXCL, so two processes starting together agree on one value.
    """
    VAR_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = VAR_DIR / name
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        value = generate()
        handle.write(value + "\n")
    return value


def generate_secret_key() -> str:
    return secrets.token_urlsafe(50)


def generate_local_encryption_key() -> str:
    """One keyring entry (``id:base64 of 32 bytes``) for the embedded mode's key file."""
    return "local:" + base64.b64encode(secrets.token_bytes(32)).decode()

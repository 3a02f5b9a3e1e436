"""Settings: keyword arguments of ``configure()`` over the environment over defaults."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger("costr_sdk")

PROVIDERS = ("openai", "anthropic", "google")
# Where a direct call goes when no fallback base URL is configured: the providers' public API
# origins (the SDKs' own defaults).
PUBLIC_ORIGINS = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    "google": "https://generativelanguage.googleapis.com",
}
DEFAULT_CONNECT_TIMEOUT = 2.0
# How long calls stay direct after Costr failed, before the background probe first asks again;
# doubled after each failed probe, up to the maximum.
DEFAULT_BREAKER_SECONDS = 30.0
MAX_BREAKER_SECONDS = 300.0

BeforeSend = Callable[[dict[str, Any]], "dict[str, Any] | None"]


def default_spool_dir() -> Path:
    """A per-user directory: ``$XDG_CACHE_HOME/costr-sdk/spool`` (``~/.cache`` without it)."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "costr-sdk" / "spool"


@dataclass(frozen=True)
class Settings:
    url: str | None = None  # Costr's origin, without a trailing slash
    org: str | None = None
    token: str | None = field(default=None, repr=False)
    fallback_keys: Mapping[str, str] = field(default_factory=dict, repr=False)
    fallback_base_urls: Mapping[str, str] = field(default_factory=dict)
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    spool_dir: Path = field(default_factory=default_spool_dir)
    before_send: BeforeSend | None = None
    breaker_seconds: float = DEFAULT_BREAKER_SECONDS

    def base_url(self, provider: str) -> str:
        """The base URL an official client is given: Costr's proxy path for ``provider``."""
        if not self.url or not self.org:
            raise ValueError(
                "Costr is not configured: call costr_sdk.configure(url=..., org=..., token=...) "
                "or set COSTR_URL, COSTR_ORG and COSTR_TOKEN."
            )
        suffix = "/v1" if provider == "openai" else ""
        return f"{self.url}/p/{self.org}/{provider}{suffix}"

    def fallback_key(self, provider: str) -> str | None:
        return self.fallback_keys.get(provider) or None

    def fallback_base_url(self, provider: str) -> str:
        return (self.fallback_base_urls.get(provider) or PUBLIC_ORIGINS[provider]).rstrip("/")


def _float(name: str, value: str | None, default: float) -> float:
    if value is None or value.strip() == "":
        return default
    try:
        number = float(value)
    except ValueError:
        logger.warning("costr_sdk: %s=%r is not a number; using %s", name, value, default)
        return default
    if number <= 0:
        logger.warning("costr_sdk: %s must be positive; using %s", name, default)
        return default
    return number


def load(
    *,
    url: str | None = None,
    org: str | None = None,
    token: str | None = None,
    fallback_keys: Mapping[str, str] | None = None,
    fallback_base_urls: Mapping[str, str] | None = None,
    connect_timeout: float | None = None,
    spool_dir: str | os.PathLike[str] | None = None,
    before_send: BeforeSend | None = None,
    breaker_seconds: float | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Settings from the arguments, each falling back to its environment variable."""
    env = os.environ if environ is None else environ
    keys = {p: env.get(f"COSTR_FALLBACK_{p.upper()}_KEY", "") for p in PROVIDERS}
    keys.update(fallback_keys or {})
    bases = {p: env.get(f"COSTR_FALLBACK_{p.upper()}_BASE_URL", "") for p in PROVIDERS}
    bases.update(fallback_base_urls or {})
    for name in set(keys) | set(bases):
        if name not in PROVIDERS:
            raise ValueError(f"Unknown provider {name!r}: use one of {', '.join(PROVIDERS)}.")
    origin = url if url is not None else env.get("COSTR_URL")
    if connect_timeout is not None and connect_timeout <= 0:
        raise ValueError("connect_timeout is a positive number of seconds.")
    return Settings(
        url=origin.rstrip("/") if origin else None,
        org=org if org is not None else env.get("COSTR_ORG") or None,
        token=token if token is not None else env.get("COSTR_TOKEN") or None,
        fallback_keys={p: k for p, k in keys.items() if k},
        fallback_base_urls={p: b for p, b in bases.items() if b},
        connect_timeout=connect_timeout
        if connect_timeout is not None
        else _float(
            "COSTR_SDK_CONNECT_TIMEOUT",
            env.get("COSTR_SDK_CONNECT_TIMEOUT"),
            DEFAULT_CONNECT_TIMEOUT,
        ),
        spool_dir=Path(spool_dir or env.get("COSTR_SDK_SPOOL_DIR") or default_spool_dir()),
        before_send=before_send,
        breaker_seconds=breaker_seconds or DEFAULT_BREAKER_SECONDS,
    )

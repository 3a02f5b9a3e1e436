"""Costr's client SDK: the official OpenAI, Anthropic and Google GenAI clients, pointed at Costr,
that go straight to the provider when Costr itself is down and report that usage to Costr later.

    import costr_sdk
    client = costr_sdk.OpenAI()  # COSTR_URL, COSTR_ORG, COSTR_TOKEN, COSTR_FALLBACK_OPENAI_KEY

See README.md for the settings and the guarantees.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

from costr_sdk._config import BeforeSend, Settings, load
from costr_sdk._context import customer
from costr_sdk._runtime import Runtime
from costr_sdk._transport import AsyncFallbackTransport, FallbackTransport, http_module

__version__ = "0.1.0"
__all__ = [
    "Anthropic",
    "AsyncAnthropic",
    "AsyncFallbackTransport",
    "AsyncOpenAI",
    "FallbackTransport",
    "OpenAI",
    "configure",
    "customer",
    "flush",
    "genai_client",
    "runtime",
]


class _Current:
    """The runtime of the current configuration; a forked child makes its own."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.value: Runtime | None = None

    def reset_after_fork(self) -> None:
        self.lock = threading.Lock()
        self.value = None


_current = _Current()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_current.reset_after_fork)


def configure(
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
) -> Settings:
    """Set Costr's settings for the clients made from now on; every argument left out is read
    from its environment variable (COSTR_URL, COSTR_ORG, COSTR_TOKEN,
    COSTR_FALLBACK_<PROVIDER>_KEY, COSTR_FALLBACK_<PROVIDER>_BASE_URL,
    COSTR_SDK_CONNECT_TIMEOUT, COSTR_SDK_SPOOL_DIR). Records spooled by earlier processes are
    sent once Costr answers."""
    settings = load(
        url=url,
        org=org,
        token=token,
        fallback_keys=fallback_keys,
        fallback_base_urls=fallback_base_urls,
        connect_timeout=connect_timeout,
        spool_dir=spool_dir,
        before_send=before_send,
        breaker_seconds=breaker_seconds,
    )
    with _current.lock:
        previous, _current.value = _current.value, Runtime(settings)
    if previous is not None:
        previous.close()
    _current.value.wake()
    return settings


def runtime() -> Runtime:
    """The current configuration's runtime (configured from the environment on first use)."""
    value = _current.value
    if value is None:
        with _current.lock:
            if _current.value is None:
                _current.value = Runtime(load())
                _current.value.wake()
            value = _current.value
    return value


def flush(timeout: float = 10.0) -> bool:
    """Send every usage record of direct calls now; True when none is left waiting."""
    value = _current.value
    return True if value is None else value.flush(timeout)


def _http_of(library: str) -> Any:
    """The HTTP package a client library is built on: current releases of the official clients
    use ``httpx2`` (and refuse an ``httpx`` client), older ones ``httpx``."""
    import importlib

    base = importlib.import_module(f"{library}._base_client")
    return http_module("httpx2" if hasattr(base, "httpx2") else None)


def _client_kwargs(provider: str, kwargs: dict[str, Any], asynchronous: bool) -> dict[str, Any]:
    current = runtime()
    settings = current.settings
    kwargs.setdefault("base_url", settings.base_url(provider))
    kwargs.setdefault("api_key", settings.token)
    if "http_client" not in kwargs:
        http = _http_of(provider)
        if asynchronous:
            transport = AsyncFallbackTransport(provider, current, http=http)
            kwargs["http_client"] = http.AsyncClient(transport=transport)
        else:
            transport = FallbackTransport(provider, current, http=http)
            kwargs["http_client"] = http.Client(transport=transport)
    return kwargs


def OpenAI(**kwargs: Any) -> Any:
    """An ``openai.OpenAI`` client through Costr, falling back to OpenAI directly."""
    import openai

    return openai.OpenAI(**_client_kwargs("openai", kwargs, False))


def AsyncOpenAI(**kwargs: Any) -> Any:
    import openai

    return openai.AsyncOpenAI(**_client_kwargs("openai", kwargs, True))


def Anthropic(**kwargs: Any) -> Any:
    """An ``anthropic.Anthropic`` client through Costr, falling back to Anthropic directly."""
    import anthropic

    return anthropic.Anthropic(**_client_kwargs("anthropic", kwargs, False))


def AsyncAnthropic(**kwargs: Any) -> Any:
    import anthropic

    return anthropic.AsyncAnthropic(**_client_kwargs("anthropic", kwargs, True))


def genai_client(**kwargs: Any) -> Any:
    """A ``google.genai.Client`` through Costr (its ``.aio`` too), falling back to the Gemini
    API directly. ``http_options`` given here are kept; base URL and transports are set."""
    from google import genai
    from google.genai import types

    current = runtime()
    settings = current.settings
    options = kwargs.pop("http_options", None)
    if options is None:
        options = types.HttpOptions()
    elif isinstance(options, dict):
        options = types.HttpOptions(**options)
    http = http_module("httpx2")
    client_args = dict(options.client_args or {})
    client_args.setdefault("transport", FallbackTransport("google", current, http=http))
    async_args = dict(options.async_client_args or {})
    async_args.setdefault("transport", AsyncFallbackTransport("google", current, http=http))
    options = options.model_copy(
        update={
            "base_url": options.base_url or settings.base_url("google"),
            "client_args": client_args,
            "async_client_args": async_args,
        }
    )
    kwargs.setdefault("api_key", settings.token)
    return genai.Client(http_options=options, **kwargs)

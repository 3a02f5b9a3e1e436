"""Provider adapters, one per upstream API, looked up by the ``{provider}`` URL segment.

Each adapter turns one provider's wire facts into the same interface (``base.Adapter``): where
the client's credential sits and how to swap in the provider key, what a request is (endpoint,
model, stream), the provider's own error shape, and a usage reader for each response.
"""

from apps.proxy.providers import anthropic, google, openai
from apps.proxy.providers.base import Adapter, RequestInfo, UsageReader
from apps.usage.metering.provider_usage import Usage

ADAPTERS: dict[str, Adapter] = {
    adapter.name: adapter for adapter in (openai.adapter, anthropic.adapter, google.adapter)
}


def get_adapter(provider: str) -> Adapter | None:
    """The adapter for a provider name (``openai``, ``anthropic``, ``google``), else None."""
    return ADAPTERS.get(provider)


__all__ = ["ADAPTERS", "Adapter", "RequestInfo", "Usage", "UsageReader", "get_adapter"]

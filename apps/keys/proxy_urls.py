"""Where an organization's SDKs point: the proxy base URL of each provider."""


def costr_origin(request) -> str:
    """This deployment's origin as the person reaches it: what the client SDKs take as ``url``."""
    return request.build_absolute_uri("/").rstrip("/")


def proxy_base_urls(request, organization) -> dict[str, str]:
    """What each SDK takes as its base URL, on the host the person is looking at (a deployment
    behind a proxy answers on the host its users reach, whatever COSTR_BASE_URL says)."""
    root = request.build_absolute_uri(f"/p/{organization.slug}")
    return {
        "openai": f"{root}/openai/v1",
        "anthropic": f"{root}/anthropic",
        "google": f"{root}/google",
    }

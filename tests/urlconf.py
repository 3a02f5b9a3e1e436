"""Every organization page, read from the URLconf itself, so suites that walk them cover pages
added later without being edited."""

import re

from django.urls import URLPattern, URLResolver, get_resolver
from django.urls.converters import get_converters

ORG_PREFIX = "app/<slug:org_slug>/"
PLACEHOLDER = re.compile(r"<(?:(?P<converter>\w+):)?(?P<name>\w+)>")


def _routes(patterns, prefix=""):
    for pattern in patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            yield from _routes(pattern.url_patterns, route)
        elif isinstance(pattern, URLPattern):
            yield route


def org_page_urls(slug: str, ids) -> list[str]:
    """Every page under /app/<org_slug>/; a route that takes an id once per id in ``ids``, so a
    page that forgot its scope shows a real row."""
    urls = []
    for route in _routes(get_resolver().url_patterns):
        if not route.startswith(ORG_PREFIX):
            continue
        takes_id = any(m["name"] != "org_slug" for m in PLACEHOLDER.finditer(route))
        for value in ids if takes_id else [None]:

            def fill(match, value=value):
                if match["name"] == "org_slug":
                    return slug
                if match["converter"] == "int":
                    return str(value)
                # A converter of ids with a shape of their own says what one looks like.
                converter = get_converters().get(match["converter"])
                example = getattr(converter, "example", None)
                return example(value) if example is not None else f"x{value}"

            urls.append("/" + PLACEHOLDER.sub(fill, route))
    assert urls, "no organization pages found: the URLconf walk is broken"
    return urls

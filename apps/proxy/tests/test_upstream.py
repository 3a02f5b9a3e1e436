"""The pooled upstream client keeps no state between requests of different organizations."""

import asyncio

from apps.proxy import upstream
from tests.asgi_server import ThreadedServer


async def _cookie_setting_app(scope, receive, send):
    if scope["type"] != "http":
        return
    cookie = dict(scope["headers"]).get(b"cookie", b"")
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"set-cookie", b"__cf_bm=tenantA; Path=/"),
                (b"content-length", b"%d" % len(cookie)),
            ],
        }
    )
    await send({"type": "http.response.body", "body": cookie})


def test_a_cookie_set_by_the_upstream_is_never_sent_on_a_later_request(settings):
    async def two_requests(url):
        client = upstream._new_client()
        try:
            first = await client.get(url)
            second = await client.get(url)
        finally:
            await client.aclose()
        return first, second

    with ThreadedServer(_cookie_setting_app) as server:
        first, second = asyncio.run(two_requests(server.url))

    assert first.headers["set-cookie"].startswith("__cf_bm=tenantA")
    assert second.content == b""

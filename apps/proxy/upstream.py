"""The proxy's upstream client: one ``http1.Client`` per process (per event loop), closed on
shutdown. See ``costr/net/http1.py`` for why it is not httpx."""

import asyncio

from costr.net.http1 import Client

_client: Client | None = None
_client_loop: asyncio.AbstractEventLoop | None = None


def get_client() -> Client:
    """The shared client. Its connections belong to one event loop: a request on another loop
    (a second server in the same process, in tests) gets a client of its own."""
    global _client, _client_loop
    loop = asyncio.get_running_loop()
    if _client is None or _client.is_closed or _client_loop is not loop:
        _client, _client_loop = Client(), loop
    return _client


async def close_client() -> None:
    global _client, _client_loop
    if _client is not None:
        await _client.aclose()
    _client, _client_loop = None, None

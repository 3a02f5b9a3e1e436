"""The WebSocket relay through a real Costr to the fake provider's WebSocket endpoints.

Clients are the official SDKs (openai's ``realtime.connect`` and ``responses.connect``,
google-genai's ``aio.live.connect``) and, for byte-level cases, the ``websockets`` client.
Expected token counts are the fake's usage objects read by their providers' definitions
(``tests/fakes/realtime.py``); prices are genai-prices' own.
"""

import asyncio
import json
import logging
import socket
import ssl
import threading
import time
from decimal import Decimal

import genai_prices
import openai
import pytest
import uvicorn
import websockets
from google import genai
from google.genai import types
from websockets.exceptions import ConnectionClosed, InvalidStatus

from apps.proxy.providers.realtime import usage_from_live, usage_from_realtime
from tests.fakes import realtime as fake_ws
from tests.fakes.tls import self_signed_certificate

pytestmark = pytest.mark.django_db(transaction=True)

REALTIME_PATH = "/openai/v1/realtime?model=gpt-realtime"


@pytest.fixture(autouse=True)
def _no_sessions_yet(fake_provider):
    """The fake's record of WebSocket sessions starts empty for each test."""
    fake_ws.clear(fake_provider.app)


def _ws(url: str) -> str:
    return url.replace("https://", "wss://").replace("http://", "ws://")


def _costr_ws(proxy, path: str = REALTIME_PATH) -> str:
    return _ws(proxy.base) + path


def _fake_ws(proxy, path: str = "/v1/realtime?model=gpt-realtime") -> str:
    return _ws(proxy.fake.url) + path


def _bearer(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **extra}


async def _until(connection, kind: str) -> list[dict]:
    """Events received until (and with) the first of type ``kind``."""
    events = []
    while True:
        event = json.loads(await connection.recv())
        events.append(event)
        if event["type"] == kind:
            return events


def _response_create(**metadata: str) -> str:
    response: dict = {"output_modalities": ["text"]}
    if metadata:
        response["metadata"] = metadata
    return json.dumps({"type": "response.create", "response": response})


def _realtime_tokens(event) -> tuple:
    return (
        event.input_tokens,
        event.cached_input_tokens,
        event.cache_write_tokens,
        event.output_tokens,
        event.reasoning_tokens,
    )


# ---------------------------------------------------------------------------------------------
# The official SDKs


def test_openai_realtime_sdk_through_costr_gets_what_it_gets_directly_and_each_response_is_metered(
    proxy,
):
    async def session(base_url: str, api_key: str, headers: dict) -> list[dict]:
        client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0)
        seen = []
        async with client.realtime.connect(model="gpt-realtime", extra_headers=headers) as conn:
            seen.append((await conn.recv()).model_dump())  # session.created
            await conn.session.update(session={"type": "realtime", "instructions": "Be brief."})
            for _ in range(2):
                await conn.response.create(response={"output_modalities": ["text"]})
                async for event in conn:
                    seen.append(event.model_dump())
                    if event.type == "response.done":
                        break
        await client.close()
        return seen

    direct = asyncio.run(session(f"{proxy.fake.url}/v1", proxy.fake.keys["openai"], {}))
    proxy.fake.clear()
    through = asyncio.run(
        session(proxy.url("openai"), proxy.token, {"X-Costr-Customer": "acme-rt"})
    )

    assert through == direct
    assert [e["type"] for e in through].count("response.done") == 2
    handshake = proxy.fake.last_request
    assert handshake.header("authorization") == f"Bearer {proxy.fake.keys['openai']}"
    assert not any(name.startswith(b"x-costr-") for name, _ in handshake.headers)
    events = proxy.events(expected=2)
    assert len(events) == 2
    usage = fake_ws.REALTIME_USAGE
    for event in events:
        assert (event.provider, event.endpoint, event.status, event.outcome) == (
            "openai",
            "realtime",
            101,
            "ok",
        )
        assert (event.model, event.requested_model, event.stream) == (
            "gpt-realtime",
            "gpt-realtime",
            True,
        )
        # input_tokens includes the cached ones; Realtime reports no cache writes or reasoning.
        assert _realtime_tokens(event) == (
            usage["input_tokens"],
            usage["input_token_details"]["cached_tokens"],
            0,
            usage["output_tokens"],
            0,
        )
        assert event.customer.external_id == "acme-rt"
    assert len({event.request_id for event in events}) == 2


def test_openai_responses_over_websocket_sdk_is_relayed_and_priced_as_text(proxy):
    async def session(base_url: str, api_key: str) -> list[dict]:
        client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0)
        seen = []
        async with client.responses.connect() as conn:
            await conn.response.create(model="gpt-4o-mini", input="Hi")
            async for event in conn:
                seen.append(event.model_dump())
                if event.type == "response.completed":
                    break
        await client.close()
        return seen

    direct = asyncio.run(session(f"{proxy.fake.url}/v1", proxy.fake.keys["openai"]))
    through = asyncio.run(session(proxy.url("openai"), proxy.token))

    assert through == direct
    assert through[-1]["response"]["output"][0]["content"][0]["text"]
    [event] = proxy.events()
    assert (event.endpoint, event.model, event.requested_model) == (
        "realtime",
        "gpt-4o-mini",
        "gpt-4o-mini",
    )
    # The fake's Responses usage: 1200 in (1000 cached), 300 out (120 reasoning).
    assert _realtime_tokens(event) == (1200, 1000, 0, 300, 120)
    price = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=1200, cache_read_tokens=1000, output_tokens=300),
        "gpt-4o-mini",
        provider_id="openai",
        genai_request_timestamp=event.timestamp,
    )
    assert event.cost_usd == price.total_price.quantize(Decimal("1e-12"))


@pytest.fixture(scope="module")
def costr_tls(costr_server, tmp_path_factory):
    """The same Costr application served over TLS: google-genai's Live client always dials wss."""
    from costr.asgi import application

    cert, key = self_signed_certificate(tmp_path_factory.mktemp("tls"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        application,
        log_config=None,
        access_log=False,
        lifespan="off",
        ssl_certfile=cert,
        ssl_keyfile=key,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    yield f"https://127.0.0.1:{sock.getsockname()[1]}", ssl.create_default_context(cafile=cert)
    server.should_exit = True
    thread.join(timeout=5)


def test_gemini_live_sdk_through_costr_is_relayed_and_each_turn_is_metered(proxy, costr_tls):
    origin, tls = costr_tls
    base = proxy.base.replace(proxy.base.split("/p/")[0], origin)
    client = genai.Client(
        api_key=proxy.token,
        http_options=types.HttpOptions(
            base_url=f"{base}/google",
            api_version="v1beta",
            headers={"X-Costr-Customer": "acme-live"},
            async_client_args={"ssl": tls},
        ),
    )

    async def session() -> list[types.LiveServerMessage]:
        messages = []
        config = {"response_modalities": ["AUDIO"]}
        async with client.aio.live.connect(model="gemini-live-2.5-flash", config=config) as live:
            for text in ("Hello", "Again"):
                await live.send_client_content(
                    turns={"role": "user", "parts": [{"text": text}]}, turn_complete=True
                )
                async for message in live.receive():
                    messages.append(message)
        return messages

    messages = asyncio.run(asyncio.wait_for(session(), 15))

    audio = [
        part.inline_data.data
        for message in messages
        if message.server_content and message.server_content.model_turn
        for part in message.server_content.model_turn.parts
    ]
    assert audio == [fake_ws.AUDIO_CHUNK] * 6
    assert [m.usage_metadata.response_token_count for m in messages if m.usage_metadata] == [
        450,
        450,
    ]
    handshake = proxy.fake.last_request
    assert handshake.header("x-goog-api-key") == proxy.fake.keys["google"]
    assert proxy.token not in repr(handshake.headers) + handshake.query_string.decode()
    events = proxy.events(expected=2)
    assert len(events) == 2
    for event in events:
        assert (event.provider, event.endpoint, event.status, event.outcome) == (
            "google",
            "realtime",
            101,
            "ok",
        )
        assert event.model == "gemini-live-2.5-flash"
        # promptTokenCount 1200 (no cache), responseTokenCount 450, no thoughts.
        assert _realtime_tokens(event) == (1200, 0, None, 450, 0)
        assert event.customer.external_id == "acme-live"


# ---------------------------------------------------------------------------------------------
# The token swap and frames, with a raw client


def test_the_browser_subprotocol_token_is_swapped_for_the_provider_key_and_answered(proxy):
    offered = ["realtime", f"openai-insecure-api-key.{proxy.token}", "openai-beta.realtime-v1"]

    async def session():
        async with websockets.connect(_costr_ws(proxy), subprotocols=offered) as conn:
            created = json.loads(await conn.recv())
            return conn.subprotocol, created, conn.response.headers

    subprotocol, created, headers = asyncio.run(session())

    assert subprotocol == "realtime"
    assert created["type"] == "session.created"
    assert headers["x-costr-request-id"].startswith("req_")
    [recorded] = fake_ws.sessions(proxy.fake.app)
    assert recorded.subprotocols == [
        "realtime",
        f"openai-insecure-api-key.{proxy.fake.keys['openai']}",
        "openai-beta.realtime-v1",
    ]
    assert recorded.handshake.header("authorization") is None
    assert proxy.token not in repr(recorded.handshake.headers)


def test_frames_go_both_ways_byte_for_byte_as_they_do_directly(proxy):
    frames = [
        "plain text",
        "",
        "ünïcödé ✓ and a \\u0000 escape and \x00 a NUL",
        b"",
        bytes(range(256)) * 40,  # binary that is no UTF-8
        json.dumps({"type": "input_audio_buffer.append", "audio": "AAAA" * 5000}),
    ]

    async def session(url: str, headers: dict) -> tuple[list, list]:
        echoed, burst = [], []
        async with websockets.connect(url, additional_headers=headers) as conn:
            for frame in frames:
                await conn.send(frame)
                echoed.append(await conn.recv())
            await conn.send("fake.burst 5 70000")
            for _ in range(5):
                burst.append(await conn.recv())
        return echoed, burst

    fake_key = proxy.fake.keys["openai"]
    direct = asyncio.run(session(_fake_ws(proxy), _bearer(fake_key, **{"x-fake-ws-echo": "1"})))
    through = asyncio.run(
        session(_costr_ws(proxy), _bearer(proxy.token, **{"x-fake-ws-echo": "1"}))
    )

    assert through == direct
    echoed, burst = through
    assert echoed == frames  # same values, and str stayed str, bytes stayed bytes
    assert [type(item) for item in echoed] == [type(item) for item in frames]
    assert burst == [(fake_ws.AUDIO_CHUNK * 35)[:70000]] * 5
    direct_session, relayed_session = fake_ws.sessions(proxy.fake.app)
    assert relayed_session.received == direct_session.received == [*frames, "fake.burst 5 70000"]


def test_gemini_key_in_the_query_is_swapped_in_place_and_never_logged(proxy, caplog):
    path = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
    setup = json.dumps({"setup": {"model": "models/gemini-live-2.5-flash"}})

    async def session():
        url = f"{_costr_ws(proxy, '/google' + path)}?alt=x&key={proxy.token}&z=1"
        async with websockets.connect(url) as conn:
            await conn.send(setup)
            return await conn.recv()

    with caplog.at_level(logging.DEBUG):
        reply = asyncio.run(session())

    assert json.loads(reply) == {"setupComplete": {}} and isinstance(reply, bytes)
    handshake = proxy.fake.last_request
    assert handshake.query_string == f"alt=x&key={proxy.fake.keys['google']}&z=1".encode()
    assert handshake.raw_path == path.encode()
    # Costr's own log lines (the test's websockets client logs its request at DEBUG itself).
    logged = "\n".join(
        record.getMessage() for record in caplog.records if record.name != "websockets.client"
    )
    assert proxy.token not in logged
    assert proxy.fake.keys["google"] not in logged
    [event] = proxy.events()
    assert (event.model, event.input_tokens) == ("gemini-live-2.5-flash", None)


# ---------------------------------------------------------------------------------------------
# Refusals before the upgrade


def _refused(url: str, headers: dict | None = None):
    async def connect():
        async with websockets.connect(url, additional_headers=headers):
            pass

    with pytest.raises(InvalidStatus) as raised:
        asyncio.run(connect())
    return raised.value.response


def _assert_openai_error(response, status: int, code: str) -> None:
    assert response.status_code == status
    assert response.headers["x-costr-error"] == code
    error = json.loads(response.body)["error"]
    assert (error["code"], error["type"]) == (code, "invalid_request_error")


def test_a_bad_token_is_refused_401_before_the_upgrade(proxy):
    response = _refused(_costr_ws(proxy), _bearer("costr_not_a_real_token"))

    _assert_openai_error(response, 401, "invalid_token")
    assert proxy.fake.requests == []


def test_a_token_of_another_organization_is_refused_401(proxy, make_organization):
    _, other = make_organization()

    response = _refused(_costr_ws(proxy), _bearer(other.plaintext))

    _assert_openai_error(response, 401, "invalid_token")
    assert proxy.fake.requests == []


def test_no_provider_key_is_refused_400_and_nothing_is_forwarded(proxy, make_organization):
    organization, created = make_organization(providers=())
    url = _costr_ws(proxy).replace(proxy.organization.slug, organization.slug)

    response = _refused(url, _bearer(created.plaintext))

    _assert_openai_error(response, 400, "no_provider_key")
    assert proxy.fake.requests == []


def test_websockets_outside_the_proxy_and_unknown_providers_are_refused_404(proxy, costr_server):
    outside = _refused(_ws(costr_server.url) + "/api/v1/anything")
    unknown = _refused(_costr_ws(proxy, "/mistral/v1/realtime"), _bearer(proxy.token))

    assert (outside.status_code, outside.headers["x-costr-error"]) == (404, "not_found")
    assert (unknown.status_code, unknown.headers["x-costr-error"]) == (404, "unknown_provider")


def test_an_unreachable_upstream_is_answered_502_and_recorded(proxy, settings):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    settings.COSTR_UPSTREAM_OPENAI = f"http://127.0.0.1:{port}"

    response = _refused(_costr_ws(proxy), _bearer(proxy.token))

    assert response.status_code == 502
    assert response.headers["x-costr-error"] == "upstream_unreachable"
    assert json.loads(response.body)["error"]["type"] == "server_error"
    [event] = proxy.events()
    assert (event.status, event.outcome, event.endpoint) == (502, "upstream_error", "realtime")


def test_the_provider_refusing_the_handshake_is_relayed_as_it_answered(proxy, settings):
    fake = proxy.fake
    direct = _refused(_fake_ws(proxy), _bearer("sk-wrong"))
    # A provider key Costr holds that the provider refuses: the organization's stored key is
    # the fake's, so the fake is told to expect another one for this test.
    fake.app.keys["openai"], original = "sk-another-key", fake.app.keys["openai"]
    try:
        through = _refused(_costr_ws(proxy), _bearer(proxy.token))
    finally:
        fake.app.keys["openai"] = original

    assert through.status_code == direct.status_code == 401
    assert json.loads(through.body)["error"]["code"] == "invalid_api_key"
    assert "x-costr-error" not in through.headers
    [event] = proxy.events()
    assert (event.status, event.outcome) == (401, "upstream_error")


# ---------------------------------------------------------------------------------------------
# After the upgrade: sizes, closes, usage


def test_a_message_over_the_limit_closes_the_session_with_1009_both_ways(proxy, settings):
    settings.COSTR_PROXY_MAX_WS_FRAME_BYTES = 4096

    async def client_sends_too_much():
        async with websockets.connect(
            _costr_ws(proxy), additional_headers=_bearer(proxy.token, **{"x-fake-ws-echo": "1"})
        ) as conn:
            await conn.send("x" * 4096)  # at the limit: relayed
            assert await conn.recv() == "x" * 4096
            await conn.send("é" * 2049)  # 4098 bytes in UTF-8
            with pytest.raises(ConnectionClosed):
                await conn.recv()
            return conn.close_code

    async def upstream_sends_too_much():
        async with websockets.connect(
            _costr_ws(proxy), additional_headers=_bearer(proxy.token)
        ) as conn:
            await conn.recv()
            await conn.send(_response_create(fake_frame_bytes="5000"))
            with pytest.raises(ConnectionClosed):
                while True:
                    await conn.recv()
            return conn.close_code

    assert asyncio.run(client_sends_too_much()) == 1009
    assert asyncio.run(upstream_sends_too_much()) == 1009
    time.sleep(0.2)
    first, second = fake_ws.sessions(proxy.fake.app)
    assert first.received == ["x" * 4096]  # the large one never went upstream
    assert first.client_close[0] == 1009
    assert second.client_close[0] == 1009


def test_close_codes_and_reasons_pass_through_both_ways(proxy):
    headers = _bearer(proxy.token, **{"x-fake-ws-echo": "1"})

    async def upstream_closes():
        async with websockets.connect(_costr_ws(proxy), additional_headers=headers) as conn:
            await conn.send("fake.close 4001 bye now")
            with pytest.raises(ConnectionClosed):
                await conn.recv()
            return conn.close_code, conn.close_reason

    async def client_closes():
        async with websockets.connect(_costr_ws(proxy), additional_headers=headers) as conn:
            await conn.send("hello")
            await conn.recv()
            await conn.close(4002, "client bye")

    assert asyncio.run(upstream_closes()) == (4001, "bye now")
    asyncio.run(client_closes())
    deadline = time.monotonic() + 5
    while fake_ws.sessions(proxy.fake.app)[-1].client_close is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert fake_ws.sessions(proxy.fake.app)[-1].client_close == (4002, "client bye")


def test_a_client_leaving_mid_response_still_gets_the_response_metered(proxy):
    async def session():
        async with websockets.connect(
            _costr_ws(proxy), additional_headers=_bearer(proxy.token)
        ) as conn:
            await conn.recv()
            await conn.send(_response_create(fake_done_delay_ms="400"))
            await _until(conn, "response.created")

    asyncio.run(session())

    [event] = proxy.events()
    usage = fake_ws.REALTIME_USAGE
    assert event.outcome == "client_disconnected"
    assert (event.input_tokens, event.output_tokens) == (
        usage["input_tokens"],
        usage["output_tokens"],
    )
    assert event.latency_ms >= 400


def test_two_responses_in_one_session_are_two_events_with_their_own_tokens(proxy):
    first = {"input_tokens": 10, "output_tokens": 20, "input_token_details": {"cached_tokens": 4}}
    second = {"input_tokens": 30, "output_tokens": 40}

    async def session():
        headers = _bearer(proxy.token, **{"X-Costr-Customer": "two", "X-Costr-Property-App": "a"})
        async with websockets.connect(_costr_ws(proxy), additional_headers=headers) as conn:
            await conn.recv()
            for usage in (first, second):
                await conn.send(_response_create(fake_usage=json.dumps(usage)))
                await _until(conn, "response.done")

    asyncio.run(session())

    events = sorted(proxy.events(expected=2), key=lambda event: event.request_id)
    assert [(e.input_tokens, e.cached_input_tokens, e.output_tokens) for e in events] == [
        (10, 4, 20),
        (30, 0, 40),
    ]
    assert [(e.customer.external_id, e.properties) for e in events] == [
        ("two", {"app": "a"}),
        ("two", {"app": "a"}),
    ]
    first_id, second_id = (event.request_id for event in events)
    assert first_id.endswith(".1") and second_id.endswith(".2")
    assert first_id[:-2] == second_id[:-2]


def test_a_session_without_a_response_is_one_event_without_tokens(proxy):
    async def session():
        async with websockets.connect(
            _costr_ws(proxy), additional_headers=_bearer(proxy.token)
        ) as conn:
            await conn.recv()
            await conn.send(json.dumps({"type": "input_audio_buffer.clear"}))

    asyncio.run(session())

    [event] = proxy.events()
    assert (event.endpoint, event.status, event.outcome, event.model) == (
        "realtime",
        101,
        "ok",
        "gpt-realtime",
    )
    assert _realtime_tokens(event) == (None, None, None, None, None)


# ---------------------------------------------------------------------------------------------
# The usage definitions, against genai-prices


def test_realtime_usage_puts_the_audio_share_where_genai_prices_prices_it():
    usage, details = usage_from_realtime(fake_ws.REALTIME_USAGE, model="gpt-realtime")

    assert (usage.input_tokens, usage.cached_input_tokens, usage.output_tokens) == (1200, 500, 450)
    assert details == {
        "input_audio_tokens": 800,
        "cache_audio_read_tokens": 300,
        "output_audio_tokens": 360,
    }
    price = genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=usage.input_tokens,
            cache_read_tokens=usage.cached_input_tokens,
            output_tokens=usage.output_tokens,
            **details,
        ),
        "gpt-realtime",
        provider_id="openai",
    )
    # gpt-realtime per million: text in $4, cached text $0.4, audio in $32, cached audio $0.4,
    # text out $16, audio out $64. Uncached text 400-200, uncached audio 800-300.
    by_hand = (
        200 * Decimal(4)
        + 200 * Decimal("0.4")
        + 500 * Decimal(32)
        + 300 * Decimal("0.4")
        + 90 * Decimal(16)
        + 360 * Decimal(64)
    ) / 1_000_000
    assert price.total_price == by_hand


def test_live_usage_reads_live_names_and_the_audio_share():
    raw = {
        **fake_ws.LIVE_USAGE,
        "cachedContentTokenCount": 100,
        "thoughtsTokenCount": 30,
        "cacheTokensDetails": [{"modality": "AUDIO", "tokenCount": 60}],
    }

    usage, details = usage_from_live(raw, model="gemini-live-2.5-flash")

    assert (usage.input_tokens, usage.cached_input_tokens) == (1200, 100)
    assert (usage.output_tokens, usage.reasoning_tokens) == (480, 30)
    assert usage.raw is raw
    assert details == {
        "input_audio_tokens": 800,
        "cache_audio_read_tokens": 60,
        "output_audio_tokens": 450,
    }

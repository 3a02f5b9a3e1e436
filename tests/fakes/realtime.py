"""The fake provider's WebSocket endpoints, close enough to the real ones for the official SDKs.

Routes (any path prefix, as for HTTP):
    openai  /v1/realtime?model=…   the Realtime API: ``session.created`` on connect,
                                   ``session.updated`` for ``session.update``, and for each
                                   ``response.create`` the response.* events ending with
                                   ``response.done`` and its usage (audio and text tokens)
    openai  /v1/responses          the Responses API over WebSocket: for each
                                   ``response.create`` the HTTP stream's events, one per frame,
                                   ending with ``response.completed``
    google  /ws/google.ai.generativelanguage.{version}.GenerativeService.BidiGenerateContent
                                   Gemini Live: ``setupComplete`` for the first (setup)
                                   message, then for each client turn a model turn of audio (or
                                   text) parts, ``generationComplete``, and ``turnComplete``
                                   with the turn's ``usageMetadata``; messages in binary frames,
                                   as Gemini sends them

Authentication is the HTTP fake's (``FakeProviderApp._check_auth``), plus the browsers' form for
OpenAI: the subprotocol ``openai-insecure-api-key.<key>``. A refused handshake gets the HTTP
fake's error answer.

Test controls:
    x-fake-ws-echo: 1       (handshake header) no protocol: every message comes back as it was
                            sent, text as text and binary as binary; the text message
                            ``fake.close <code> <reason>`` closes with that code instead, and
                            ``fake.burst <count> <bytes>`` sends that many binary messages
    x-fake-usage: <json>    (handshake header) the usage each response reports
    Realtime ``response.create`` ``response.metadata`` (strings, as the API allows):
        fake_usage          usage of this response (JSON), over x-fake-usage
        fake_done_delay_ms  wait this long before ``response.done``
        fake_close          "<code> <reason>": close the session after ``response.created``
        fake_frame_bytes    send one text message of this size after ``response.created``

``sessions(app)`` lists the sessions the fake has seen (handshake, messages received, the close
the client sent); each handshake is also recorded as a request, for ``last_request``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from tests.fakes import provider as http_fake

KEY_SUBPROTOCOL = "openai-insecure-api-key."
REALTIME_MODEL = "gpt-realtime"
# Every kind of token non-zero, so that a relay dropping the audio share or the cache shows.
REALTIME_USAGE: dict[str, Any] = {
    "total_tokens": 1650,
    "input_tokens": 1200,
    "output_tokens": 450,
    "input_token_details": {
        "text_tokens": 400,
        "audio_tokens": 800,
        "image_tokens": 0,
        "cached_tokens": 500,
        "cached_tokens_details": {"text_tokens": 200, "audio_tokens": 300, "image_tokens": 0},
    },
    "output_token_details": {"text_tokens": 90, "audio_tokens": 360},
}
LIVE_USAGE: dict[str, Any] = {
    "promptTokenCount": 1200,
    "responseTokenCount": 450,
    "totalTokenCount": 1650,
    "promptTokensDetails": [
        {"modality": "TEXT", "tokenCount": 400},
        {"modality": "AUDIO", "tokenCount": 800},
    ],
    "responseTokensDetails": [{"modality": "AUDIO", "tokenCount": 450}],
}
AUDIO_CHUNK = bytes(range(256)) * 8  # 2 KiB of "PCM", the same every time
_LIVE_PATH = re.compile(
    r"/ws/google\.ai\.generativelanguage\.(v1|v1beta|v1alpha)\.GenerativeService\.BidiGenerateContent(Constrained)?$"
)


@dataclass
class RecordedSession:
    handshake: http_fake.RecordedRequest
    subprotocols: list[str]
    received: list[str | bytes] = field(default_factory=list)
    client_close: tuple[int, str] | None = None


_sessions: weakref.WeakKeyDictionary[Any, list[RecordedSession]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def sessions(app: Any) -> list[RecordedSession]:
    """The sessions ``app`` (a ``FakeProviderApp``) has accepted or refused, oldest first."""
    with _lock:
        return list(_sessions.get(app, ()))


def clear(app: Any) -> None:
    with _lock:
        _sessions.pop(app, None)


class _Closed(Exception):
    """The client closed the session."""


class _Socket:
    """The ASGI side of one accepted session, recording what the client sent."""

    def __init__(self, receive: Any, send: Any, recorded: RecordedSession):
        self._receive, self._send, self.recorded = receive, send, recorded

    async def receive(self) -> str | bytes:
        message = await self._receive()
        if message["type"] == "websocket.disconnect":
            self.recorded.client_close = (message.get("code", 1005), message.get("reason") or "")
            raise _Closed
        data = message.get("text")
        if data is None:
            data = message.get("bytes") or b""
        self.recorded.received.append(data)
        return data

    async def send(self, data: str | bytes) -> None:
        if isinstance(data, str):
            await self._send({"type": "websocket.send", "text": data})
        else:
            await self._send({"type": "websocket.send", "bytes": data})

    async def send_json(self, document: dict[str, Any], *, binary: bool = False) -> None:
        text = json.dumps(document, separators=(",", ":"))
        await self.send(text.encode() if binary else text)

    async def close(self, code: int, reason: str = "") -> None:
        await self._send({"type": "websocket.close", "code": code, "reason": reason})


async def serve(app: Any, scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The fake's answer to a WebSocket scope (``FakeProviderApp.__call__`` hands them here)."""
    if (await receive())["type"] != "websocket.connect":
        return
    headers = dict(scope["headers"])
    query = scope.get("query_string", b"")
    subprotocols = list(scope.get("subprotocols") or ())
    recorded = RecordedSession(
        handshake=http_fake.RecordedRequest(
            method="GET",
            path=scope["path"],
            raw_path=scope.get("raw_path") or scope["path"].encode(),
            query_string=query,
            headers=list(scope["headers"]),
            body=b"",
            timestamp=time.time(),
            received_at=time.monotonic(),
        ),
        subprotocols=subprotocols,
    )
    if app.record:
        app.recorder.add(recorded.handshake)
        with _lock:
            _sessions.setdefault(app, []).append(recorded)
    path = scope["path"]
    if _LIVE_PATH.search(path):
        provider, handler = "google", _gemini_live
    elif path.endswith("/v1/realtime"):
        provider, handler = "openai", _openai_realtime
    elif path.endswith("/v1/responses"):
        provider, handler = "openai", _openai_responses
    else:
        provider = http_fake._guess_provider(path, headers, query)
        await _refuse(send, *app._error(provider, 404, f"Invalid URL (GET {path})"))
        return
    checked = dict(headers)
    offered_key = next((p for p in subprotocols if p.startswith(KEY_SUBPROTOCOL)), None)
    if provider == "openai" and offered_key is not None and b"authorization" not in checked:
        checked[b"authorization"] = b"Bearer " + offered_key[len(KEY_SUBPROTOCOL) :].encode()
    denied = app._check_auth(provider, checked, query)
    if denied is not None:
        await _refuse(send, *denied)
        return
    accepted = "realtime" if "realtime" in subprotocols else None
    await send({"type": "websocket.accept", "subprotocol": accepted, "headers": _headers(provider)})
    socket = _Socket(receive, send, recorded)
    try:
        if headers.get(b"x-fake-ws-echo", b"0") not in (b"0", b""):
            await _echo(socket)
        else:
            await handler(socket, scope, headers)
    except _Closed:
        return


async def _refuse(send: Any, status: int, headers: list, body: http_fake._Body) -> None:
    await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": b"".join(body.frames)})


def _headers(provider: str) -> list[tuple[bytes, bytes]]:
    if provider == "openai":
        return [(b"x-request-id", b"req_fakews0001"), (b"openai-processing-ms", b"7")]
    return [(b"x-goog-fake", b"1")]


async def _echo(socket: _Socket) -> None:
    while True:
        data = await socket.receive()
        if isinstance(data, str) and data.startswith("fake.close "):
            _, code, reason = (data + " ").split(" ", 2)
            await socket.close(int(code), reason.strip())
            return
        if isinstance(data, str) and data.startswith("fake.burst "):
            _, count, size = data.split(" ")
            frame = (AUDIO_CHUNK * (int(size) // len(AUDIO_CHUNK) + 1))[: int(size)]
            for _ in range(int(count)):
                await socket.send(frame)
            continue
        await socket.send(data)


def _usage_header(headers: dict[bytes, bytes], default: dict[str, Any]) -> dict[str, Any]:
    raw = headers.get(b"x-fake-usage")
    return json.loads(raw) if raw else default


# ---------------------------------------------------------------------------------------------
# OpenAI Realtime


class _Events:
    """Realtime server events with the ids the API gives them (event_…), numbered per session."""

    def __init__(self, socket: _Socket):
        self.socket = socket
        self.count = 0

    async def send(self, kind: str, **payload: Any) -> None:
        self.count += 1
        await self.socket.send_json(
            {"type": kind, "event_id": f"event_fake{self.count:06d}", **payload}
        )


async def _openai_realtime(socket: _Socket, scope: dict[str, Any], headers: dict) -> None:
    query = scope.get("query_string", b"").decode("latin-1")
    model = parse_qs(query).get("model", [REALTIME_MODEL])[0]
    usage = _usage_header(headers, REALTIME_USAGE)
    session = {
        "type": "realtime",
        "object": "realtime.session",
        "id": "sess_fake0001",
        "model": model,
        "output_modalities": ["audio"],
        "instructions": "",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "prompt": None,
        "expires_at": http_fake.CREATED + 3600,
        "audio": {
            "input": {"format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": None},
            "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy"},
        },
        "include": None,
    }
    events = _Events(socket)
    await events.send("session.created", session=session)
    responses = 0
    while True:
        data = await socket.receive()
        if not isinstance(data, str):
            continue
        event = json.loads(data)
        kind = event.get("type")
        if kind == "session.update":
            update = event.get("session") or {}
            session.update({k: v for k, v in update.items() if k != "type"})
            await events.send("session.updated", session=session)
        elif kind == "response.create":
            responses += 1
            options = event.get("response") or {}
            await _realtime_response(events, session, options, usage, responses)


async def _realtime_response(
    events: _Events, session: dict, options: dict, usage: dict, number: int
) -> None:
    metadata = options.get("metadata") or {}
    modalities = options.get("output_modalities") or session["output_modalities"]
    audio = "audio" in modalities
    response_id = f"resp_fake{number:06d}"
    item_id = f"item_fake{number:06d}"
    response = {
        "object": "realtime.response",
        "id": response_id,
        "status": "in_progress",
        "status_details": None,
        "output": [],
        "conversation_id": "conv_fake0001",
        "output_modalities": modalities,
        "max_output_tokens": "inf",
        "audio": {"output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy"}},
        "usage": None,
        "metadata": metadata or None,
    }
    await events.send("response.created", response=response)
    if "fake_frame_bytes" in metadata:
        size = int(metadata["fake_frame_bytes"])
        await events.send("response.output_text.delta", delta="x" * size)
    if "fake_close" in metadata:
        code, _, reason = metadata["fake_close"].partition(" ")
        await events.socket.close(int(code), reason)
        raise _Closed
    text = http_fake.fake_text(3)
    item = {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "status": "in_progress",
        "role": "assistant",
        "content": [],
    }
    await events.send(
        "response.output_item.added", response_id=response_id, output_index=0, item=item
    )
    where = {"response_id": response_id, "item_id": item_id, "output_index": 0, "content_index": 0}
    if audio:
        for piece in http_fake.text_pieces(3):
            await events.send(
                "response.output_audio.delta", **where, delta=base64.b64encode(AUDIO_CHUNK).decode()
            )
            await events.send("response.output_audio_transcript.delta", **where, delta=piece)
        await events.send("response.output_audio.done", **where)
        await events.send("response.output_audio_transcript.done", **where, transcript=text)
        part = {"type": "output_audio", "transcript": text}
    else:
        for piece in http_fake.text_pieces(3):
            await events.send("response.output_text.delta", **where, delta=piece)
        await events.send("response.output_text.done", **where, text=text)
        part = {"type": "output_text", "text": text}
    done_item = {**item, "status": "completed", "content": [part]}
    await events.send(
        "response.output_item.done", response_id=response_id, output_index=0, item=done_item
    )
    delay = int(metadata.get("fake_done_delay_ms", "0"))
    if delay:
        await asyncio.sleep(delay / 1000)
    this_usage = json.loads(metadata["fake_usage"]) if "fake_usage" in metadata else usage
    final = {**response, "status": "completed", "output": [done_item], "usage": this_usage}
    await events.send("response.done", response=final)


# ---------------------------------------------------------------------------------------------
# The Responses API over WebSocket


async def _openai_responses(socket: _Socket, scope: dict[str, Any], headers: dict) -> None:
    usage = headers.get(b"x-fake-usage")
    while True:
        data = await socket.receive()
        if not isinstance(data, str):
            continue
        event = json.loads(data)
        if event.get("type") != "response.create":
            continue
        model = event.get("model") or "gpt-4o-mini"
        body = http_fake._openai_responses(model, True, 3, usage)
        for frame in body.frames:
            for line in frame.split(b"\n"):
                if line.startswith(b"data: "):
                    await socket.send(line[len(b"data: ") :].decode())


# ---------------------------------------------------------------------------------------------
# Gemini Live


async def _gemini_live(socket: _Socket, scope: dict[str, Any], headers: dict) -> None:
    usage = _usage_header(headers, LIVE_USAGE)
    setup = _field(json.loads(await socket.receive()), "setup") or {}
    modalities = _field(_field(setup, "generationConfig") or {}, "responseModalities") or ["AUDIO"]
    await socket.send_json({"setupComplete": {}}, binary=True)
    while True:
        message = json.loads(await socket.receive())
        content = _field(message, "clientContent") or {}
        realtime = _field(message, "realtimeInput") or {}
        if (
            _field(content, "turnComplete")
            or "text" in realtime
            or _field(realtime, "audioStreamEnd")
        ):
            await _live_turn(socket, modalities, usage)


def _field(message: dict[str, Any], name: str) -> Any:
    """A field under its JSON name or its proto name (the API takes both; the SDK sends the
    second for some messages: ``client_content``, ``turn_complete``)."""
    if name in message:
        return message[name]
    return message.get(re.sub(r"[A-Z]", lambda m: "_" + m.group(0).lower(), name))


async def _live_turn(socket: _Socket, modalities: list[str], usage: dict[str, Any]) -> None:
    for piece in http_fake.text_pieces(3):
        if "AUDIO" in [m.upper() for m in modalities]:
            part = {
                "inlineData": {
                    "mimeType": "audio/pcm;rate=24000",
                    "data": base64.b64encode(AUDIO_CHUNK).decode(),
                }
            }
        else:
            part = {"text": piece}
        await socket.send_json({"serverContent": {"modelTurn": {"parts": [part]}}}, binary=True)
    await socket.send_json({"serverContent": {"generationComplete": True}}, binary=True)
    await socket.send_json(
        {"serverContent": {"turnComplete": True}, "usageMetadata": usage}, binary=True
    )

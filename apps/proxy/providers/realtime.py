"""Usage of WebSocket sessions: OpenAI Realtime, the Responses API over WebSocket, Gemini Live.

The relay (``apps/proxy/websocket.py``) hands a meter each frame after it has gone on to its
peer, so reading never delays a frame. A meter reports every finished model response to the
callback it was given (one usage event each); ``finish`` gives the response still under way
when the session ended, if any. A meter never raises into the relay on the frames' account:
an unreadable frame is skipped.

Where usage comes from:
- OpenAI Realtime (``/v1/realtime``): ``response.done`` carries ``response.usage``:
  ``input_tokens`` (cached included), ``output_tokens``, ``input_token_details`` {cached_tokens,
  text_tokens, audio_tokens, cached_tokens_details {text_tokens, audio_tokens}} and
  ``output_token_details`` {text_tokens, audio_tokens}. The model is the session's
  (``session.created``/``session.updated``: ``session.model``), else the URL's ``?model=``.
  A response begins with ``response.created``.
- The Responses API over WebSocket (``/v1/responses``): the HTTP stream's events, one frame
  each; usage in the response object of ``response.completed``, ``.incomplete`` or ``.failed``
  (``providers.openai.usage_from_openai_body``); the model requested in the client's
  ``response.create``.
- Gemini Live (``/ws/…BidiGenerateContent``): ``usageMetadata`` on a server message, in Live's
  naming (``responseTokenCount`` where REST says ``candidatesTokenCount``; per-modality
  ``promptTokensDetails``, ``cacheTokensDetails``, ``responseTokensDetails``). It reports one
  model turn: its prompt is the whole context the model read for that turn, so turns are never
  summed into each other, and within a turn a later ``usageMetadata`` replaces an earlier one
  (running totals, as on the REST stream). A turn ends with ``serverContent.turnComplete``; its
  event is made once the turn is complete and its usage seen, whichever comes last. The model
  is the client's first message (``setup.model``, ``models/`` dropped).

The audio share goes in ``usage_details`` under genai-prices' names: ``input_audio_tokens`` (of
the input, cached audio included), ``cache_audio_read_tokens``, ``output_audio_tokens``; text is
the rest, and genai-prices prices the two apart.
"""

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from apps.proxy.providers.google import usage_from_gemini_usage
from apps.proxy.providers.openai import usage_from_openai_body
from apps.usage.metering.provider_usage import Usage, count, text_or_none

# An OpenAI event names its type first (GA), or right after its event_id (beta): read from the
# head of the frame, so the audio deltas that make most of a session are never parsed.
_HEAD_TYPE = re.compile(r'\s*\{\s*(?:"event_id"\s*:\s*"[^"\\]*"\s*,\s*)?"type"\s*:\s*"([^"\\]*)"')
_RESPONSES_ENDS = frozenset({"response.completed", "response.incomplete", "response.failed"})


@dataclass(slots=True)
class FinishedResponse:
    """One model response of a session, as its usage event records it."""

    usage: Usage | None
    details: dict[str, int] | None  # the audio share, USAGE_DETAIL_KEYS
    started: float  # time.perf_counter() when its first frame went by
    complete: bool  # False: the session ended before the provider reported its end


Report = Callable[[FinishedResponse], None]


def _loads(data: str | bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def _put(details: dict[str, int], key: str, value: int | None) -> None:
    if value is not None:
        details[key] = value


class SessionMeter:
    """Watches one session's frames (a copy; never changes them) for its model responses."""

    def __init__(self, report: Report, requested_model: str | None):
        self._report = report
        self.requested_model = requested_model
        self.model: str | None = None
        self.responses = 0  # responses reported so far
        self._started: float | None = None  # the response under way began then

    @property
    def in_progress(self) -> bool:
        """Whether a response has begun that the provider has not finished yet."""
        return self._started is not None

    def client_frame(self, data: str | bytes) -> None:
        """A frame the client sent (after it went upstream)."""

    def server_frame(self, data: str | bytes) -> None:
        """A frame the provider sent (after it went to the client)."""

    def finish(self) -> FinishedResponse | None:
        """The response under way when the session ended, with what was seen of it."""
        if self._started is None:
            return None
        started, self._started = self._started, None
        return FinishedResponse(None, None, started, complete=False)

    def _begin(self) -> None:
        if self._started is None:
            self._started = time.perf_counter()

    def _done(self, usage: Usage | None, details: dict[str, int] | None) -> None:
        started = self._started if self._started is not None else time.perf_counter()
        self._started = None
        self.responses += 1
        self._report(FinishedResponse(usage, details, started, complete=True))


class OpenAIRealtimeMeter(SessionMeter):
    def server_frame(self, data: str | bytes) -> None:
        if not isinstance(data, str):
            return
        kind, document = _event_type(data)
        if kind == "response.created":
            self._begin()
        elif kind == "response.done":
            response = _member(document, data, "response")
            raw = response.get("usage") if isinstance(response, dict) else None
            self._done(*usage_from_realtime(raw, model=self.model or self.requested_model))
        elif kind in ("session.created", "session.updated"):
            session = _member(document, data, "session")
            if isinstance(session, dict):
                self.model = text_or_none(session.get("model")) or self.model


class OpenAIResponsesMeter(SessionMeter):
    def client_frame(self, data: str | bytes) -> None:
        if not isinstance(data, str):
            return
        kind, document = _event_type(data)
        if kind == "response.create":
            document = document if document is not None else _loads(data)
            if isinstance(document, dict):
                model = text_or_none(document.get("model"))
                if model is None and isinstance(document.get("response"), dict):
                    model = text_or_none(document["response"].get("model"))
                self.requested_model = model or self.requested_model

    def server_frame(self, data: str | bytes) -> None:
        if not isinstance(data, str):
            return
        kind, document = _event_type(data)
        if kind == "response.created":
            self._begin()
        elif kind in _RESPONSES_ENDS:
            usage = usage_from_openai_body(_member(document, data, "response"))
            if usage is not None and usage.model is None:
                usage.model = self.requested_model
            self._done(usage, None)


class GeminiLiveMeter(SessionMeter):
    """Gemini sends its messages as JSON in binary frames (text frames are read alike)."""

    def __init__(self, report: Report, requested_model: str | None):
        super().__init__(report, requested_model)
        self._setup_seen = False
        self._usage: dict[str, Any] | None = None  # the turn's latest usageMetadata
        self._turn_complete = False

    def client_frame(self, data: str | bytes) -> None:
        if self._setup_seen:
            return
        self._setup_seen = True  # the setup message is the first one a client sends
        document = _loads(data)
        setup = document.get("setup") if isinstance(document, dict) else None
        model = text_or_none(setup.get("model")) if isinstance(setup, dict) else None
        if model:
            self.requested_model = model.removeprefix("models/")

    def server_frame(self, data: str | bytes) -> None:
        usage_marker, content_marker, complete_marker = (
            _GEMINI_MARKERS_BYTES if isinstance(data, bytes) else _GEMINI_MARKERS_TEXT
        )
        has_usage, has_content = usage_marker in data, content_marker in data
        if not has_usage and not has_content:
            return
        if has_content and not self.in_progress:
            if self._turn_complete:
                # A turn that ended without usage: the next one has begun.
                self._turn_complete = False
            self._begin()
        if not has_usage and complete_marker not in data:
            return
        document = _loads(data)
        if not isinstance(document, dict):
            return
        usage = document.get("usageMetadata")
        if isinstance(usage, dict):
            self._usage = usage
            if not self.in_progress:
                self._begin()
        content = document.get("serverContent")
        if isinstance(content, dict) and content.get("turnComplete") is True:
            self._turn_complete = True
        if self._turn_complete and self._usage is not None:
            self._end_turn()

    def finish(self) -> FinishedResponse | None:
        if self._usage is not None:
            # Usage seen, its turn's end not: it is what the provider reported.
            usage, details = usage_from_live(self._usage, model=self.requested_model)
            started = self._started if self._started is not None else time.perf_counter()
            self._usage, self._started = None, None
            return FinishedResponse(usage, details, started, complete=False)
        return super().finish()

    def _end_turn(self) -> None:
        raw, self._usage, self._turn_complete = self._usage, None, False
        self._done(*usage_from_live(raw, model=self.requested_model))


_GEMINI_MARKERS_TEXT = ('"usageMetadata"', '"serverContent"', '"turnComplete"')
_GEMINI_MARKERS_BYTES = tuple(marker.encode() for marker in _GEMINI_MARKERS_TEXT)


def _event_type(data: str) -> tuple[str | None, Any]:
    """An OpenAI event's type, and its parsed document when finding the type took parsing."""
    match = _HEAD_TYPE.match(data)
    if match is not None:
        return match.group(1), None
    document = _loads(data)
    kind = document.get("type") if isinstance(document, dict) else None
    return text_or_none(kind), document


def _member(document: Any, data: str, name: str) -> Any:
    """Member ``name`` of an event's document: ``document`` when ``_event_type`` parsed it
    already, else ``data`` parsed now; None when it is not an object."""
    if document is None:
        document = _loads(data)
    return document.get(name) if isinstance(document, dict) else None


def usage_from_realtime(raw: Any, *, model: str | None) -> tuple[Usage | None, dict[str, int]]:
    """An OpenAI Realtime ``response.usage``, normalised, and its audio share."""
    if not isinstance(raw, dict):
        return (Usage(model=model) if model else None), {}
    input_tokens, output_tokens = count(raw, "input_tokens"), count(raw, "output_tokens")
    input_details, output_details = raw.get("input_token_details"), raw.get("output_token_details")
    cached_details = (
        input_details.get("cached_tokens_details") if isinstance(input_details, dict) else None
    )
    has_input, has_output = input_tokens is not None, output_tokens is not None
    usage = Usage(
        input_tokens=input_tokens,
        cached_input_tokens=(count(input_details, "cached_tokens") or 0) if has_input else None,
        cache_write_tokens=0 if has_input else None,
        output_tokens=output_tokens,
        reasoning_tokens=0 if has_output else None,
        model=model,
        raw=raw,
    )
    details: dict[str, int] = {}
    _put(details, "input_audio_tokens", count(input_details, "audio_tokens"))
    _put(details, "cache_audio_read_tokens", count(cached_details, "audio_tokens"))
    _put(details, "output_audio_tokens", count(output_details, "audio_tokens"))
    return usage, details


def usage_from_live(raw: dict[str, Any], *, model: str | None) -> tuple[Usage | None, dict]:
    """A Gemini Live ``usageMetadata``, normalised as on REST, and its audio share."""
    if "candidatesTokenCount" not in raw and "responseTokenCount" in raw:
        usage = usage_from_gemini_usage(
            {**raw, "candidatesTokenCount": raw["responseTokenCount"]}, model=model
        )
    else:
        usage = usage_from_gemini_usage(raw, model=model)
    if usage is not None:
        usage.raw = raw
    details: dict[str, int] = {}
    _put(details, "input_audio_tokens", _modality(raw.get("promptTokensDetails"), "AUDIO"))
    _put(details, "cache_audio_read_tokens", _modality(raw.get("cacheTokensDetails"), "AUDIO"))
    response_details = raw.get("responseTokensDetails", raw.get("candidatesTokensDetails"))
    _put(details, "output_audio_tokens", _modality(response_details, "AUDIO"))
    return usage, details


def _modality(entries: Any, modality: str) -> int | None:
    """The token count a per-modality list gives ``modality`` (None: no such list)."""
    if not isinstance(entries, list):
        return None
    total = 0
    for entry in entries:
        if isinstance(entry, dict) and entry.get("modality") == modality:
            total += count(entry, "tokenCount") or 0
    return total


def meter_for(provider: str, rest: str, requested_model: str | None, report: Report):
    """The meter for a session at ``rest`` (the path after ``/p/<org>/<provider>/``)."""
    path = rest.split("?", 1)[0].rstrip("/")
    if provider == "openai" and path.endswith("/responses"):
        return OpenAIResponsesMeter(report, requested_model)
    if provider == "openai":
        return OpenAIRealtimeMeter(report, requested_model)
    if provider == "google":
        return GeminiLiveMeter(report, requested_model)
    return SessionMeter(report, requested_model)
